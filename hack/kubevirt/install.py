"""Installs the KubeVirt built here into the kind cluster the way users install a release.

    python3 hack/kubevirt/install.py [up|probe|manifests|demo|down]

`up`: the kind cluster (hack/kind/cluster.py, KubeVirt's images preloaded in the node image), then
kubevirt-operator.yaml rendered by KubeVirt's own tools/manifest-templator from the module's release
templates (Namespace, KubeVirt CRD, RBAC, virt-operator Deployment), then a KubeVirt CR, then waits until the
CR is Available. `probe` boots the e2e guest under QEMU with /dev/kvm and the chosen CPU model: hardware
virtualization when it boots, software emulation otherwise (the CR's useEmulation); the choice is printed
and kept in ~/.cache/virtfleet/kubevirt/acceleration.json. A component that never becomes ready is named,
with its pods' last log lines.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KUBEVIRT_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(KUBEVIRT_DIR.parent / "kind"))
sys.path.insert(0, str(KUBEVIRT_DIR))

import cluster  # noqa: E402
import kubevirt_build  # noqa: E402
from common import CACHE, StepFailedError, command_line, digest, env, log, output, run  # noqa: E402

NAMESPACE = "kubevirt"
CPU_MODEL = "qemu64"  # a named model: -cpu host aborts on this machine's nested KVM (MSR 0x10a)
STATE = CACHE / "kubevirt"
LOG = CACHE / "logs" / "kubevirt-install.log"
GUEST_BANNER = b"virtfleet-guest uptime="
PROBE_SECONDS = 90


def manifests(tag: str) -> Path:
    """kubevirt-operator.yaml for our images, by the two passes of KubeVirt's hack/build-manifests.sh."""
    kv = kubevirt_build.module_dir()
    templator = kubevirt_build.binaries() / "manifest-templator"
    out = STATE / f"kubevirt-operator-{tag}.yaml"
    if out.exists():
        return out
    STATE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        first = Path(tmp) / "operator.yaml.in"
        with first.open("w") as f:
            subprocess.run(
                [
                    str(templator),
                    "--process-files",
                    f"--generated-manifests-dir={kv}/manifests/generated/",
                    f"--input-file={kv}/manifests/release/kubevirt-operator.yaml.in",
                ],
                stdout=f,
                check=True,
            )
        rendered = output(
            [
                str(templator),
                "--process-vars",
                f"--namespace={NAMESPACE}",
                f"--container-prefix={kubevirt_build.REGISTRY}",
                "--image-prefix=",
                f"--container-tag={tag}",
                "--image-pull-policy=IfNotPresent",
                "--verbosity=2",
                "--feature-gates=",
                f"--kubevirt-logo-path={kv}/assets/kubevirt_logo.png",
                f"--input-file={first}",
            ]
        )
    out.write_text(rendered.rstrip("\n") + "\n")
    log("kubevirt", f"rendered {out}")
    return out


def probe() -> str:
    """'kvm' if the guest boots with /dev/kvm and CPU model qemu64, else 'emulation' (with the reason)."""
    images = kubevirt_build.images()
    launcher = next(i for i in images if "/virt-launcher:" in i)
    guest = kubevirt_build.guest_image()
    kernel = os.uname().release
    key = digest([], launcher, guest, kernel, CPU_MODEL)
    state = STATE / "acceleration.json"
    if state.exists():
        cached = json.loads(state.read_text())
        if cached.get("key") == key:
            log("kubevirt", f"acceleration: {cached['mode']} ({cached['why']})")
            return str(cached["mode"])
    with tempfile.TemporaryDirectory(prefix="virtfleet-probe-") as tmp:
        container = output(["docker", "create", guest, "/none"]).strip()
        try:
            run(
                "kubevirt",
                "extract guest disk",
                ["docker", "cp", f"{container}:/disk/guest.img", tmp],
                logfile=LOG,
            )
        finally:
            subprocess.run(["docker", "rm", container], capture_output=True, check=False)
        tcg_ok, tcg_seconds, tcg_tail = _boot(launcher, Path(tmp), "tcg")
        if not tcg_ok:
            raise StepFailedError(
                f"the e2e guest ({guest}) did not boot under QEMU software emulation within {PROBE_SECONDS}s; "
                f"its serial console ended with:\n{tcg_tail}"
            )
        if not Path("/dev/kvm").exists():
            mode, why = "emulation", "no /dev/kvm on this machine"
        else:
            kvm_ok, kvm_seconds, kvm_tail = _boot(launcher, Path(tmp), "kvm")
            if kvm_ok:
                mode, why = "kvm", f"the guest booted with KVM and -cpu {CPU_MODEL} in {kvm_seconds:.0f}s"
            else:
                lines = kvm_tail.strip().splitlines()
                errors = [line for line in lines if "error" in line.lower() or "failure" in line.lower()]
                last = (errors or lines)[-1:] or ["(nothing)"]
                mode, why = (
                    "emulation",
                    f"/dev/kvm opens but the guest did not boot with KVM and -cpu {CPU_MODEL} within "
                    f"{PROBE_SECONDS}s (QEMU said: {last[0]!r}); it boots under emulation in "
                    f"{tcg_seconds:.0f}s",
                )
    STATE.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"key": key, "mode": mode, "why": why}))
    log("kubevirt", f"acceleration: {mode} ({why})")
    return mode


