from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from virtfleet.core.conditions import Desired, find, merge

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def test_transition_time_moves_only_when_status_changes() -> None:
    first = merge(None, [Desired("Ready", "False", "Waiting", "not yet")], 1, T0)
    same = merge(first, [Desired("Ready", "False", "StillWaiting", "later")], 2, T1)
    flipped = merge(same, [Desired("Ready", "True", "Done")], 3, T1)
    assert first[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert same[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert same[0]["reason"] == "StillWaiting"
    assert same[0]["observedGeneration"] == 2
    assert flipped[0]["lastTransitionTime"] == "2026-01-01T00:05:00Z"


def test_other_condition_types_are_kept() -> None:
    current = [{"type": "Progressing", "status": "True", "reason": "X", "message": ""}]
    merged = merge(current, [Desired("Ready", "True", "Ok")], None, T0)
    assert [c["type"] for c in merged] == ["Progressing", "Ready"]
    assert find(merged, "Progressing") == current[0]
    assert find(merged, "Degraded") is None


statuses = st.sampled_from(["True", "False", "Unknown"])


@given(st.lists(st.tuples(st.sampled_from(["Ready", "Degraded", "Stalled"]), statuses), max_size=6))
def test_merge_is_idempotent(wanted: list[tuple[str, str]]) -> None:
    desired = [Desired(t, s, "Because") for t, s in wanted]  # type: ignore[arg-type]
    once = merge(None, desired, 4, T0)
    assert merge(once, desired, 4, T1) == once
