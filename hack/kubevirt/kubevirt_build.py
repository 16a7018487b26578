"""Builds KubeVirt from its pinned Go module, its images on Debian, and the e2e guest image; nothing is pulled.

    python3 hack/kubevirt/kubevirt_build.py [binaries|images|guest|crds|all]

KubeVirt v1.7.0 is the newest release whose whole dependency graph the Go module proxy serves here (v1.8 and
v1.9 need libguestfs.org/libnbd and kubevirt.io/virt-template-* modules it does not). hack/kubevirt/go.mod
requires kubevirt.io/kubevirt, kubevirt.io/api and kubevirt.io/client-go at that version with KubeVirt's own
replace block, and go.sum is KubeVirt's.

Images: virt-operator, virt-api, virt-controller (static Go on a Debian base, USER 1001), virt-handler and
virt-launcher (Debian trixie's libvirt 11.3 and QEMU 10.0, close to the libvirt 10.10 / QEMU 9.1 upstream
ships; Debian has only the monolithic libvirtd, so images/launcher/virtqemud starts it under the name
KubeVirt runs). Every step is cached by a hash of its inputs, prints progress and names the failing step.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

KUBEVIRT_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(KUBEVIRT_DIR.parent / "kind"))

import build as kind_build  # noqa: E402
import engine  # noqa: E402
from common import CACHE, REPO, command_line, digest, log, output, run  # noqa: E402

KUBEVIRT_VERSION = "v1.7.0"
KUBEVIRT_COMMIT = "50b9b4d0cf1caaf56147411a1e6765134e0e82b9"  # the v1.7.0 tag
RUNTIME_SUITE = "trixie"  # libvirt 11.3, QEMU 10.0
REGISTRY = f"{kind_build.IMAGE_PREFIX}/kubevirt"
GUEST_REPOSITORY = f"{kind_build.IMAGE_PREFIX}/guest/busybox-disk"
COMPONENTS = ("virt-operator", "virt-api", "virt-controller", "virt-handler", "virt-launcher")
# The statically linked commands the images carry (upstream's image definitions in the module's BUILD files).
STATIC = [
    *("virt-operator", "virt-api", "virt-controller"),
    *("virt-launcher-monitor", "virt-freezer", "virt-probe", "virt-tail", "virtctl"),
]
IMAGES = KUBEVIRT_DIR / "images"


def module_dir() -> Path:
    return kind_build.module_dir("kubevirt.io/kubevirt", KUBEVIRT_VERSION)


def _ldflags() -> str:
    pkg = "kubevirt.io/client-go/version"
    return (
        f"-s -w -X {pkg}.gitVersion={KUBEVIRT_VERSION} -X {pkg}.gitCommit={KUBEVIRT_COMMIT}"
        f" -X {pkg}.gitTreeState=clean -X {pkg}.buildDate=2025-11-05T00:00:00Z"
    )


def binaries() -> Path:
    """KubeVirt's commands, as hack/build-go.sh builds them (tag selinux), without Bazel."""
    kv = module_dir()
    inputs = [KUBEVIRT_DIR / "go.mod", KUBEVIRT_DIR / "go.sum", kv / "cmd/container-disk-v2alpha/main.c"]
    key = digest(inputs, output(["go", "version"]), _ldflags(), *STATIC)[:16]

    def build(into: Path, logfile: Path) -> None:
        cmd = "kubevirt.io/kubevirt/cmd/"

        def go_build(tags: str) -> list[str]:
            return ["go", "build", "-trimpath", "-tags", tags, "-ldflags", _ldflags(), "-o", f"{into}/"]

        common = go_build("selinux")
        groups = [
            ("static commands", {"CGO_ENABLED": "0"}, common + [cmd + c for c in STATIC]),
            (
                "manifest-templator",
                {"CGO_ENABLED": "0"},
                [*common, "kubevirt.io/kubevirt/tools/manifest-templator"],
            ),
            # cgo: linux/kvm.h for the node labeller's KVM capability probe, runc's userns helper.
            (
                "virt-handler, virt-chroot",
                {"CGO_ENABLED": "1"},
                [*common, cmd + "virt-handler", cmd + "virt-chroot"],
            ),
            # libvirt_dlopen: no libvirt headers at build time; libvirt.so comes from the image's libvirt.
            (
                "virt-launcher",
                {"CGO_ENABLED": "1"},
                [*go_build("selinux,libvirt_dlopen"), cmd + "virt-launcher"],
            ),
        ]
        for step, extra, argv in groups:
            log("kubevirt", f"go build {step}")
            run(
                "kubevirt",
                f"go build {step}",
                ["nice", *argv],
                cwd=KUBEVIRT_DIR,
                logfile=logfile,
                extra_env=extra,
            )
        log("kubevirt", "cc container-disk (static C, as upstream)")
        run(
            "kubevirt",
            "cc container-disk",
            ["gcc", "-O2", "-static", "-o", str(into / "container-disk"), str(inputs[2])],
            logfile=logfile,
        )

    return kind_build.cached_group("kubevirt", key, build)


def _files(bin_dir: Path, names: list[str]) -> dict[str, Path]:
    return {f"bin/{n}": bin_dir / n for n in names}


