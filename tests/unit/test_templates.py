"""VMTemplate models, validation and the status verdict."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from virtfleet.api import reasons
from virtfleet.api.vmtemplate import VMTemplateSpec
from virtfleet.core.templates import evaluate_template
from virtfleet.core.validation import validate_template

NOW = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
def example(repo: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((repo / "examples/01-template/vmtemplate.yaml").read_text())
    return document


def test_example_is_valid(example: dict[str, Any]) -> None:
    spec, problems = validate_template(example["spec"])
    assert problems == []
    assert spec is not None
    assert spec.cpu.vcpus == 2
    assert spec.cpu.max_sockets == 4


def test_wire_names_round_trip(example: dict[str, Any]) -> None:
    spec = VMTemplateSpec.model_validate(example["spec"])
    dumped = spec.model_dump(by_alias=True, exclude_none=True, exclude_defaults=True)
    assert dumped["cpu"]["maxSockets"] == 4
    assert dumped["cloudInit"]["userData"].startswith("#cloud-config")
    assert VMTemplateSpec.model_validate(dumped) == spec


def _problems(spec: dict[str, Any]) -> dict[str, str]:
    _, problems = validate_template(spec)
    return {p.field: p.message for p in problems}


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (lambda s: s["memory"].update(guest="1500Mi", hugepages="1Gi"), "spec.memory.guest", "hugepages"),
        (lambda s: s["memory"].update(maxGuest="2Gi"), "spec.memory.maxGuest", "less than"),
        (lambda s: s["cpu"].update(sockets=0), "spec.cpu.sockets", "greater than or equal"),
        (lambda s: s["cpu"].update(policy="pinned"), "spec.cpu.policy", "shared"),
        (lambda s: s["disks"][0].update(sise="1Gi"), "spec.disks[0].sise", "Extra inputs"),
        (lambda s: s["disks"][0].update(source={"blank": True}), "spec.disks[0].size", "needs a size"),
        (lambda s: s["memory"].update(guest="lots"), "spec.memory.guest", "pattern"),
        (lambda s: s.update(disks=[]), "spec.disks", "at least 1"),
        (
            lambda s: s["disks"].append(
                {"name": "data", "source": {"blank": True}, "size": "1Gi", "bootOrder": 1}
            ),
            "spec.disks[1].bootOrder",
            "already used",
        ),
        (
            lambda s: s.update(interfaces=[{"name": "a", "type": "nat"}, {"name": "b", "type": "nat"}]),
            "spec.interfaces",
            "at most one interface may be nat, not a, b",
        ),
        (lambda s: s["memory"].update(guest="0"), "spec.memory.guest", "greater than 0"),
        (  # found by fuzzing: the rendered VM had two disks named cloudinit
            lambda s: (
                s.update(cloudInit={"userData": "#cloud-config"}),
                s["disks"].append({"name": "cloudinit", "source": {"blank": True}, "size": "1Gi"}),
            ),
            "spec.disks[1].name",
            "taken by the cloud-init disk",
        ),
        (lambda s: s.update(labels={"tëam": "web"}), "spec.labels.tëam.[key]", "pattern"),
        (lambda s: s.update(labels={"team": "x" * 64}), "spec.labels.team", "at most 63"),
    ],
)
def test_problems_name_the_field(example: dict[str, Any], change: Any, field: str, words: str) -> None:
    spec = copy.deepcopy(example["spec"])
    change(spec)
    problems = _problems(spec)
    assert field in problems, problems
    assert words in problems[field]


def test_verdict_for_a_valid_template_then_no_op(example: dict[str, Any]) -> None:
    first = evaluate_template(example["spec"], {}, 1, NOW)
    assert first.valid
    ready = next(c for c in first.status_patch["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert ready["reason"] == reasons.TEMPLATE_VALID
    assert first.status_patch["observedGeneration"] == 1
    assert first.status_patch["vcpus"] == 2
    # The same facts later: nothing to write.
    again = evaluate_template(example["spec"], first.status_patch, 1, NOW + timedelta(hours=1))
    assert again.status_patch == {}


def test_verdict_for_an_invalid_template(example: dict[str, Any]) -> None:
    spec = copy.deepcopy(example["spec"])
    spec["memory"].update(guest="1500Mi", hugepages="1Gi")
    verdict = evaluate_template(spec, None, 3, NOW)
    conditions = {c["type"]: c for c in verdict.status_patch["conditions"]}
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Ready"]["reason"] == reasons.INVALID_SPEC
    assert "spec.memory.guest" in conditions["Ready"]["message"]
    assert conditions["Stalled"]["status"] == "True"
    assert "vcpus" not in verdict.status_patch  # nothing stored, nothing to remove


def test_new_generation_updates_observed_generation_only(example: dict[str, Any]) -> None:
    first = evaluate_template(example["spec"], {}, 1, NOW)
    second = evaluate_template(example["spec"], first.status_patch, 2, NOW)
    assert second.status_patch["observedGeneration"] == 2
    for before, after in zip(
        first.status_patch["conditions"], second.status_patch["conditions"], strict=True
    ):
        assert after["lastTransitionTime"] == before["lastTransitionTime"]
        assert after["observedGeneration"] == 2
