"""A pre-copy live-migration timing model (Clark et al., "Live Migration of Virtual Machines", NSDI 2005).

Pre-copy sends all guest memory while the guest runs, then re-sends what the guest dirtied meanwhile, in
rounds, until what is left can be sent within the allowed downtime; then the guest pauses and the rest is
copied (stop-and-copy). A guest that dirties memory as fast as the link sends it never converges. Then,
as in KubeVirt and QEMU:

- auto-converge throttles the guest's vCPUs (QEMU starts at 20 % and adds 10 % per round, up to 99 %),
  which slows its dirtying until the remainder fits;
- post-copy (if allowed) starts the guest on the target when KubeVirt's completion timeout
  (completionTimeoutPerGiB x guest memory in whole GB, rounded up) is reached, and pulls the remaining pages afterwards;
- otherwise the migration fails at the completion timeout.

Pure and deterministic: the twin uses it to time simulated migrations and the planner to estimate them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

GIB = 2**30
GB = 10**9
# QEMU's auto-converge: cpu-throttle-initial 20 %, cpu-throttle-increment 10 %, at most 99 %.
THROTTLE_INITIAL = 0.20
THROTTLE_INCREMENT = 0.10
THROTTLE_MAX = 0.99
# A round that does not shrink the remainder by at least this fraction counts as not converging.
MIN_PROGRESS = 0.05
MAX_ROUNDS = 10_000
# KubeVirt's defaults.
DEFAULT_COMPLETION_TIMEOUT_PER_GIB = 150
DEFAULT_MAX_DOWNTIME_MS = 300


class ModelError(ValueError):
    """The inputs cannot describe a migration; the message names the input."""


@dataclass(frozen=True)
class MigrationInputs:
    memory_bytes: int
    dirty_rate_bps: float  # bytes the guest dirties per second
    bandwidth_bps: float  # bytes per second the migration may send
    max_downtime_s: float = DEFAULT_MAX_DOWNTIME_MS / 1000
    allow_post_copy: bool = False
    allow_auto_converge: bool = False
    completion_timeout_per_gib: int = DEFAULT_COMPLETION_TIMEOUT_PER_GIB
    setup_s: float = 0.0  # target pod scheduling and preparation before the first byte moves

    def check(self) -> None:
        if self.memory_bytes <= 0:
            raise ModelError(f"memory_bytes must be positive, got {self.memory_bytes}")
        if self.dirty_rate_bps < 0:
            raise ModelError(f"dirty_rate_bps must not be negative, got {self.dirty_rate_bps}")
        if self.bandwidth_bps <= 0:
            raise ModelError(f"bandwidth_bps must be positive, got {self.bandwidth_bps}")
        if self.max_downtime_s <= 0:
            raise ModelError(f"max_downtime_s must be positive, got {self.max_downtime_s}")
        if self.completion_timeout_per_gib <= 0:
            raise ModelError(
                f"completion_timeout_per_gib must be positive, got {self.completion_timeout_per_gib}"
            )
        if self.setup_s < 0:
            raise ModelError(f"setup_s must not be negative, got {self.setup_s}")

    @property
    def completion_timeout_s(self) -> float:
        # KubeVirt v1.7 (virt-launcher's getVMIMigrationDataSize) counts the guest's memory in whole decimal
        # gigabytes, rounded up, despite the setting's name: 256Mi is 1, 8Gi is 9 (checked on real KubeVirt).
        return float(self.completion_timeout_per_gib * math.ceil(self.memory_bytes / GB))


@dataclass(frozen=True)
class MigrationEstimate:
    """What the model predicts: times in seconds from the migration's start, bytes over the wire."""

    duration_s: float
    downtime_s: float
    bytes_sent: int
    rounds: int
    mode: Literal["PreCopy", "PostCopy"]
    succeeded: bool
    failure_reason: str = ""
    throttle: float = 0.0  # final auto-converge throttle (0 when not used)
    copy_started_s: float = 0.0  # when memory transfer began (after setup)


def estimate(inputs: MigrationInputs) -> MigrationEstimate:
    """Simulate pre-copy rounds; see the module docstring for the rules."""
    inputs.check()
    bandwidth = inputs.bandwidth_bps
    budget_bytes = inputs.max_downtime_s * bandwidth
    timeout = inputs.completion_timeout_s
    elapsed = 0.0
    sent = 0.0
    remaining = float(inputs.memory_bytes)  # round 0 sends everything
    throttle = 0.0
    rounds = 0
    while rounds < MAX_ROUNDS:
        if remaining <= budget_bytes:
            downtime = remaining / bandwidth
            return _done(inputs, elapsed + downtime, downtime, sent + remaining, rounds + 1, throttle)
        round_time = remaining / bandwidth
        if elapsed + round_time > timeout:
            # The completion timeout fires mid-round.
            sent += (timeout - elapsed) * bandwidth
            return _at_timeout(inputs, timeout, sent, rounds + 1, throttle, remaining)
        elapsed += round_time
        sent += remaining
        rounds += 1
        dirtied = min(float(inputs.memory_bytes), inputs.dirty_rate_bps * (1 - throttle) * round_time)
        if dirtied > remaining * (1 - MIN_PROGRESS) and inputs.allow_auto_converge:
            throttle = min(THROTTLE_MAX, THROTTLE_INITIAL if throttle == 0 else throttle + THROTTLE_INCREMENT)
        remaining = dirtied
    return _at_timeout(inputs, elapsed, sent, rounds, throttle, remaining)


def _done(
    inputs: MigrationInputs, copy_s: float, downtime: float, sent: float, rounds: int, throttle: float
) -> MigrationEstimate:
    return MigrationEstimate(
        duration_s=inputs.setup_s + copy_s,
        downtime_s=downtime,
        bytes_sent=round(sent),
        rounds=rounds,
        mode="PreCopy",
        succeeded=True,
        throttle=throttle,
        copy_started_s=inputs.setup_s,
    )


def _at_timeout(
    inputs: MigrationInputs, at: float, sent: float, rounds: int, throttle: float, remaining: float
) -> MigrationEstimate:
    if inputs.allow_post_copy:
        # The guest resumes on the target after a minimal switch-over; the remainder follows on demand.
        switch_over = min(inputs.max_downtime_s, remaining / inputs.bandwidth_bps)
        pull = remaining / inputs.bandwidth_bps
        return MigrationEstimate(
            duration_s=inputs.setup_s + at + pull,
            downtime_s=switch_over,
            bytes_sent=round(sent + remaining),
            rounds=rounds,
            mode="PostCopy",
            succeeded=True,
            throttle=throttle,
            copy_started_s=inputs.setup_s,
        )
    return MigrationEstimate(
        duration_s=inputs.setup_s + at,
        downtime_s=0.0,
        bytes_sent=round(sent),
        rounds=rounds,
        mode="PreCopy",
        succeeded=False,
        failure_reason=(
            f"did not converge within the completion timeout of {at:.0f}s "
            f"({inputs.completion_timeout_per_gib}s/GiB)"
        ),
        throttle=throttle,
        copy_started_s=inputs.setup_s,
    )
