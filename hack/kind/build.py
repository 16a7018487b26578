"""Builds everything the kind cluster runs, on this machine, from pinned sources; nothing is pulled.

    python3 hack/kind/build.py [binaries|images|node|operator|all]

Each step is cached by a hash of its inputs (binaries in ~/.cache/virtfleet/kind-bin-<hash>/, images
in the Docker engine under a tag that carries the hash), prints progress, and on failure names the
step and shows the end of its log. The last line on stdout is the node image's tag (or, for
`operator`, the operator image's tag). See docs/kind.md for what is built from what.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine
from common import CACHE, HERE, REPO, StepFailedError, command_line, digest, ensure_packages, log, output, run

KUBERNETES_VERSION = "v1.34.4"
KIND_VERSION = "v0.30.0"
ETCD_IMAGE_TAG = "3.6.5-0"  # kubeadm v1.34's DefaultEtcdVersion; hack/kind/go.mod pins etcd v3.6.5
COREDNS_VERSION = "v1.12.1"  # kubeadm v1.34's CoreDNSVersion
PAUSE_TAGS = ("3.10", "3.10.1")  # kind's containerd sandbox_image and kubeadm's PauseVersion
# Each module is built from its own source at the pinned version, with its own go.mod (replace and
# exclude directives included), as a checkout of the release tag would be: (module, version, package
# folders, extra environment).
GO_MODULES: dict[str, tuple[str, str, list[str], dict[str, str]]] = {
    "kind": ("sigs.k8s.io/kind", KIND_VERSION, ["."], {}),
    # Same build tags as kind's base image: no optional snapshotters.
    "containerd": (
        "github.com/containerd/containerd/v2",
        "v2.1.4",
        ["./cmd/containerd", "./cmd/ctr", "./cmd/containerd-shim-runc-v2"],
        {"GOFLAGS": "-mod=mod -buildvcs=false -tags=no_aufs,no_zfs,no_btrfs,no_devmapper"},
    ),
    "runc": (
        "github.com/opencontainers/runc",
        "v1.3.0",
        ["."],
        {"CGO_ENABLED": "1", "GOFLAGS": "-mod=mod -buildvcs=false -tags=seccomp"},
    ),
    "crictl": ("sigs.k8s.io/cri-tools", "v1.34.0", ["./cmd/crictl"], {}),
    "cni": (
        "github.com/containernetworking/plugins",
        "v1.7.1",
        [
            "./plugins/ipam/host-local",
            "./plugins/main/loopback",
            "./plugins/main/ptp",
            "./plugins/meta/portmap",
        ],
        {},
    ),
    "coredns": ("github.com/coredns/coredns", COREDNS_VERSION, ["."], {}),
    "local-path-provisioner": ("github.com/rancher/local-path-provisioner", "v0.0.30", ["."], {}),
}
KUBE_COMMANDS = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
    "kubelet",
    "kubeadm",
    "kubectl",
]
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("VIRTFLEET_DEBIAN_MIRROR", "http://deb.debian.org/debian")
IMAGE_PREFIX = "virtfleet.local"
# Certificate authorities the machine trusts beyond Debian's (update-ca-certificates' local folder).
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")


def go_modcache() -> Path:
    return Path(output(["go", "env", "GOMODCACHE"]).strip())


def module_dir(module: str, version: str) -> Path:
    """A module's source at a version in the module cache, from the Go module proxy (checksum-verified)."""
    info = json.loads(output(["go", "mod", "download", "-json", f"{module}@{version}"], cwd=HERE))
    if "Error" in info:
        raise StepFailedError(f"go mod download {module}@{version}: {info['Error']}")
    return Path(info["Dir"])


def kind_module_dir() -> Path:
    """kind's source at the pinned version: its base image files and node-image manifests are used as they are."""
    return module_dir("sigs.k8s.io/kind", KIND_VERSION)


# -- binaries ------------------------------------------------------------------------------------------


