"""The pure pool planner: scaling, scale-in policies, rollouts, halts, and conditions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from virtfleet.api.pool import UpdateStrategy
from virtfleet.core.pools import (
    Member,
    PoolFacts,
    PoolSummary,
    desired_conditions,
    free_ordinals,
    named,
    plan,
    resolve,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
OLD, NEW, HASH = "aaaaaaaaaa", "bbbbbbbbbb", "pppppppppp"


def member(ordinal: int, revision: str = NEW, ready: bool = True, age: float = 600, **kw: object) -> Member:
    return Member(f"p-{ordinal}", ordinal, revision, HASH, ready, NOW - timedelta(seconds=age), **kw)  # type: ignore[arg-type]


def facts(members: list[Member], replicas: int, **kw: object) -> PoolFacts:
    values: dict[str, object] = {
        "replicas": replicas,
        "paused": False,
        "strategy": UpdateStrategy(),
        "scale_in_policy": "HighestOrdinal",
        "update_revision": NEW,
        "pool_hash": HASH,
        "members": members,
        "now": NOW,
    }
    values.update(kw)
    return PoolFacts(**values)  # type: ignore[arg-type]


def test_scale_out_fills_the_lowest_free_ordinals() -> None:
    result = plan(facts([member(0), member(2)], replicas=5))
    assert result.create == [1, 3, 4]
    assert free_ordinals([member(0), member(1, deleting=True)], 2) == [2, 3]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("HighestOrdinal", {"p-3", "p-2"}), ("Oldest", {"p-0", "p-1"}), ("Newest", {"p-3", "p-2"})],
)
def test_scale_in_policies(policy: str, expected: set[str]) -> None:
    members = [member(i, age=1000 - i * 100) for i in range(4)]
    result = plan(facts(members, replicas=2, scale_in_policy=policy))
    assert {m.name for m in result.delete} == expected


def test_scale_in_by_most_oversubscribed_node() -> None:
    members = [member(0, node="a"), member(1, node="b"), member(2, node="a")]
    result = plan(
        facts(members, replicas=2, scale_in_policy="MostOversubscribedNode", node_ratios={"a": 1.0, "b": 6.0})
    )
    assert [m.name for m in result.delete] == ["p-1"]


def test_not_ready_vms_go_first_on_scale_in() -> None:
    result = plan(facts([member(0), member(1, ready=False), member(2)], replicas=2))
    assert [m.name for m in result.delete] == ["p-1"]


def test_rolling_update_surges_first_then_replaces() -> None:
    members = [member(0, OLD), member(1, OLD), member(2, OLD)]
    first = plan(facts(members, replicas=3, strategy=UpdateStrategy(maxSurge="1", maxUnavailable="0")))
    assert first.create == [3] and first.delete == [] and first.rolling
    # The surge VM is up: one old VM may go.
    members.append(member(3, NEW, age=5))
    second = plan(facts(members, replicas=3, strategy=UpdateStrategy(maxSurge="1", maxUnavailable="0")))
    assert [m.name for m in second.delete] == ["p-2"] and second.create == []


def test_a_starting_surge_vm_protects_the_old_ones() -> None:
    members = [member(0, OLD), member(1, OLD), member(2, NEW, ready=False, age=5)]
    result = plan(facts(members, replicas=2, strategy=UpdateStrategy(maxSurge="1", maxUnavailable="0")))
    assert result.delete == [] and result.create == [] and result.halted is None


def test_a_late_new_vm_halts_the_rollout() -> None:
    members = [member(0, OLD), member(1, OLD), member(2, NEW, ready=False, age=700)]
    result = plan(facts(members, replicas=2, strategy=UpdateStrategy(readyTimeoutSeconds=600)))
    assert result.halted is not None and result.halted.name == "p-2"
    assert result.delete == []
    conditions = {c.type: c for c in desired_conditions(facts(members, 2), result, PoolSummary(0, ""))}
    assert conditions["Progressing"].reason == "ProgressDeadlineExceeded"
    assert conditions["Stalled"].status == "True"


def test_max_unavailable_without_surge_replaces_in_place() -> None:
    members = [member(i, OLD) for i in range(4)]
    result = plan(facts(members, replicas=4, strategy=UpdateStrategy(maxSurge="0", maxUnavailable="50%")))
    assert len(result.delete) == 2 and result.create == []


def test_hot_pluggable_changes_update_in_place() -> None:
    members = [member(0, OLD, hotplug_ok=True), member(1, OLD, hotplug_ok=True)]
    result = plan(facts(members, replicas=2))
    assert [m.name for m in result.live_update] == ["p-0", "p-1"]
    assert not result.rolling and not result.delete and not result.create


def test_on_delete_leaves_outdated_vms_alone() -> None:
    members = [member(0, OLD), member(1, OLD)]
    result = plan(facts(members, replicas=3, strategy=UpdateStrategy(type="OnDelete")))
    assert result.create == [2] and not result.delete and not result.live_update


def test_paused_does_nothing() -> None:
    assert not plan(facts([member(0, OLD)], replicas=5, paused=True)).changes


def test_converged_pool_plans_nothing_and_reports_ready() -> None:
    members = [member(0), member(1)]
    result = plan(facts(members, replicas=2))
    assert not result.changes
    conditions = {c.type: c for c in desired_conditions(facts(members, 2), result, PoolSummary(0, ""))}
    assert conditions["Ready"].status == "True" and conditions["Progressing"].reason == "RolloutComplete"
    assert conditions["Degraded"].status == "False" and conditions["CapacityExhausted"].status == "False"


@pytest.mark.parametrize(("value", "up", "down"), [("25%", 3, 2), ("0", 0, 0), ("3", 3, 3), ("100%", 10, 10)])
def test_resolve_budgets(value: str, up: int, down: int) -> None:
    assert resolve(value, 10, round_up=True) == up
    assert resolve(value, 10, round_up=False) == down


@given(
    st.integers(0, 12),
    st.lists(st.tuples(st.sampled_from([OLD, NEW]), st.booleans()), max_size=12),
    st.sampled_from(["0", "1", "2", "25%"]),
    st.sampled_from(["0", "1", "50%"]),
)
def test_rollout_never_breaks_its_budgets(
    replicas: int, shape: list[tuple[str, bool]], surge: str, unavailable: str
) -> None:
    if surge == "0" and unavailable == "0":
        unavailable = "1"
    strategy = UpdateStrategy(maxSurge=surge, maxUnavailable=unavailable)
    members = [member(i, rev, ready) for i, (rev, ready) in enumerate(shape)]
    result = plan(facts(members, replicas, strategy=strategy))
    after = len(members) + len(result.create) - len(result.delete)
    max_surge = resolve(surge, replicas, round_up=True)
    assert after <= max(len(members), replicas + max_surge)
    deleted_ready = sum(m.ready for m in result.delete)
    ready = sum(m.ready for m in members)
    floor = replicas - max(resolve(unavailable, replicas, round_up=False), 0 if max_surge else 1)
    # Ready VMs are only taken down while enough stay ready (or when they exceed the surge allowance).
    if len(members) <= replicas + max_surge:
        assert ready - deleted_ready >= min(ready, floor)
    assert len({m.name for m in result.delete}) == len(result.delete)


def test_one_event_names_a_few_vms_and_counts_the_rest() -> None:
    assert named("created", ["web-0"]) == "created VirtualMachine web-0"
    assert named("deleted", ["web-3", "web-4"]) == "deleted 2 VirtualMachines: web-3, web-4"
    many = [f"web-{i}" for i in range(500)]
    assert named("created", many) == "created 500 VirtualMachines: web-0, web-1, web-2 and 497 more"