def _boot(launcher: str, disk_dir: Path, accel: str) -> tuple[bool, float, str]:
    """Boot the guest disk with the launcher image's QEMU; (booted, seconds, console output)."""
    # Named, so it can be removed: killing `docker run` leaves its container (and the guest) running.
    name = f"virtfleet-probe-{accel}-{os.getpid()}"
    argv = [
        "docker",
        "run",
        "--rm",
        "-i",
        "--name",
        name,
        "-v",
        f"{disk_dir}:/probe",
        "--entrypoint",
        "qemu-system-x86_64",
    ]
    if accel == "kvm":
        argv[3:3] = ["--device", "/dev/kvm"]
    argv += [
        launcher,
        *("-machine", f"q35,accel={accel}", "-cpu", CPU_MODEL, "-m", "256", "-smp", "1"),
        *("-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio", "-net", "none"),
        *("-drive", "file=/probe/guest.img,format=raw,if=virtio,snapshot=on"),
    ]
    log("kubevirt", f"probe: booting the guest with accel={accel}")
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env())
    seen = b""
    booted = False
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() - started < PROBE_SECONDS and proc.poll() is None:
        chunk = proc.stdout.read() or b""
        seen += chunk
        if GUEST_BANNER in seen:
            booted = True
            break
        time.sleep(0.5)
    seconds = time.monotonic() - started
    subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False, env=env())
    proc.kill()
    proc.wait()
    with LOG.open("ab") as f:
        f.write(f"\n--- probe accel={accel} booted={booted} after {seconds:.1f}s\n".encode() + seen[-4000:])
    return booted, seconds, seen[-1500:].decode(errors="replace")


def custom_resource(mode: str) -> str:
    configuration: dict[str, object] = {
        "imagePullPolicy": "IfNotPresent",
        "developerConfiguration": {"useEmulation": mode == "emulation"},
    }
    # A non-empty map replaces KubeVirt's default obsolete-model list, which names qemu64 and kvm64: a
    # node would then neither advertise qemu64 (the model KVM mode asks for) nor kvm64 as a migration
    # target model (this nested KVM's host model), and no VMI or live migration would ever schedule.
    configuration["obsoleteCPUModels"] = {"486": True}
    if mode == "kvm":
        configuration["cpuModel"] = CPU_MODEL  # the named model the probe booted (-cpu host aborts here)
    # Under emulation KubeVirt's default (host-model) stays: the node labeller judges named models by what
    # KVM offers even then, and this nested KVM marks qemu64 unusable, so a qemu64 VMI would never schedule.
    config = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "KubeVirt",
        "metadata": {"name": "kubevirt", "namespace": NAMESPACE},
        "spec": {
            "imagePullPolicy": "IfNotPresent",
            "infra": {"replicas": 1},
            # CPU and memory hot-plug reach a running VM by live migration only when this lists LiveMigrate.
            "workloadUpdateStrategy": {"workloadUpdateMethods": ["LiveMigrate"]},
            "configuration": configuration,
        },
    }
    return json.dumps(config)


def _kubectl(bin_dir: Path, *args: str) -> str:
    return output([str(bin_dir / "kubectl"), f"--kubeconfig={cluster.KUBECONFIG}", *args], check=False)


def diagnose(bin_dir: Path) -> str:
    """Which KubeVirt component is not ready, with its pods' state and last log lines."""
    pods = json.loads(_kubectl(bin_dir, "-n", NAMESPACE, "get", "pods", "-o", "json") or '{"items": []}')
    lines = []
    for pod in pods["items"]:
        statuses = pod["status"].get("initContainerStatuses", []) + pod["status"].get("containerStatuses", [])
        if statuses and all(
            s.get("ready") or s.get("state", {}).get("terminated", {}).get("exitCode") == 0 for s in statuses
        ):
            continue
        name = pod["metadata"]["name"]
        states = ", ".join(f"{s['name']}={next(iter(s.get('state', {'?': 0})))}" for s in statuses)
        lines.append(f"{name} ({pod['status'].get('phase')}; {states or 'no containers started'})")
        for s in statuses:
            if not s.get("ready"):
                tail = _kubectl(bin_dir, "-n", NAMESPACE, "logs", name, "-c", s["name"], "--tail=15")
                lines += [f"    {s['name']}: {line}" for line in tail.splitlines()]
    events = _kubectl(bin_dir, "-n", NAMESPACE, "get", "events", "--sort-by=.lastTimestamp")
    return "\n".join(lines or ["(every pod in the namespace is ready)"]) + "\nevents:\n" + events[-3000:]


