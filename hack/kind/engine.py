"""A Docker engine for the kind cluster: use the one that answers, or install and start Debian's.

    python3 hack/kind/engine.py up     # prints DOCKER_HOST-free usage: the default socket answers
    python3 hack/kind/engine.py down   # stops the engine only if `up` started it

When this process's capability bounding set lacks capabilities (the project machine has no
CAP_SYS_RESOURCE), privileged containers fail in runc; the engine we start then uses capfilter as its
default runtime (hack/kind/cmd/capfilter, see docs/kind.md). An engine that was already running is used
as it is.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contextlib

from common import CACHE, StepFailedError, command_line, ensure_packages, env, log, output

STATE = CACHE / "engine"
PIDFILE = STATE / "dockerd.pid"
STARTED_BY_US = STATE / "started-by-virtfleet"
LOG = STATE / "dockerd.log"
SOCKET = Path("/var/run/docker.sock")


def answers() -> bool:
    return (
        subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            env=env(),
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )


def bounding_set_is_full() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            return int(line.split()[1], 16) & (1 << 24) != 0  # CAP_SYS_RESOURCE
    return True


def ensure_installed() -> None:
    ensure_packages("engine", {"/usr/sbin/dockerd": "docker.io", "/usr/bin/docker": "docker.io"})


def check_kernel() -> None:
    filesystems = Path("/proc/filesystems").read_text()
    if "overlay" not in filesystems:
        subprocess.run(["modprobe", "overlay"], check=False, capture_output=True)
        if "overlay" not in Path("/proc/filesystems").read_text():
            raise StepFailedError("the kernel has no overlay filesystem (overlay2 needs it)")
    if not Path("/sys/fs/cgroup").exists():
        raise StepFailedError("no /sys/fs/cgroup: the engine needs cgroups mounted")


def daemon_config(capfilter: Path | None) -> Path:
    config: dict[str, object] = {"storage-driver": "overlay2", "log-driver": "json-file"}
    if capfilter is not None:
        config["runtimes"] = {"capfilter": {"path": str(capfilter)}}
        config["default-runtime"] = "capfilter"
    path = STATE / "daemon.json"
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def up() -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    if answers():
        log("engine", f"a Docker engine answers on {SOCKET}: using it")
        return
    ensure_installed()
    check_kernel()
    if bounding_set_is_full():
        config = daemon_config(None)
    else:
        import build  # builds capfilter: only machines with a short bounding set need it

        config = daemon_config(build.capfilter())
    log("engine", f"starting dockerd (log: {LOG})")
    with LOG.open("ab") as out:
        proc = subprocess.Popen(
            ["dockerd", "--config-file", str(config), "--pidfile", str(PIDFILE)],
            env=env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    STARTED_BY_US.write_text(str(proc.pid))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n  ".join(LOG.read_text(errors="replace").splitlines()[-15:])
            raise StepFailedError(f"dockerd exited with {proc.returncode}; last lines of {LOG}:\n  {tail}")
        if answers():
            version = output(
                ["docker", "info", "--format", "{{.ServerVersion}} {{.Driver}} {{.CgroupVersion}}"]
            ).strip()
            log("engine", f"dockerd {version} answers (pid {proc.pid})")
            return
        time.sleep(0.5)
    raise StepFailedError(f"dockerd did not answer on {SOCKET} within 60 s (log: {LOG})")


def down() -> None:
    if not STARTED_BY_US.exists():
        log("engine", "the engine was not started by virtfleet: leaving it running")
        return
    pid = int(STARTED_BY_US.read_text())
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    STARTED_BY_US.unlink(missing_ok=True)
    log("engine", f"stopped dockerd (pid {pid})")


if __name__ == "__main__":
    sys.exit(command_line(__doc__, sys.argv, {"up": up, "down": down}, default=""))