def images() -> list[str]:
    """The five images a KubeVirt install deploys, tagged <REGISTRY>/<component>:<version>-<hash>."""
    engine.up()
    bin_dir = binaries()
    kv = module_dir()
    runtime = kind_build.debian_image(RUNTIME_SUITE)
    launcher_files = {
        **_files(
            bin_dir, ["virt-launcher", "virt-launcher-monitor", "virt-freezer", "virt-probe", "virt-tail"]
        ),
        "bin/container-disk": bin_dir / "container-disk",
        "bin/node-labeller.sh": kv / "cmd/virt-launcher/node-labeller/node-labeller.sh",
        "virtqemud": IMAGES / "launcher/virtqemud",
        "etc/libvirt/qemu.conf": kv / "cmd/virt-launcher/qemu.conf",
        "etc/libvirt/virtqemud.conf": kv / "cmd/virt-launcher/virtqemud.conf",
        "etc/libvirt/hooks/qemu": kv / "cmd/virt-launcher/qemu",
        "etc/nsswitch.conf": kv / "cmd/virt-launcher/nsswitch.conf",
    }
    handler_files = {
        **_files(bin_dir, ["virt-handler", "virt-chroot"]),
        "etc/nsswitch.conf": kv / "cmd/virt-launcher/nsswitch.conf",
    }
    plans: dict[str, tuple[Path | str, dict[str, Path]]] = {
        "virt-launcher": (IMAGES / "launcher/Dockerfile", launcher_files),
        "virt-handler": (IMAGES / "handler/Dockerfile", handler_files),
    }
    for name in ("virt-operator", "virt-api", "virt-controller"):
        dockerfile = (
            "ARG DEBIAN_IMAGE\nFROM ${DEBIAN_IMAGE}\n"
            "# The pods set runAsNonRoot: a numeric non-root user, as upstream's image has (1001).\n"
            "RUN useradd -u 1001 -U -d /home/nonroot-user -s /bin/bash -m nonroot-user\n"
            f'COPY bin/{name} /usr/bin/{name}\nUSER 1001\nENTRYPOINT ["/usr/bin/{name}"]\n'
        )
        plans[name] = (dockerfile, _files(bin_dir, [name]))
    # One tag for all five: virt-operator derives the others' names from its own image.
    # The guest's folder is not an input: a guest change must not rebuild KubeVirt's images.
    inputs = [bin_dir / ".complete", IMAGES / "launcher", IMAGES / "handler"]
    tag = f"{KUBEVIRT_VERSION}-{digest(inputs, runtime, repr(sorted(plans)))[:10]}"
    tags = []
    logfile = CACHE / "logs" / "kubevirt-images.log"
    for name in COMPONENTS:
        dockerfile, files = plans[name]
        image = f"{REGISTRY}/{name}:{tag}"
        tags.append(image)
        if kind_build.image_exists(image):
            continue
        log("kubevirt", f"building {image} (log: {logfile})")
        with tempfile.TemporaryDirectory(prefix="virtfleet-kv-") as tmp:
            context = Path(tmp)
            kind_build.stage(context, files)
            if isinstance(dockerfile, str):
                (context / "Dockerfile").write_text(dockerfile)
                dockerfile = context / "Dockerfile"
            kind_build.docker_build(
                f"image {name}", image, context, dockerfile, {"DEBIAN_IMAGE": runtime}, logfile
            )
    return tags


def guest_image() -> str:
    """The e2e guest containerDisk (images/guest): Debian's kernel, busybox, SYSLINUX."""
    engine.up()
    debian = kind_build.debian_image()
    tag = f"{GUEST_REPOSITORY}:{digest([IMAGES / 'guest'], debian)[:12]}"
    if kind_build.image_exists(tag):
        return tag
    logfile = CACHE / "logs" / "kubevirt-guest.log"
    log("kubevirt", f"building {tag} (log: {logfile})")
    kind_build.docker_build(
        "guest image", tag, IMAGES / "guest", IMAGES / "guest/Dockerfile", {"DEBIAN_IMAGE": debian}, logfile
    )
    return tag


def archives() -> list[Path]:
    """`docker save` archives of KubeVirt's images and the guest, for preloading into the kind nodes."""
    tags = [*images(), guest_image()]
    out = CACHE / "kubevirt-images"
    out.mkdir(parents=True, exist_ok=True)
    logfile = CACHE / "logs" / "kubevirt-images.log"
    return [kind_build.save([t], out, logfile) for t in tags]


def _print_all() -> str:
    return "\n".join([*images(), guest_image()])


def _print_guest() -> str:
    return guest_image()


def crds() -> Path:
    """e2e/kubevirt-crds/<version>/: the CRDs this KubeVirt's virt-operator installs, from its own generator
    (cmd/crds), for the tests that hold rendered objects against every supported KubeVirt."""
    source = KUBEVIRT_DIR / "cmd/crds/main.go"
    key = digest([KUBEVIRT_DIR / "go.mod", KUBEVIRT_DIR / "go.sum", source], output(["go", "version"]))[:16]

    def build(into: Path, logfile: Path) -> None:
        run("kubevirt", "go build cmd/crds", ["go", "build", "-o", f"{into}/", "./cmd/crds"],
            cwd=KUBEVIRT_DIR, logfile=logfile)  # fmt: skip

    generator = kind_build.cached_group("kubevirt-crds", key, build) / "crds"
    out = REPO / "e2e" / "kubevirt-crds" / KUBEVIRT_VERSION
    out.mkdir(parents=True, exist_ok=True)
    run("kubevirt", "generate CRDs", [str(generator), str(out)], logfile=CACHE / "logs" / "kubevirt-crds.log")
    return out


def _print_binaries() -> str:
    return str(binaries())


if __name__ == "__main__":
    sys.exit(
        command_line(
            __doc__,
            sys.argv,
            {
                "binaries": _print_binaries,
                "images": _print_all,
                "guest": _print_guest,
                "crds": crds,
                "all": _print_all,
            },
            default="all",
        )
    )