def cached_group(name: str, key: str, build: Callable[[Path, Path], None]) -> Path:
    """One group of binaries, built into ~/.cache/virtfleet/kind-bin/<name>-<key>/ once."""
    done = CACHE / "kind-bin" / f"{name}-{key}"
    if (done / ".complete").exists():
        return done
    partial = Path(f"{done}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    logfile = CACHE / "logs" / f"kind-bin-{name}-{key}.log"
    logfile.unlink(missing_ok=True)
    log("binaries", f"building {name} (log: {logfile})")
    build(partial, logfile)
    shutil.rmtree(done, ignore_errors=True)
    partial.rename(done)
    (done / ".complete").write_text(key)
    return done


def _groups() -> dict[str, tuple[str, Callable[[Path, Path], None]]]:
    """Each group of binaries with the hash of its inputs and how to build it."""
    go = output(["go", "version"])
    base_env = {"CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false"}
    minor = KUBERNETES_VERSION.split(".")[1]
    stamp = " ".join(
        f"-X {pkg}.gitVersion={KUBERNETES_VERSION} -X {pkg}.gitMajor=1 -X {pkg}.gitMinor={minor}"
        f" -X {pkg}.gitTreeState=clean"
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
    )
    pinned = [HERE / "go.mod", HERE / "go.sum"]

    def local(packages: list[str], ldflags: str) -> Callable[[Path, Path], None]:
        def build_local(out: Path, logfile: Path) -> None:
            run(
                "binaries",
                f"go build {' '.join(packages)}",
                ["go", "build", "-trimpath", "-ldflags", ldflags, "-o", f"{out}/", *packages],
                cwd=HERE,
                logfile=logfile,
                extra_env=base_env,
            )

        return build_local

    def module(
        name: str, path: str, version: str, packages: list[str], extra: dict[str, str]
    ) -> Callable[[Path, Path], None]:
        def build_module(out: Path, logfile: Path) -> None:
            with tempfile.TemporaryDirectory(prefix=f"virtfleet-{name}-") as tmp:
                source = module_source(path, version, Path(tmp) / "src", logfile)
                run(
                    "binaries",
                    f"go build {name} {version}",
                    ["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", f"{out}/", *packages],
                    cwd=source,
                    logfile=logfile,
                    extra_env={**base_env, "GOFLAGS": "-mod=mod -buildvcs=false", **extra},
                )

        return build_module

    def pause(out: Path, logfile: Path) -> None:
        source = go_modcache() / f"k8s.io/kubernetes@{KUBERNETES_VERSION}/build/pause/linux/pause.c"
        argv = [
            "cc",
            "-Os",
            "-Wall",
            "-Werror",
            "-static",
            f"-DVERSION={PAUSE_TAGS[-1]}",
            "-o",
            f"{out}/pause",
        ]
        run("binaries", "cc pause", [*argv, str(source)], logfile=logfile)

    kube = [f"k8s.io/kubernetes/cmd/{c}" for c in KUBE_COMMANDS]
    groups: dict[str, tuple[str, Callable[[Path, Path], None]]] = {
        "kubernetes": (
            digest([*pinned, HERE / "cmd/etcd"], KUBERNETES_VERSION, repr(KUBE_COMMANDS), go),
            local([*kube, "./cmd/etcd"], f"-s -w {stamp}"),
        ),
        "virtfleet": (
            digest([*pinned, HERE / "cmd/netagent", HERE / "cmd/capfilter"], go),
            local(["./cmd/netagent", "./cmd/capfilter"], "-s -w"),
        ),
        "pause": (digest([], KUBERNETES_VERSION, repr(PAUSE_TAGS), output(["cc", "--version"])), pause),
    }
    for name, (path, version, packages, extra) in GO_MODULES.items():
        groups[name] = (
            digest([], path, version, repr(packages), repr(extra), go),
            module(name, path, version, packages, extra),
        )
    return groups


def binaries() -> Path:
    """Every program of the node image and its images, and kind itself, in one folder (cni/ for the
    CNI plugins); each group is cached on its own, so changing one rebuilds only that one."""
    # runc links libseccomp (cgo), pause is compiled statically with the C compiler.
    ensure_packages("binaries", {"/usr/include/seccomp.h": "libseccomp-dev", "/usr/bin/cc": "gcc"})
    groups = _groups()
    key = digest([], *(f"{name}={key}" for name, (key, _) in sorted(groups.items())))
    merged = CACHE / f"kind-bin-{key}"
    if (merged / ".complete").exists():
        log("binaries", f"reusing {merged}")
        return merged
    built = {name: cached_group(name, group_key, build) for name, (group_key, build) in groups.items()}
    partial = Path(f"{merged}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "cni").mkdir(parents=True)
    for name, folder in built.items():
        target = partial / "cni" if name == "cni" else partial
        for binary in folder.iterdir():
            if binary.name != ".complete":
                os.link(binary, target / binary.name)
    shutil.rmtree(merged, ignore_errors=True)
    partial.rename(merged)
    (merged / ".complete").write_text(key)
    log("binaries", f"done: {merged}")
    return merged


def module_source(module: str, version: str, into: Path, logfile: Path) -> Path:
    """A writable copy of a module's source at a version, to build it with its own go.mod."""
    cached = module_dir(module, version)
    shutil.copytree(cached, into, symlinks=True)
    for path in [into, *into.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o200)
    with logfile.open("a") as out:
        out.write(f"\n# {module}@{version} from {cached}\n")
    return into


def capfilter() -> Path:
    """Just the runtime wrapper (with netagent, its group), for the engine, which may be needed first."""
    key, build = _groups()["virtfleet"]
    return cached_group("virtfleet", key, build) / "capfilter"


# -- images --------------------------------------------------------------------------------------------


def image_exists(tag: str) -> bool:
    return (
        subprocess.run(["docker", "image", "inspect", tag], capture_output=True, check=False).returncode == 0
    )


def docker_build(
    step: str, tag: str, context: Path, dockerfile: Path, args: dict[str, str], logfile: Path
) -> None:
    argv = ["docker", "build", "--network", "bridge", "-t", tag, "-f", str(dockerfile)]
    for k, v in args.items():
        argv += ["--build-arg", f"{k}={v}"]
    run("images", step, [*argv, str(context)], logfile=logfile)


def debian_image(suite: str = DEBIAN_SUITE) -> str:
    """A Debian root filesystem from Debian's packages (debootstrap), imported as a base image."""
    script = "debootstrap --variant=minbase"
    tag = f"{IMAGE_PREFIX}/debian:{suite}-{digest([], script, suite, DEBIAN_MIRROR)[:10]}"
    if image_exists(tag):
        return tag
    logfile = CACHE / "logs" / f"debian-rootfs-{suite}.log"
    ensure_packages("images", {"/usr/sbin/debootstrap": "debootstrap"})
    with tempfile.TemporaryDirectory(prefix="virtfleet-rootfs-") as tmp:
        root = Path(tmp) / "root"
        log("images", f"debootstrap {suite} from {DEBIAN_MIRROR} (log: {logfile})")
        run(
            "images",
            "debootstrap",
            ["debootstrap", "--variant=minbase", suite, str(root), DEBIAN_MIRROR],
            logfile=logfile,
        )
        # Same apt sources inside as the suite we bootstrapped, with its security updates.
        (root / "etc/apt/sources.list").write_text(
            f"deb {DEBIAN_MIRROR} {suite} main\n"
            f"deb {DEBIAN_MIRROR} {suite}-updates main\n"
            f"deb {DEBIAN_MIRROR.replace('/debian', '/debian-security')} {suite}-security main\n"
        )
        run(
            "images",
            "clean rootfs",
            ["rm", "-rf", f"{root}/var/cache/apt/archives", f"{root}/var/lib/apt/lists"],
            logfile=logfile,
        )
        tarball = Path(tmp) / "rootfs.tar"
        run("images", "tar rootfs", ["tar", "-C", str(root), "-cf", str(tarball), "."], logfile=logfile)
        run("images", "docker import", ["docker", "import", str(tarball), tag], logfile=logfile)
    log("images", f"imported {tag}")
    return tag


def stage(context: Path, files: dict[str, Path], modes: int = 0o755) -> None:
    for name, src in files.items():
        dst = context / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        dst.chmod(modes)


def base_image(bin_dir: Path, debian: str) -> str:
    files = kind_module_dir() / "images/base/files"
    dockerfile = HERE / "images/base/Dockerfile"
    tag = f"{IMAGE_PREFIX}/kind-base:{KIND_VERSION}-{digest([dockerfile, files, bin_dir / '.complete'], debian)[:12]}"
    if image_exists(tag):
        return tag
    logfile = CACHE / "logs" / "kind-base.log"
    with tempfile.TemporaryDirectory(prefix="virtfleet-base-") as tmp:
        context = Path(tmp)
        shutil.copytree(files, context / "files")
        for path in (context / "files").rglob("*"):
            executable = path.is_dir() or "bin" in path.relative_to(context / "files").parts
            path.chmod(0o755 if executable else 0o644)
        config = context / "files/etc/containerd/config.toml"
        # Pods' containers start through capfilter too (see hack/kind/cmd/capfilter): kube-proxy and
        # other privileged pods ask for capabilities this machine's bounding set lacks.
        text = config.read_text()
        text = text.replace(
            "    SystemdCgroup = true\n",
            '    SystemdCgroup = true\n    BinaryName = "/usr/local/bin/capfilter"\n',
        )
        # Devices a pod gets (KubeVirt's /dev/net/tun and /dev/kvm) owned by the pod's user, as non-root
        # KubeVirt needs: this machine's device nodes are 0600 root, and QEMU runs as uid 107.
        cri = '[plugins."io.containerd.grpc.v1.cri"]\n'
        if cri not in text:
            raise StepFailedError(f"{config}: no {cri.strip()} section (has kind's base image changed?)")
        text = text.replace(cri, cri + "  device_ownership_from_security_context = true\n")
        config.write_text(text)
        stage(
            context,
            {
                f"bin/{n}": bin_dir / n
                for n in ("containerd", "ctr", "containerd-shim-runc-v2", "crictl", "capfilter", "runc")
            },
        )
        stage(context, {f"cni/{p.name}": p for p in (bin_dir / "cni").iterdir()})
        log("images", f"building {tag} (log: {logfile})")
        docker_build("kind base image", tag, context, dockerfile, {"DEBIAN_IMAGE": debian}, logfile)
    return tag


def component_images(bin_dir: Path, debian: str, out: Path) -> list[Path]:
    """Every image kubeadm and kind preload, as `docker save` archives in out/."""
    out.mkdir(parents=True, exist_ok=True)
    logfile = CACHE / "logs" / "kind-images.log"
    k8s = KUBERNETES_VERSION
    static = {
        f"registry.k8s.io/kube-apiserver:{k8s}": ("kube-apiserver", "/usr/local/bin/kube-apiserver", None),
        f"registry.k8s.io/kube-controller-manager:{k8s}": (
            "kube-controller-manager",
            "/usr/local/bin/kube-controller-manager",
            None,
        ),
        f"registry.k8s.io/kube-scheduler:{k8s}": ("kube-scheduler", "/usr/local/bin/kube-scheduler", None),
        f"registry.k8s.io/etcd:{ETCD_IMAGE_TAG}": ("etcd", "/usr/local/bin/etcd", None),
        f"registry.k8s.io/coredns/coredns:{COREDNS_VERSION}": ("coredns", "/coredns", "/coredns"),
        f"{IMAGE_PREFIX}/local-path-provisioner:v0.0.30": (
            "local-path-provisioner",
            "/usr/local/bin/local-path-provisioner",
            "/usr/local/bin/local-path-provisioner",
        ),
    }
    archives = []
    for tag, (binary, target, entrypoint) in static.items():
        archives.append(_static_image(tag, bin_dir / binary, target, entrypoint, out, logfile))
    pause_tags = [f"registry.k8s.io/pause:{t}" for t in PAUSE_TAGS]
    archives.append(_dockerfile_image(pause_tags, "pause", {"pause": bin_dir / "pause"}, {}, out, logfile))
    with_debian = {"DEBIAN_IMAGE": debian}
    archives.append(
        _dockerfile_image(
            [f"registry.k8s.io/kube-proxy:{k8s}"],
            "kube-proxy",
            {"kube-proxy": bin_dir / "kube-proxy"},
            with_debian,
            out,
            logfile,
        )
    )
    archives.append(
        _dockerfile_image(
            [netagent_image(bin_dir)],
            "netagent",
            {"netagent": bin_dir / "netagent"},
            with_debian,
            out,
            logfile,
        )
    )
    archives.append(
        _dockerfile_image(
            [local_path_helper_image(debian)], "local-path-helper", {}, with_debian, out, logfile
        )
    )
    return archives


def netagent_image(bin_dir: Path) -> str:
    return f"{IMAGE_PREFIX}/netagent:{digest([bin_dir / 'netagent', HERE / 'images/netagent'])[:12]}"


def local_path_helper_image(debian: str) -> str:
    return f"{IMAGE_PREFIX}/local-path-helper:{debian.rsplit(':', 1)[1]}"


def _archive_name(tag: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", tag) + ".tar"


def save(tags: list[str], out: Path, logfile: Path) -> Path:
    archive = out / _archive_name(tags[0])
    if not archive.exists():
        run(
            "images",
            f"docker save {tags[0]}",
            ["docker", "save", "-o", f"{archive}.partial", *tags],
            logfile=logfile,
        )
        Path(f"{archive}.partial").rename(archive)
    return archive


def _static_image(
    tag: str, binary: Path, target: str, entrypoint: str | None, out: Path, logfile: Path
) -> Path:
    lines = ["FROM scratch", f"COPY {binary.name} {target}", "ENV PATH=/usr/local/bin:/usr/bin:/bin"]
    if entrypoint:
        lines.append(f'ENTRYPOINT ["{entrypoint}"]')
    return _image([tag], "\n".join(lines) + "\n", {binary.name: binary}, {}, out, logfile)


def _dockerfile_image(
    tags: list[str], name: str, files: dict[str, Path], args: dict[str, str], out: Path, logfile: Path
) -> Path:
    return _image(tags, HERE / "images" / name / "Dockerfile", files, args, out, logfile)


def _image(
    tags: list[str],
    dockerfile: Path | str,
    files: dict[str, Path],
    args: dict[str, str],
    out: Path,
    logfile: Path,
) -> Path:
    """Build (unless built) and `docker save` an image; dockerfile is a file or the Dockerfile's text."""
    if not all(image_exists(t) for t in tags) or not (out / _archive_name(tags[0])).exists():
        with tempfile.TemporaryDirectory(prefix="virtfleet-img-") as tmp:
            context = Path(tmp)
            stage(context, files)
            if isinstance(dockerfile, str):
                (context / "Dockerfile").write_text(dockerfile)
                dockerfile = context / "Dockerfile"
            log("images", f"building {', '.join(tags)}")
            first, *more = tags
            docker_build(f"image {first}", first, context, dockerfile, args, logfile)
            for t in more:
                run("images", f"docker tag {t}", ["docker", "tag", first, t], logfile=logfile)
    return save(tags, out, logfile)


# -- node image (kind's pkg/build/nodeimage steps, with every image built here) --------------------------


def kind_manifest(go_file: Path, const: str, images: dict[str, str]) -> str:
    """A manifest constant of kind's node-image builder, with the image constants it concatenates."""
    source = go_file.read_text()
    match = re.search(rf"const {const} = ((?:`[^`]*`|\s*\+\s*|\w+)+)", source)
    if not match:
        raise StepFailedError(f"{go_file}: no const {const} (has kind's source layout changed?)")
    parts = re.findall(r"`([^`]*)`|(\w+)", match.group(1))
    text = ""
    for literal, ident in parts:
        if ident:
            if ident not in images:
                raise StepFailedError(f"{go_file}: {const} uses {ident}, which build.py does not provide")
            text += images[ident]
        else:
            text += literal
    return text


def node_image(bin_dir: Path, base: str, archives: list[Path], debian: str) -> str:
    netagent_manifest = (
        (HERE / "manifests/netagent.yaml").read_text().replace("@NETAGENT_IMAGE@", netagent_image(bin_dir))
    )
    storage_manifest = kind_manifest(
        kind_module_dir() / "pkg/build/nodeimage/const_storage.go",
        "defaultStorageManifest",
        {
            "storageProvisionerImage": f"{IMAGE_PREFIX}/local-path-provisioner:v0.0.30",
            "storageHelperImage": local_path_helper_image(debian),
        },
    )
    key = digest(
        [*archives, *(bin_dir / n for n in ("kubeadm", "kubelet", "kubectl"))],
        KUBERNETES_VERSION,
        base,
        netagent_manifest,
        storage_manifest,
    )
    tag = f"{IMAGE_PREFIX}/kind-node:{KUBERNETES_VERSION}-{key[:12]}"
    if image_exists(tag):
        log("node", f"reusing {tag}")
        return tag
    logfile = CACHE / "logs" / "kind-node.log"
    name = f"virtfleet-node-build-{os.getpid()}"
    log("node", f"building {tag} in container {name} (log: {logfile})")
    run(
        "node",
        "start build container",
        [
            "docker",
            "run",
            "-d",
            "--entrypoint=sleep",
            f"--name={name}",
            "--security-opt",
            "seccomp=unconfined",
            base,
            "infinity",
        ],
        logfile=logfile,
    )
    try:
        for binary in ("kubeadm", "kubelet", "kubectl"):
            run(
                "node",
                f"copy {binary}",
                ["docker", "cp", str(bin_dir / binary), f"{name}:/usr/bin/{binary}"],
                logfile=logfile,
            )
            run(
                "node",
                f"chmod {binary}",
                ["docker", "exec", name, "chmod", "0755", f"/usr/bin/{binary}"],
                logfile=logfile,
            )
        files = {
            "/kind/version": KUBERNETES_VERSION,
            "/kind/manifests/default-cni.yaml": netagent_manifest,
            "/kind/manifests/default-storage.yaml": storage_manifest,
        }
        for path, content in files.items():
            run(
                "node",
                f"write {path}",
                ["docker", "exec", "-i", name, "sh", "-c", f"mkdir -p $(dirname {path}) && cat > {path}"],
                logfile=logfile,
                stdin=content.encode(),
            )
        required = output(
            [
                "docker",
                "exec",
                name,
                "kubeadm",
                "config",
                "images",
                "list",
                "--kubernetes-version",
                KUBERNETES_VERSION,
            ]
        ).split()
        log("node", f"kubeadm requires: {' '.join(required)}")
        run(
            "node",
            "start containerd",
            ["docker", "exec", name, "bash", "-c", "nohup containerd > /dev/null 2>&1 &"],
            logfile=logfile,
        )
        run(
            "node",
            "wait for containerd",
            [
                "docker",
                "exec",
                name,
                "bash",
                "-c",
                "for i in $(seq 1 30); do ctr info >/dev/null 2>&1 && exit 0; sleep 1; done; ctr info",
            ],
            logfile=logfile,
        )
        for archive in archives:
            log("node", f"importing {archive.name}")
            run(
                "node",
                f"import {archive.name}",
                [
                    "docker",
                    "exec",
                    "-i",
                    name,
                    "ctr",
                    "--namespace=k8s.io",
                    "images",
                    "import",
                    "--label=io.cri-containerd.pinned=pinned",
                    "--all-platforms",
                    "--no-unpack",
                    "--digests",
                    "-",
                ],
                logfile=logfile,
                stdin=archive.read_bytes(),
            )
        # A repo@sha256:<manifest> name beside each tag, as a registry pull leaves: the kubelet then reports
        # that digest as the container's imageID. KubeVirt's live-migration target pod asks for its
        # containerDisk as <repo>@<the source pod's imageID>; without the digest name the imageID is the
        # config digest, which no name resolves, and every migration hangs in ImagePullBackOff.
        run(
            "node",
            "name images by digest",
            [
                "docker", "exec", name, "bash", "-c",
                "ctr -n k8s.io images ls | awk 'NR > 1 && $1 !~ /@|^sha256:|^import-/ {print $1, $3}' |"
                " while read -r ref digest; do ctr -n k8s.io images tag \"$ref\" \"${ref%:*}@$digest\" >/dev/null;"
                " done",
            ],
            logfile=logfile,
        )  # fmt: skip
        imported = set(
            output(["docker", "exec", name, "ctr", "--namespace=k8s.io", "images", "list", "-q"]).split()
        )
        missing = [i for i in required if i not in imported and "pause" not in i]
        if missing:
            raise StepFailedError(f"node: images kubeadm requires were not built: {', '.join(missing)}")
        run("node", "stop containerd", ["docker", "exec", name, "pkill", "containerd"], logfile=logfile)
        run(
            "node",
            "commit",
            [
                "docker",
                "commit",
                "--change",
                'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]',
                "--change",
                'ENV HTTP_PROXY="" HTTPS_PROXY="" NO_PROXY=""',
                name,
                tag,
            ],
            logfile=logfile,
        )
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True, check=False)
    log("node", f"built {tag}")
    return tag


def operator_image(debian: str) -> str:
    extra_ca = sorted(LOCAL_CA_DIR.glob("*.crt")) if LOCAL_CA_DIR.is_dir() else []
    dockerfile = HERE / "images/python/Dockerfile"
    python = f"{IMAGE_PREFIX}/python:3.11-{digest([dockerfile, *extra_ca], debian)[:12]}"
    logfile = CACHE / "logs" / "operator-image.log"
    if not image_exists(python):
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "ca").mkdir()
            stage(Path(tmp), {f"ca/{c.name}": c for c in extra_ca}, 0o644)
            docker_build(
                "python base image", python, Path(tmp), dockerfile, {"DEBIAN_IMAGE": debian}, logfile
            )
    sources = [REPO / "Dockerfile", REPO / "pyproject.toml", REPO / "README.md", REPO / "operator"]
    tag = f"{IMAGE_PREFIX}/virtfleet:dev-{digest([s for s in sources if s.exists()], python)[:12]}"
    if image_exists(tag):
        log("operator", f"reusing {tag}")
        return tag
    log("operator", f"docker build {tag} from the repository's Dockerfile (log: {logfile})")
    docker_build("operator image", tag, REPO, REPO / "Dockerfile", {"PYTHON_IMAGE": python}, logfile)
    return tag


def all_images(preload: list[Path] | None = None) -> tuple[Path, str, str]:
    """The binaries' folder, the node image and the operator image (starting the engine if needed);
    preload: more `docker save` archives for the nodes' containerd (KubeVirt's images)."""
    engine.up()
    bin_dir = binaries()
    debian = debian_image()
    base = base_image(bin_dir, debian)
    archives = component_images(
        bin_dir, debian, CACHE / f"kind-images-{bin_dir.name.removeprefix('kind-bin-')}"
    )
    node = node_image(bin_dir, base, [*archives, *(preload or [])], debian)
    return bin_dir, node, operator_image(debian)


def _operator_only() -> str:
    engine.up()
    return operator_image(debian_image())


def _print_images() -> str:
    _, node, operator = all_images()
    return f"{operator}\n{node}"


if __name__ == "__main__":
    sys.exit(
        command_line(
            __doc__,
            sys.argv,
            {
                "binaries": binaries,
                "capfilter": capfilter,
                "images": _print_images,
                "node": _print_images,
                "all": _print_images,
                "operator": _operator_only,
            },
            default="all",
        )
    )
