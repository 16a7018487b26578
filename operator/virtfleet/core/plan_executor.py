"""Run a frozen migration plan (pure, no I/O): from what the API shows, decide which migrations to start
or abort, and what the plan's status says.

The plan is frozen when it starts (status.vms: a source, a target and a method per VM). Each step reads
the observed world — the plan's VirtualMachineInstanceMigrations (one per attempt, named
`<plan>-<vm>-<attempt>`), cold moves in progress (a VM annotation), where every VMI runs, and KubeVirt's
migrations outside the plan — and returns the actions and the per-VM pipeline. Nothing is remembered
between steps except what the API holds, so an operator restarted mid-plan derives the same state and
never starts a second migration for a VM: the next attempt's name is taken from the migrations that
exist, and creating an existing name is refused by the API server.
"""

from __future__ import annotations

import hashlib
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal

from virtfleet.api import reasons
from virtfleet.api.migrationplan import ColdStage, PlanPhase, VMPhase

TERMINAL = frozenset({VMPhase.SUCCEEDED, VMPhase.FAILED, VMPhase.CANCELLED, VMPhase.SKIPPED})
IN_FLIGHT = frozenset({VMPhase.MIGRATING, VMPhase.STOPPING, VMPhase.STARTING})
PLAN_TERMINAL = frozenset({PlanPhase.SUCCEEDED, PlanPhase.FAILED, PlanPhase.CANCELLED})

VMIM_DONE = frozenset({"Succeeded", "Failed"})
COLD_TIMEOUT = timedelta(minutes=10)  # a cold move whose VM is not running on the target by then fails
NAME_LIMIT = 253


def migration_name(plan: str, vm: str, attempt: int) -> str:
    """`<plan>-<vm>-<attempt>`, shortened with a digest when it would exceed an object name's limit."""
    name = f"{plan}-{vm}-{attempt}"
    if len(name) <= NAME_LIMIT:
        return name
    digest = hashlib.sha256(f"{plan}/{vm}".encode()).hexdigest()[:10]
    return f"{name[: NAME_LIMIT - len(digest) - len(str(attempt)) - 2]}-{digest}-{attempt}"


@dataclass(frozen=True)
class Entry:
    """One VM of the frozen plan."""

    name: str
    pool: str
    source: str
    target: str
    method: Literal["live", "cold"]
    wave: int
    estimated_duration_s: float
    estimated_downtime_s: float


@dataclass(frozen=True)
class Attempt:
    """One VirtualMachineInstanceMigration of the plan, as observed."""

    vm: str
    number: int
    name: str
    phase: str  # KubeVirt's phase; "" until KubeVirt has seen it
    created: datetime
    started: datetime | None = None  # when KubeVirt began working on it (left the Pending queue)
    finished: datetime | None = None
    failure: str = ""
    deleting: bool = False
    copying: datetime | None = None  # when memory began to move: the target pod was up

    @property
    def in_flight(self) -> bool:
        return self.phase not in VMIM_DONE


FAILURE_REASON_GRACE = timedelta(seconds=10)
SETUP_SAMPLES = 20  # the latest migrations that say how long a target takes to come up here


def observed_setup_s(attempts: Iterable[Attempt]) -> float | None:
    """Median target start-up (Scheduling until memory moves) of the latest succeeded migrations, or None
    before there are any: real clusters differ by an order of magnitude (image pulls, launcher start)."""
    setups: list[tuple[datetime, float]] = [
        (a.finished or a.copying, (a.copying - a.started).total_seconds())
        for a in attempts
        if a.phase == "Succeeded" and a.started is not None and a.copying is not None
    ]
    return _latest_median(setups)


def _latest_median(samples: list[tuple[datetime, float]]) -> float | None:
    """The median seconds of the SETUP_SAMPLES latest (when, seconds) samples; None without any."""
    if not samples:
        return None
    latest = sorted(samples, key=lambda pair: pair[0], reverse=True)[:SETUP_SAMPLES]
    return max(0.0, statistics.median(seconds for _, seconds in latest))


@dataclass(frozen=True)
class ColdMove:
    """A cold move as recorded on the VM (annotation), with what the step needs of the VM."""

    vm: str
    attempt: int
    target: str
    run_strategy: str  # to restore when starting the VM again
    started: datetime
    stage: ColdStage
    failure: str = ""
    finished: datetime | None = None
    halted: bool = True  # the VM's runStrategy is Halted right now
    abandon: str = ""  # set when the move was given up while the VM was stopped: why


