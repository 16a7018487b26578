"""The pure plan executor: what starts when, retries and the failure budget, cancel, cold moves, and a
simulated world in which limits hold and every VM ends exactly once, whatever happens."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from virtfleet.core import plan_executor as ex
from virtfleet.core.plan_executor import (
    AbortMigration,
    Attempt,
    ColdMove,
    Controls,
    Entry,
    FinishColdMove,
    StartAfterColdMove,
    StartMigration,
    StopForColdMove,
    World,
    migration_name,
    step,
)

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def entries(count: int, source: str = "n0", targets: tuple[str, ...] = ("n1", "n2"), pool: str = "p",
            method: str = "live") -> list[Entry]:  # fmt: skip
    return [
        Entry(f"vm-{i}", pool, source, targets[i % len(targets)], method, 0, 10.0, 0.1)  # type: ignore[arg-type]
        for i in range(count)
    ]


def on_source(plan: list[Entry]) -> dict[str, str | None]:
    return {e.name: e.source for e in plan}


def attempt(vm: str, number: int, phase: str, at: datetime = T0, failure: str = "") -> Attempt:
    done = phase in ("Succeeded", "Failed")
    if phase == "Failed" and not failure:
        failure = "Live migration is not completed after 1 seconds and has been aborted"  # KubeVirt's words
    return Attempt(
        vm, number, migration_name("plan", vm, number), phase, at, at, at if done else None, failure
    )


def starts(result: ex.Step) -> list[StartMigration]:
    return [a for a in result.actions if isinstance(a, StartMigration)]


def test_starts_in_order_up_to_max_parallel_and_per_node_limits() -> None:
    plan = entries(10, targets=("n1", "n2", "n3"))
    controls = Controls(max_parallel=5, max_outbound_per_node=4, max_inbound_per_node=1, kubevirt_parallel=10,
                        kubevirt_outbound_per_node=10)  # fmt: skip
    result = step("plan", plan, World(T0, vmi_nodes=on_source(plan)), controls)
    # One per target (inbound 1): vm-0 -> n1, vm-1 -> n2, vm-2 -> n3; the rest wait for room.
    assert [(s.vm, s.target, s.attempt) for s in starts(result)] == [("vm-0", "n1", 1), ("vm-1", "n2", 1),
                                                                     ("vm-2", "n3", 1)]  # fmt: skip
    assert result.phase == "Running" and result.in_flight == 3


def test_kubevirt_limits_and_other_migrations_count_too() -> None:
    plan = entries(10, targets=("n1", "n2", "n3", "n4", "n5"))
    controls = Controls(max_parallel=10, max_outbound_per_node=10, max_inbound_per_node=10)
    # KubeVirt: 2 per source node by default, so one drained node moves two at a time.
    result = step("plan", plan, World(T0, vmi_nodes=on_source(plan)), controls)
    assert len(starts(result)) == 2
    # Two migrations of someone else already run from n0: nothing more may start there.
    world = World(T0, vmi_nodes=on_source(plan), other_in_flight=2, other_outbound={"n0": 2})
    assert starts(step("plan", plan, world, controls)) == []
    # ...and cluster-wide, KubeVirt's 5 include them.
    controls = replace(controls, kubevirt_outbound_per_node=10)
    world = World(T0, vmi_nodes=on_source(plan), other_in_flight=4)
    assert len(starts(step("plan", plan, world, controls))) == 1


def test_pool_budget_limits_disruption_per_pool() -> None:
    plan = entries(3, pool="a") + [replace(e, name=f"b-{i}", pool="b") for i, e in enumerate(entries(3))]
    controls = Controls(max_parallel=10, max_outbound_per_node=10, max_inbound_per_node=10, pool_budget=1,
                        kubevirt_parallel=10, kubevirt_outbound_per_node=10)  # fmt: skip
    result = step("plan", plan, World(T0, vmi_nodes=on_source(plan)), controls)
    assert [s.vm for s in starts(result)] == ["vm-0", "b-0"]


def test_in_flight_attempts_are_not_started_twice_and_success_is_seen() -> None:
    plan = entries(3)
    world = World(
        T0,
        attempts={"vm-0": [attempt("vm-0", 1, "Running")], "vm-1": [attempt("vm-1", 1, "Succeeded")]},
        vmi_nodes={"vm-0": "n0", "vm-1": "n2", "vm-2": "n0"},
    )
    result = step("plan", plan, world, Controls(max_parallel=2))
    assert [s.vm for s in starts(result)] == ["vm-2"]
    assert [v.phase for v in result.vms] == ["Migrating", "Succeeded", "Migrating"]


def test_a_start_not_yet_in_the_watch_counts_as_in_flight() -> None:
    plan = entries(2)
    world = World(T0, vmi_nodes=on_source(plan), expected={"vm-0": 1})
    result = step("plan", plan, world, Controls(max_parallel=1))
    assert starts(result) == [] and result.vms[0].phase == "Migrating"


def test_retry_after_backoff_with_the_next_attempt_number() -> None:
    plan = entries(1)
    failed = attempt("vm-0", 1, "Failed", T0, "target pod unschedulable")
    controls = Controls(retries=2, backoff_s=30)
    waiting = step("plan", plan, World(T0 + timedelta(seconds=10), {"vm-0": [failed]}, vmi_nodes={"vm-0": "n0"}),
                   controls)  # fmt: skip
    assert starts(waiting) == [] and waiting.vms[0].phase == "Waiting"
    assert waiting.wake_at == T0 + timedelta(seconds=30)
    assert waiting.vms[0].last_error == "target pod unschedulable"
    due = step("plan", plan, World(T0 + timedelta(seconds=31), {"vm-0": [failed]}, vmi_nodes={"vm-0": "n0"}),
               controls)  # fmt: skip
    assert [(s.attempt, s.name) for s in starts(due)] == [(2, "plan-vm-0-2")]
    # The backoff doubles: after a second failure at T0+40 the third attempt waits 60 s.
    second = attempt("vm-0", 2, "Failed", T0 + timedelta(seconds=40))
    later = step("plan", plan, World(T0 + timedelta(seconds=90), {"vm-0": [failed, second]},
                                     vmi_nodes={"vm-0": "n0"}), controls)  # fmt: skip
    assert later.vms[0].phase == "Waiting" and later.wake_at == T0 + timedelta(seconds=100)


def test_failure_budget_pause_continue_and_abort() -> None:
    plan = entries(4)
    failures = {f"vm-{i}": [attempt(f"vm-{i}", 1, "Failed")] for i in range(2)}
    world = World(T0, {**failures, "vm-2": [attempt("vm-2", 1, "Running")]}, vmi_nodes=on_source(plan))
    base = Controls(retries=0, max_failures=1, max_parallel=5)
    paused = step("plan", plan, world, replace(base, on_failure="pause"))
    assert paused.phase == "Paused" and paused.reason == "FailureBudgetExceeded" and starts(paused) == []
    going = step("plan", plan, world, replace(base, on_failure="continue"))
    assert going.phase == "Running" and [s.vm for s in starts(going)] == ["vm-3"]
    aborting = step("plan", plan, world, replace(base, on_failure="abort"))
    assert [a for a in aborting.actions if isinstance(a, AbortMigration)] == [
        AbortMigration("vm-2", "plan-vm-2-1")
    ]
    assert aborting.phase == "Running" and aborting.reason == "Stopping"  # until vm-2's migration is gone
    assert [v.phase for v in aborting.vms] == ["Failed", "Failed", "Migrating", "Cancelled"]
    gone = replace(world, attempts=failures)
    final = step("plan", plan, gone, replace(base, on_failure="abort"))
    assert final.phase == "Failed" and final.reason == "FailureBudgetExceeded"


def test_cancel_deletes_in_flight_migrations_then_ends_cancelled() -> None:
    plan = entries(3)
    world = World(T0, {"vm-0": [attempt("vm-0", 1, "Succeeded")], "vm-1": [attempt("vm-1", 1, "Running")]},
                  vmi_nodes={"vm-0": "n1", "vm-1": "n0", "vm-2": "n0"})  # fmt: skip
    controls = Controls(cancel=True)
    result = step("plan", plan, world, controls)
    assert result.actions == [AbortMigration("vm-1", "plan-vm-1-1")]
    assert result.phase == "Running"
    after = step("plan", plan, replace(world, attempts={"vm-0": world.attempts["vm-0"]}), controls)
    assert after.phase == "Cancelled" and [v.phase for v in after.vms] == [
        "Succeeded",
        "Cancelled",
        "Cancelled",
    ]
    assert after.actions == []


def test_paused_plans_start_nothing_and_waves_are_barriers() -> None:
    plan = entries(4)
    assert starts(step("plan", plan, World(T0, vmi_nodes=on_source(plan)), Controls(paused=True))) == []
    waves = [replace(e, wave=i // 2) for i, e in enumerate(plan)]
    controls = Controls(explicit_waves=True, max_parallel=10, kubevirt_outbound_per_node=10, max_outbound_per_node=10,
                        max_inbound_per_node=10)  # fmt: skip
    first = step("plan", waves, World(T0, vmi_nodes=on_source(plan)), controls)
    assert [s.vm for s in starts(first)] == ["vm-0", "vm-1"]
    world = World(T0, {"vm-0": [attempt("vm-0", 1, "Succeeded")], "vm-1": [attempt("vm-1", 1, "Running")]},
                  vmi_nodes=on_source(plan))  # fmt: skip
    assert starts(step("plan", waves, world, controls)) == []  # wave 0 is not finished


def test_vms_that_vanish_or_move_elsewhere_are_skipped_not_migrated() -> None:
    plan = entries(2)
    result = step("plan", plan, World(T0, vmi_nodes={"vm-1": "n7"}), Controls())
    assert [v.phase for v in result.vms] == ["Skipped", "Skipped"] and result.actions == []
    assert result.phase == "Succeeded"


def cold(vm: str, stage: str, halted: bool, at: datetime = T0, attempt_: int = 1, **kw: object) -> ColdMove:
    return ColdMove(vm, attempt_, "n1", "Always", at, stage, halted=halted, **kw)  # type: ignore[arg-type]


def test_cold_move_stages() -> None:
    plan = entries(1, targets=("n1",), method="cold")
    controls = Controls()
    first = step("plan", plan, World(T0, vmi_nodes={"vm-0": "n0"}), controls)
    assert first.actions == [StopForColdMove("vm-0", 1, "n1")]
    # Stopping: the old VMI still terminates, then is gone: start it (pinned to n1).
    assert step("plan", plan, World(T0, cold={"vm-0": cold("vm-0", "stopping", True)},
                                    vmi_nodes={"vm-0": "n0"}), controls).actions == []  # fmt: skip
    gone = step("plan", plan, World(T0, cold={"vm-0": cold("vm-0", "stopping", True)}), controls)
    assert gone.actions == [StartAfterColdMove("vm-0")] and gone.vms[0].phase == "Stopping"
    # Scheduled on n1 but still booting: not moved until it runs there.
    booting = step("plan", plan, World(T0, cold={"vm-0": cold("vm-0", "starting", False)},
                                       vmi_nodes={"vm-0": "n1"}, booting=frozenset({"vm-0"})), controls)  # fmt: skip
    assert booting.actions == [] and booting.vms[0].phase == "Starting"
    running = step("plan", plan, World(T0, cold={"vm-0": cold("vm-0", "starting", False)},
                                       vmi_nodes={"vm-0": "n1"}), controls)  # fmt: skip
    assert running.actions == [FinishColdMove("vm-0")]
    done = cold("vm-0", "done", False, finished=T0 + timedelta(seconds=42))
    result = step("plan", plan, World(T0, cold={"vm-0": done}, vmi_nodes={"vm-0": "n1"}), controls)
    assert (
        result.vms[0].phase == "Succeeded" and result.vms[0].downtime_s == 42 and result.phase == "Succeeded"
    )


def test_a_cancelled_cold_move_starts_the_vm_again() -> None:
    plan = entries(1, targets=("n1",), method="cold")
    world = World(T0, cold={"vm-0": cold("vm-0", "stopping", True)})
    result = step("plan", plan, world, Controls(cancel=True))
    assert result.actions == [StartAfterColdMove("vm-0", abandon="the plan stopped (cancelled or aborted)")]
    assert result.phase == "Running"  # not over until the VM runs again
    started = cold("vm-0", "starting", False, abandon="cancelled")
    again = step(
        "plan", plan, World(T0, cold={"vm-0": started}, vmi_nodes={"vm-0": "n0"}), Controls(cancel=True)
    )
    assert again.actions == [FinishColdMove("vm-0", failure="cancelled")]


def test_cold_moves_time_out_and_count_as_a_failed_attempt() -> None:
    plan = entries(1, targets=("n1",), method="cold")
    late = T0 + ex.COLD_TIMEOUT + timedelta(seconds=1)
    stuck = World(late, cold={"vm-0": cold("vm-0", "starting", False)}, vmi_nodes={"vm-0": None})
    assert step("plan", plan, stuck, Controls()).actions == []  # not placed yet: wait for it to be
    wrong = World(late, cold={"vm-0": cold("vm-0", "starting", False)}, vmi_nodes={"vm-0": "n0"})
    assert step("plan", plan, wrong, Controls()).actions[0] == FinishColdMove(
        "vm-0", failure="not running on n1 within 600s"
    )
    failed = cold("vm-0", "failed", False, finished=late, failure="x")
    result = step(
        "plan", plan, World(late, cold={"vm-0": failed}, vmi_nodes={"vm-0": "n0"}), Controls(retries=0)
    )
    assert result.vms[0].phase == "Failed" and result.phase == "Succeeded"  # the run ended; the VM failed


def test_long_names_are_shortened_stably() -> None:
    name = migration_name("p" * 200, "v" * 63, 3)
    assert len(name) <= 253 and name.endswith("-3") and name == migration_name("p" * 200, "v" * 63, 3)
    assert name != migration_name("p" * 200, "w" * 63, 3)


# -- a simulated world: run the executor to the end under random durations and failures ---------------


@settings(max_examples=150, deadline=None)
@given(
    count=st.integers(1, 25),
    sources=st.integers(1, 3),
    targets=st.integers(1, 4),
    max_parallel=st.integers(1, 6),
    outbound=st.integers(1, 3),
    inbound=st.integers(1, 3),
    retries=st.integers(0, 2),
    max_failures=st.integers(0, 5),
    on_failure=st.sampled_from(["continue", "pause", "abort"]),
    fail_rate=st.sampled_from([0.0, 0.2, 0.5]),
    seed=st.integers(0, 10**6),
)
def test_simulated_runs_respect_every_limit_and_end_each_vm_once(
    count: int, sources: int, targets: int, max_parallel: int, outbound: int, inbound: int, retries: int,
    max_failures: int, on_failure: str, fail_rate: float, seed: int,
) -> None:  # fmt: skip
    import random

    rng = random.Random(seed)
    plan = [
        Entry(
            f"vm-{i}",
            f"p{i % 2}",
            f"s{i % sources}",
            f"t{rng.randrange(targets)}",
            "live",
            0,
            rng.uniform(1, 20),
            0.1,
        )
        for i in range(count)
    ]
    controls = Controls(max_parallel=max_parallel, max_outbound_per_node=outbound, max_inbound_per_node=inbound,
                        retries=retries, backoff_s=5, max_failures=max_failures, on_failure=on_failure,  # type: ignore[arg-type]
                        kubevirt_parallel=5, kubevirt_outbound_per_node=2)  # fmt: skip
    node = {e.name: e.source for e in plan}
    attempts: dict[str, list[Attempt]] = defaultdict(list)
    ends: dict[str, tuple[datetime, bool]] = {}
    now = T0
    created: set[str] = set()
    for _ in range(2000):
        result = step("plan", plan, World(now, dict(attempts), vmi_nodes=dict(node)), controls)
        running = [a for vm in attempts.values() for a in vm if a.in_flight]
        by_entry = {e.name: e for e in plan}
        assert len(running) <= min(max_parallel, 5)
        per_source: dict[str, int] = defaultdict(int)
        per_target: dict[str, int] = defaultdict(int)
        for a in running:
            per_source[by_entry[a.vm].source] += 1
            per_target[by_entry[a.vm].target] += 1
        assert all(v <= min(outbound, 2) for v in per_source.values())
        assert all(v <= inbound for v in per_target.values())
        for action in result.actions:
            if isinstance(action, StartMigration):
                assert action.name not in created  # never a second migration of the same attempt
                assert not any(a.in_flight for a in attempts[action.vm])  # never two at once for a VM
                created.add(action.name)
                attempts[action.vm].append(
                    Attempt(action.vm, action.attempt, action.name, "Running", now, now)
                )
                duration = timedelta(seconds=by_entry[action.vm].estimated_duration_s)
                ends[action.name] = (now + duration, rng.random() >= fail_rate)
            elif isinstance(action, AbortMigration):
                attempts[action.vm] = [a for a in attempts[action.vm] if a.name != action.name]
                ends.pop(action.name, None)  # deleting the migration aborts it
        if result.phase in ex.PLAN_TERMINAL or (result.phase == "Paused" and not result.in_flight):
            break
        pending = [(at, name) for name, (at, _) in ends.items()]
        due = [result.wake_at] if result.wake_at else []
        if not pending and not due:
            break
        now = min([at for at, _ in pending] + due)
        for name, (at, ok) in list(ends.items()):
            if at <= now:
                del ends[name]
                vm = next(vm for vm, tries in attempts.items() if any(a.name == name for a in tries))
                attempts[vm] = [
                    replace(
                        a, phase="Succeeded" if ok else "Failed", finished=at, failure="" if ok else "aborted"
                    )
                    if a.name == name
                    else a
                    for a in attempts[vm]
                ]
                if ok:
                    node[vm] = by_entry[vm].target
    final = step("plan", plan, World(now, dict(attempts), vmi_nodes=dict(node)), controls)
    if final.phase != "Paused":
        assert final.phase in ex.PLAN_TERMINAL
        assert all(v.phase in ex.TERMINAL for v in final.vms)
    for vm in final.vms:
        assert vm.attempts <= retries + 1
        if vm.phase == "Succeeded":
            assert node[vm.entry.name] == vm.entry.target
        else:
            assert node[vm.entry.name] == vm.entry.source  # on exactly one node: where it was


def test_a_failure_without_its_reason_yet_waits_briefly_for_it() -> None:
    # Real KubeVirt v1.7 marked a VMIM Failed before copying migrationState.failureReason to it.
    plan = entries(1)
    controls = Controls(retries=0, max_failures=0, on_failure="abort")
    bare = replace(attempt("vm-0", 1, "Failed", T0), failure="")
    world = World(T0 + timedelta(seconds=1), {"vm-0": [bare]}, vmi_nodes=on_source(plan))
    early = step("plan", plan, world, controls)
    assert early.vms[0].phase == "Migrating" and early.phase == "Running"
    assert early.wake_at == T0 + ex.FAILURE_REASON_GRACE
    reason = replace(bare, failure="Live migration stuck for 150 seconds and has been aborted")
    told = step("plan", plan, replace(world, attempts={"vm-0": [reason]}), controls)
    assert told.vms[0].phase == "Failed" and told.vms[0].last_error == reason.failure
    late = step("plan", plan, replace(world, now=T0 + ex.FAILURE_REASON_GRACE), controls)
    assert late.vms[0].phase == "Failed" and late.vms[0].last_error == "the migration failed"


def test_a_refused_start_waits_its_backoff_then_takes_the_next_attempt_number() -> None:
    plan = entries(1)
    controls = Controls(retries=2, backoff_s=10)
    refusal = ex.Refusal(attempt=1, count=1, error="refused by the API (400) Bad Request: no", at=T0)
    world = World(T0 + timedelta(seconds=3), vmi_nodes=on_source(plan), refused={"vm-0": refusal})
    waiting = step("plan", plan, world, controls)
    assert waiting.vms[0].phase == "Waiting" and waiting.vms[0].last_error == refusal.error
    assert waiting.wake_at == T0 + timedelta(seconds=10) and not waiting.actions
    due = step("plan", plan, replace(world, now=T0 + timedelta(seconds=10)), controls)
    assert [(s.attempt, s.name) for s in starts(due)] == [(2, migration_name("plan", "vm-0", 2))]
    # A real failure after the refusal: both count, the latest one's words show.
    failed = attempt("vm-0", 2, "Failed", T0 + timedelta(seconds=20))
    world = replace(world, now=T0 + timedelta(seconds=21), attempts={"vm-0": [failed]})
    after = step("plan", plan, world, controls)
    assert after.vms[0].phase == "Waiting" and after.vms[0].last_error == failed.failure
    assert after.vms[0].retry_at == failed.finished + timedelta(seconds=20)  # second failure: 2x backoff
    spent = step("plan", plan, replace(world, refused={"vm-0": replace(refusal, count=2)}), controls)
    assert spent.vms[0].phase == "Failed"  # 3 failures > 2 retries


def test_a_refused_cold_stop_counts_as_a_failed_attempt() -> None:
    plan = entries(1, method="cold")
    controls = Controls(retries=0, max_failures=0, on_failure="abort")
    refusal = ex.Refusal(1, 1, "cold moves need runStrategy Always or RerunOnFailure, not Manual", T0)
    world = World(T0, vmi_nodes=on_source(plan), refused={"vm-0": refusal})
    result = step("plan", plan, world, controls)
    assert result.vms[0].phase == "Failed" and result.vms[0].last_error == refusal.error
    assert result.phase == "Failed" and not result.actions
