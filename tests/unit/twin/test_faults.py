"""Fleet-wide migration failures are chosen deterministically, at the configured rate."""

from __future__ import annotations

from typing import Any

from virtfleet.twin.clock import Clock
from virtfleet.twin.fleet import Fleet
from virtfleet.twin.runtime import Twin


def _twin(rate: float, seed: int = 0) -> Twin:
    fleet = Fleet.model_validate({"faults": {"migrationFailureRate": rate, "seed": seed}})
    return Twin(kube=None, fleet=fleet, clock=Clock())  # type: ignore[arg-type]  # no API calls here


def _vmim(uid: str) -> dict[str, Any]:
    return {"metadata": {"uid": uid, "name": uid, "namespace": "ns"}}


VMI: dict[str, Any] = {"metadata": {"name": "vm", "namespace": "ns", "annotations": {}}}


def test_failure_rate_is_met_and_repeatable() -> None:
    twin = _twin(0.2)
    chosen = [twin._injected_failure(_vmim(f"uid-{i}"), VMI) for i in range(2000)]
    failures = sum(phase == "Running" for phase in chosen)
    assert 320 <= failures <= 480  # 20 % of 2000, within about four standard deviations
    assert chosen == [twin._injected_failure(_vmim(f"uid-{i}"), VMI) for i in range(2000)]
    assert chosen != [_twin(0.2, seed=1)._injected_failure(_vmim(f"uid-{i}"), VMI) for i in range(2000)]


def test_annotation_fails_only_the_first_attempts() -> None:
    twin = _twin(0.0)
    vmi = {"metadata": {"name": "vm", "namespace": "ns",
                        "annotations": {"twin.virtfleet.io/fail-migration-at": "TargetReady",
                                        "twin.virtfleet.io/fail-migrations": "1"}}}  # fmt: skip
    assert twin._injected_failure(_vmim("a"), vmi) == "TargetReady"
    twin._failed_attempts["ns/vm"] = 1
    assert twin._injected_failure(_vmim("b"), vmi) == ""