def observed_cold_downtime_s(moves: Iterable[ColdMove]) -> float | None:
    """Median downtime (stop requested until running on the target) of the latest finished cold moves, or
    None before there are any: guest shutdown and boot, not memory size, decide it on a real cluster."""
    downs = [
        (move.finished, (move.finished - move.started).total_seconds())
        for move in moves
        if move.stage == ColdStage.DONE and move.finished is not None
    ]
    return _latest_median(downs)


@dataclass(frozen=True)
class Refusal:
    """The API refused to start a VM's attempt (KubeVirt's admission webhook, or the webhook down): no
    object records it, so the operator remembers it, and it counts as a failed attempt. A restarted operator
    has forgotten it: that VM gets its retries again."""

    attempt: int  # the highest attempt number refused; the next try takes the one after it
    count: int
    error: str
    at: datetime


@dataclass(frozen=True)
class Controls:
    """Limits and switches from the spec and the operator's settings."""

    max_parallel: int = 5
    max_outbound_per_node: int = 2
    max_inbound_per_node: int = 2
    pool_budget: int = 1_000_000
    kubevirt_parallel: int = 5  # KubeVirt's parallelMigrationsPerCluster
    kubevirt_outbound_per_node: int = 2  # KubeVirt's parallelOutboundMigrationsPerNode
    retries: int = 2
    backoff_s: float = 30.0
    max_failures: int = 5
    on_failure: Literal["continue", "pause", "abort"] = "pause"
    paused: bool = False
    cancel: bool = False
    explicit_waves: bool = False


@dataclass(frozen=True)
class World:
    """What the API shows now."""

    now: datetime
    attempts: Mapping[str, Sequence[Attempt]] = field(default_factory=dict)  # by VM, any order
    cold: Mapping[str, ColdMove] = field(default_factory=dict)  # by VM
    vmi_nodes: Mapping[str, str | None] = field(default_factory=dict)  # VM -> node; absent: no VMI
    # VMs whose VMI has a node but is not Running yet (Scheduled, booting): not moved yet.
    booting: frozenset[str] = frozenset()
    # Migrations outside this plan that KubeVirt counts against its limits.
    other_in_flight: int = 0
    other_outbound: Mapping[str, int] = field(default_factory=dict)
    # Starts this operator made that the watch has not shown yet: VM -> attempt number.
    expected: Mapping[str, int] = field(default_factory=dict)
    # When this operator first saw each failed migration (by name). Backoffs count from here, on the
    # operator's clock, not from KubeVirt's timestamps, which may come from another clock.
    failure_seen: Mapping[str, datetime] = field(default_factory=dict)
    # Starts the API refused, by VM (see Refusal).
    refused: Mapping[str, Refusal] = field(default_factory=dict)


@dataclass(frozen=True)
class StartMigration:
    vm: str
    attempt: int
    name: str
    target: str


@dataclass(frozen=True)
class AbortMigration:
    vm: str
    name: str


@dataclass(frozen=True)
class StopForColdMove:
    vm: str
    attempt: int
    target: str


@dataclass(frozen=True)
class StartAfterColdMove:
    vm: str
    abandon: str = ""  # non-empty: start it anywhere (unpinned), the move is given up


@dataclass(frozen=True)
class FinishColdMove:
    vm: str
    failure: str = ""  # non-empty: the attempt failed; restore the VM where it is


Action = StartMigration | AbortMigration | StopForColdMove | StartAfterColdMove | FinishColdMove


@dataclass(frozen=True)
class VMState:
    """One VM's line in status.vms."""

    entry: Entry
    phase: str
    attempts: int = 0
    node: str | None = None
    migration: str = ""
    started: datetime | None = None
    finished: datetime | None = None
    duration_s: float | None = None
    downtime_s: float | None = None
    last_error: str = ""
    retry_at: datetime | None = None
    recheck_at: datetime | None = None  # look again then, even if nothing changes (a failure's reason)