def up() -> None:
    bin_dir = cluster.controlplane_bin()
    mode = probe()
    images = kubevirt_build.images()
    tag = images[0].rsplit(":", 1)[1]
    operator_yaml = manifests(tag)
    cluster.up(kubevirt=True)
    started = time.monotonic()
    log(
        "kubevirt", f"installing KubeVirt {kubevirt_build.KUBEVIRT_VERSION} ({tag}) with {operator_yaml.name}"
    )
    cluster.kubectl(bin_dir, "apply", "-f", str(operator_yaml), step="kubevirt-operator.yaml")
    try:
        cluster.kubectl(
            bin_dir,
            "-n",
            NAMESPACE,
            "rollout",
            "status",
            "deployment/virt-operator",
            "--timeout=5m",
            step="virt-operator Ready",
        )
        cluster.kubectl(bin_dir, "apply", "-f", "-", step="KubeVirt CR", stdin=custom_resource(mode).encode())
        cluster.kubectl(
            bin_dir,
            "-n",
            NAMESPACE,
            "wait",
            "kv/kubevirt",
            "--for=condition=Available",
            "--timeout=15m",
            step="KubeVirt Available",
        )
    except StepFailedError as error:
        raise StepFailedError(f"{error}\nKubeVirt components not ready:\n{diagnose(bin_dir)}") from error
    log("kubevirt", f"KubeVirt Available after {time.monotonic() - started:.0f}s ({mode})")
    print(_kubectl(bin_dir, "get", "nodes", "-L", "kubevirt.io/schedulable"))
    print(_kubectl(bin_dir, "-n", NAMESPACE, "get", "pods", "-o", "wide"))


DEMO_EXAMPLES = ("01-template/vmtemplate.yaml", "02-oversubscribed-pool/pool.yaml")
DEMO_POOL, DEMO_REPLICAS = "web", 6


def demo() -> None:
    """`up`, then the examples' template and pool applied with the guest image built here in place of their
    registry images, and waits until every VM of the pool runs in a real virt-launcher pod."""
    up()
    bin_dir = cluster.controlplane_bin()
    guest = kubevirt_build.guest_image()
    documents = []
    for example in DEMO_EXAMPLES:
        text = (cluster.REPO / "examples" / example).read_text()
        documents.append(re.sub(r"(containerImage:\s*)\S+", lambda m: m.group(1) + guest, text))
    log("demo", f"applying examples/{' and examples/'.join(DEMO_EXAMPLES)} with {guest}")
    cluster.kubectl(
        bin_dir, "apply", "-f", "-", step="apply examples", stdin="\n---\n".join(documents).encode()
    )
    started = time.monotonic()
    selector = f"virtfleet.io/pool={DEMO_POOL}"
    while True:
        phases = _kubectl(bin_dir, "-n", "default", "get", "vmi", "-l", selector, "-o",
                          "jsonpath={range .items[*]}{.status.phase}{\"\\n\"}{end}").split()  # fmt: skip
        if phases.count("Running") == DEMO_REPLICAS:
            break
        if time.monotonic() - started > 900:
            raise StepFailedError(
                f"demo: {phases.count('Running')}/{DEMO_REPLICAS} VMIs Running after 15 min"
            )
        time.sleep(5)
    log("demo", f"{DEMO_REPLICAS} VMs Running after {time.monotonic() - started:.0f}s")
    print(_kubectl(bin_dir, "-n", "default", "get", "vmtemplate,vfpool,vm,vmi", "-o", "wide"))
    print(
        f"KUBECONFIG={cluster.KUBECONFIG}; a guest's console: kubectl logs <virt-launcher pod> -c guest-console-log"
    )


def down() -> None:
    cluster.down()


def _manifests_only() -> Path:
    return manifests(kubevirt_build.images()[0].rsplit(":", 1)[1])


if __name__ == "__main__":
    sys.exit(
        command_line(
            __doc__,
            sys.argv,
            {"up": up, "probe": probe, "manifests": _manifests_only, "demo": demo, "down": down},
            default="",
        )
    )
