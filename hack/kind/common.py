"""Shared helpers of the kind tooling: named steps with logs, input hashing, the cache layout.

Stdlib only: these scripts run before the project's virtualenv exists (CI starts from a fresh clone).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = Path(
    os.environ.get("VIRTFLEET_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "virtfleet"
)
# Debian's docker.io client matches its engine; the newer static client some machines carry insists on
# buildx for `docker build`, and BuildKit would fetch the Dockerfile frontend from a registry.
TOOL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin:" + os.environ.get("PATH", "")
STARTED = time.monotonic()


class StepFailedError(RuntimeError):
    """A named step failed; the message names the step and ends with the tail of its log."""


def log(component: str, message: str) -> None:
    elapsed = time.monotonic() - STARTED
    print(f"[{component} {elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)


def env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    merged = dict(os.environ)
    merged["PATH"] = TOOL_PATH
    merged.setdefault("DOCKER_BUILDKIT", "0")
    if extra:
        merged.update(extra)
    return merged


def run(
    component: str,
    step: str,
    argv: Sequence[str],
    *,
    logfile: Path,
    cwd: Path | None = None,
    extra_env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
) -> None:
    """Run one command of a named step, appending its output to logfile; fail naming the step."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with logfile.open("ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.run(
            list(argv),
            cwd=cwd,
            env=env(extra_env),
            stdout=out,
            stderr=subprocess.STDOUT,
            input=stdin,
            check=False,
        )
    if proc.returncode != 0:
        tail = logfile.read_text(errors="replace").splitlines()[-25:]
        raise StepFailedError(
            f"{component}: step '{step}' failed (exit {proc.returncode}) running "
            f"{argv[0]}; last lines of {logfile}:\n  " + "\n  ".join(tail)
        )


def output(argv: Sequence[str], *, check: bool = True, cwd: Path | None = None) -> str:
    proc = subprocess.run(list(argv), env=env(), capture_output=True, text=True, check=False, cwd=cwd)
    if check and proc.returncode != 0:
        raise StepFailedError(f"{' '.join(argv)} failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def digest(paths: Iterable[Path], *extra: str) -> str:
    """A short hash of files (recursively, by relative name and content) and extra strings."""
    h = hashlib.sha256()
    for root in paths:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:
            h.update(str(f.relative_to(REPO) if f.is_relative_to(REPO) else f).encode())
            h.update(f.read_bytes())
    for item in extra:
        h.update(item.encode())
    return h.hexdigest()[:16]


def ensure_packages(component: str, needed: Mapping[str, str]) -> None:
    """Install the Debian packages whose marker file (a command or header) is missing; root only."""
    missing = sorted({package for marker, package in needed.items() if not Path(marker).exists()})
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise StepFailedError(
            f"{component}: missing Debian packages {', '.join(missing)} (install them as root)"
        )
    log(component, f"installing Debian packages: {' '.join(missing)}")
    logfile = CACHE / "logs" / "apt.log"
    run(component, "apt-get update", ["apt-get", "update", "-qq"], logfile=logfile)
    run(
        component,
        f"apt-get install {' '.join(missing)}",
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        logfile=logfile,
        extra_env={"DEBIAN_FRONTEND": "noninteractive"},
    )


def command_line(
    doc: str | None, argv: list[str], commands: Mapping[str, Callable[[], object]], default: str
) -> int:
    """Run the named command (printing what it returns, if anything); usage on an unknown name; a failed
    step as one ERROR line naming it."""
    name = argv[1] if len(argv) > 1 else default
    if name not in commands or len(argv) > 2:
        print(doc, file=sys.stderr)
        return 2
    try:
        result = commands[name]()
    except StepFailedError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1
    if result is not None:
        print(result)
    return 0