@dataclass
class Step:
    actions: list[Action] = field(default_factory=list)
    vms: list[VMState] = field(default_factory=list)
    phase: PlanPhase = PlanPhase.RUNNING
    reason: str = ""
    message: str = ""
    wake_at: datetime | None = None  # the earliest time something becomes due without an event

    def count(self, *phases: str) -> int:
        return sum(1 for vm in self.vms if vm.phase in phases)

    @property
    def finally_failed(self) -> int:
        return self.count(VMPhase.FAILED)

    @property
    def in_flight(self) -> int:
        return self.count(*IN_FLIGHT)


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def observe(entry: Entry, world: World, controls: Controls) -> VMState:
    """Where one VM is in its pipeline, from the migrations and the VMI alone."""
    attempts = sorted(world.attempts.get(entry.name, ()), key=lambda a: a.number)
    node = world.vmi_nodes.get(entry.name)
    has_vmi = entry.name in world.vmi_nodes
    expected = world.expected.get(entry.name, 0)
    if entry.method == "cold":
        return _observe_cold(entry, world, controls, node, has_vmi, expected)
    last = attempts[-1] if attempts else None
    number = max(last.number if last else 0, expected)
    base = VMState(entry, VMPhase.PLANNED, attempts=number, node=node)
    if (last is not None and last.phase == "Succeeded") or (node == entry.target and not attempts):
        started = last.started or last.created if last else None
        finished = last.finished if last else None
        return replace(
            base, phase=VMPhase.SUCCEEDED, started=started, finished=finished, duration_s=_seconds(started, finished),
            migration=last.name if last else "",
        )  # fmt: skip
    if expected > (last.number if last else 0) or (last is not None and last.in_flight):
        return replace(
            base, phase=VMPhase.MIGRATING, migration=last.name if last and last.in_flight else "",
            started=(last.started or last.created) if last and last.in_flight else None,
        )  # fmt: skip
    if not has_vmi:
        return replace(base, phase=VMPhase.SKIPPED, last_error="the VM has no running instance any more")
    if node is not None and node != entry.source and not attempts:
        return replace(base, phase=VMPhase.SKIPPED, last_error=f"moved to {node} outside the plan")
    refusal = world.refused.get(entry.name)
    if last is None:
        return base if refusal is None else _after_failures(base, 0, None, "", refusal, world, controls)
    failures = sum(1 for a in attempts if a.phase == "Failed")
    failed_at = world.failure_seen.get(last.name) or last.finished or last.created
    base = replace(base, migration=last.name, finished=last.finished)
    if not last.failure and world.now - failed_at < FAILURE_REASON_GRACE:
        # Real KubeVirt can mark a migration Failed a moment before it copies the reason over from the
        # VMI: a plan that ended at once would keep "the migration failed" instead of KubeVirt's words.
        return replace(
            base, phase=VMPhase.MIGRATING, finished=None, recheck_at=failed_at + FAILURE_REASON_GRACE
        )
    error = last.failure or "the migration failed"
    return _after_failures(base, failures, failed_at, error, refusal, world, controls)


def _after_failures(
    base: VMState,
    failures: int,
    failed_at: datetime | None,
    error: str,
    refusal: Refusal | None,
    world: World,
    controls: Controls,
) -> VMState:
    """A VM whose latest attempt failed (or was refused): failed for good once its retries are spent,
    otherwise waiting out its backoff, then planned again."""
    if refusal is not None:
        failures += refusal.count
        base = replace(base, attempts=max(base.attempts, refusal.attempt))
        if failed_at is None or refusal.at >= failed_at:
            failed_at, error = refusal.at, refusal.error
            base = replace(base, finished=refusal.at)
    assert failed_at is not None  # a failure, or a refusal, is why we are here
    if failures > controls.retries:
        return replace(base, phase=VMPhase.FAILED, last_error=error)
    retry_at = failed_at + timedelta(seconds=controls.backoff_s * 2 ** (failures - 1))
    phase = VMPhase.WAITING if retry_at > world.now else VMPhase.PLANNED
    return replace(base, phase=phase, last_error=error, retry_at=retry_at, finished=None)


def _observe_cold(
    entry: Entry, world: World, controls: Controls, node: str | None, has_vmi: bool, expected: int
) -> VMState:
    move = world.cold.get(entry.name)
    number = max(move.attempt if move else 0, expected)
    base = VMState(entry, VMPhase.PLANNED, attempts=number, node=node)
    refusal = world.refused.get(entry.name)
    if refusal is not None and refusal.attempt > number and has_vmi and node == entry.source:
        # The stop was refused after any earlier move: every earlier attempt failed, or none was made.
        failed_at = (move.finished or move.started) if move else None
        return _after_failures(
            base, number, failed_at, move.failure if move else "", refusal, world, controls
        )
    if move is None or move.attempt < expected:
        if expected:
            return replace(base, phase=VMPhase.STOPPING)
        if has_vmi and node == entry.target:
            return replace(base, phase=VMPhase.SUCCEEDED)
        if not has_vmi:
            return replace(base, phase=VMPhase.SKIPPED, last_error="the VM has no running instance any more")
        if node is not None and node != entry.source:
            return replace(base, phase=VMPhase.SKIPPED, last_error=f"moved to {node} outside the plan")
        return base
    base = replace(base, started=move.started, finished=move.finished)
    if move.stage == ColdStage.DONE:
        duration = _seconds(move.started, move.finished)
        return replace(base, phase=VMPhase.SUCCEEDED, duration_s=duration, downtime_s=duration)
    if move.stage == ColdStage.FAILED:
        if move.attempt > controls.retries:
            return replace(base, phase=VMPhase.FAILED, last_error=move.failure)
        retry_at = (move.finished or move.started) + timedelta(
            seconds=controls.backoff_s * 2 ** (move.attempt - 1)
        )
        phase = VMPhase.WAITING if retry_at > world.now else VMPhase.PLANNED
        return replace(base, phase=phase, last_error=move.failure, retry_at=retry_at)
    return replace(base, phase=VMPhase.STOPPING if move.stage == ColdStage.STOPPING else VMPhase.STARTING)


def _cold_actions(state: VMState, world: World, stopping: bool) -> list[Action]:
    """Drive a cold move in progress one stage further (each action is safe to repeat). A move that is
    given up (cancel, abort, timeout) still starts the VM again: nothing is left stopped."""
    entry = state.entry
    move = world.cold.get(entry.name)
    if (
        move is None
        or move.stage in (ColdStage.DONE, ColdStage.FAILED)
        or move.attempt < world.expected.get(entry.name, 0)
    ):
        return []
    node = world.vmi_nodes.get(entry.name)
    give_up = move.abandon
    if not give_up and stopping:
        give_up = "the plan stopped (cancelled or aborted)"
    if not give_up and world.now - move.started > COLD_TIMEOUT:
        give_up = f"not running on {entry.target} within {COLD_TIMEOUT.total_seconds():.0f}s"
    if move.halted:
        if give_up:
            return [StartAfterColdMove(entry.name, abandon=give_up)]
        return [] if entry.name in world.vmi_nodes else [StartAfterColdMove(entry.name)]
    if node is None:
        return []  # starting: not placed yet
    if give_up:
        return [FinishColdMove(entry.name, failure=give_up)]
    if node == entry.target:
        # Done once it runs there: a VMI only scheduled may still fail to boot, and its downtime lasts.
        return [] if entry.name in world.booting else [FinishColdMove(entry.name)]
    if node != entry.source:
        return [FinishColdMove(entry.name, failure=f"started on {node} instead of {entry.target}")]
    return []  # still the old instance, on its way out


def step(plan: str, entries: Sequence[Entry], world: World, controls: Controls) -> Step:
    """One level-triggered pass over a running plan."""
    result = Step(vms=[observe(entry, world, controls) for entry in entries])
    states = result.vms
    failed = result.finally_failed
    over_budget = failed > controls.max_failures
    aborting = over_budget and controls.on_failure == "abort"
    stopping = controls.cancel or aborting
    for state in states:
        result.actions.extend(_cold_actions(state, world, stopping))

    if stopping:
        for index, state in enumerate(states):
            if state.phase == VMPhase.MIGRATING:
                result.actions.extend(
                    AbortMigration(state.entry.name, attempt.name)
                    for attempt in world.attempts.get(state.entry.name, ())
                    if attempt.in_flight and not attempt.deleting
                )
            elif state.phase not in TERMINAL and state.phase not in IN_FLIGHT:
                states[index] = replace(state, phase=VMPhase.CANCELLED)
        _finish_or_wait(result, PlanPhase.CANCELLED if controls.cancel else PlanPhase.FAILED)
        return result

    holding = controls.paused or (over_budget and controls.on_failure == "pause")
    if not holding:
        _start_what_fits(plan, result, world, controls)
    if all(s.phase in TERMINAL for s in states):
        result.phase = PlanPhase.FAILED if over_budget else PlanPhase.SUCCEEDED
        result.reason = reasons.FAILURE_BUDGET_EXCEEDED if over_budget else reasons.COMPLETED
        result.message = _summary(result)
    elif holding:
        result.phase = PlanPhase.PAUSED
        budget = over_budget and not controls.paused
        result.reason = reasons.FAILURE_BUDGET_EXCEEDED if budget else reasons.PAUSED
        result.message = (
            f"{failed} VMs failed, more than maxFailures {controls.max_failures}: raise it, or cancel"
            if budget
            else "spec.paused is true: no new migrations start"
        )
    else:
        result.phase = PlanPhase.RUNNING
        result.reason = reasons.PLAN_RUNNING
        result.message = _summary(result)
    waits = [s.retry_at for s in states if s.phase == VMPhase.WAITING and s.retry_at is not None]
    waits += [s.recheck_at for s in states if s.recheck_at is not None]
    result.wake_at = min(waits, default=None)
    return result


def _finish_or_wait(result: Step, stopping_as: PlanPhase) -> None:
    if result.in_flight:
        result.phase = PlanPhase.RUNNING
        result.reason = reasons.STOPPING
        result.message = f"aborting: waiting for {result.in_flight} migrations in flight to stop"
    else:
        result.phase = stopping_as
        result.reason = (
            reasons.PLAN_CANCELLED if stopping_as == PlanPhase.CANCELLED else reasons.FAILURE_BUDGET_EXCEEDED
        )
        result.message = _summary(result)


def _summary(result: Step) -> str:
    counts = Counter(s.phase for s in result.vms)
    parts = [f"{counts[p]} {p.lower()}" for p in tuple(VMPhase) if counts[p]]
    return ", ".join(parts) or "no VMs"


def _start_what_fits(plan: str, result: Step, world: World, controls: Controls) -> None:
    """Start eligible VMs in plan order while every limit has room (no head-of-line blocking)."""
    states = result.vms
    plan_limit = controls.max_parallel
    cluster_room = controls.kubevirt_parallel - world.other_in_flight
    outbound_limit = min(controls.max_outbound_per_node, controls.kubevirt_outbound_per_node)
    outbound: dict[str, int] = defaultdict(int, world.other_outbound)
    inbound: dict[str, int] = defaultdict(int)
    per_pool: dict[str, int] = defaultdict(int)
    running = 0
    for state in states:
        if state.phase in IN_FLIGHT:
            running += 1
            outbound[state.entry.source] += 1
            inbound[state.entry.target] += 1
            per_pool[state.entry.pool] += 1
    open_wave = min((s.entry.wave for s in states if s.phase not in TERMINAL), default=0)
    for index, state in enumerate(states):
        if running >= plan_limit or running >= cluster_room:
            return
        if state.phase != VMPhase.PLANNED:
            continue
        entry = state.entry
        if controls.explicit_waves and entry.wave != open_wave:
            continue
        if (
            outbound[entry.source] >= outbound_limit
            or inbound[entry.target] >= controls.max_inbound_per_node
            or per_pool[entry.pool] >= controls.pool_budget
        ):
            continue
        attempt = state.attempts + 1
        if entry.method == "cold":
            result.actions.append(StopForColdMove(entry.name, attempt, entry.target))
            states[index] = replace(state, phase=VMPhase.STOPPING, attempts=attempt, started=world.now)
        else:
            name = migration_name(plan, entry.name, attempt)
            result.actions.append(StartMigration(entry.name, attempt, name, entry.target))
            states[index] = replace(
                state, phase=VMPhase.MIGRATING, attempts=attempt, migration=name, started=world.now
            )
        running += 1
        outbound[entry.source] += 1
        inbound[entry.target] += 1
        per_pool[entry.pool] += 1


def remaining_seconds(result: Step, controls: Controls) -> float:
    """Model estimate of the time left: the estimates of what is not finished, spread over the
    concurrency the limits allow."""
    left = sum(s.entry.estimated_duration_s for s in result.vms if s.phase not in TERMINAL)
    width = max(1, min(controls.max_parallel, controls.kubevirt_parallel))
    return left / width
