"""The pre-copy timing model against hand-computed cases, and its properties."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from virtfleet.core.precopy import GIB, MigrationInputs, ModelError, estimate

MIB = 2**20
TEN_GBIT = 1.25e9


def test_idle_guest_is_one_round_and_no_dirty_remainder() -> None:
    result = estimate(MigrationInputs(GIB, 0, GIB))
    assert result.succeeded and result.mode == "PreCopy"
    assert result.duration_s == pytest.approx(1.0)
    assert result.downtime_s == 0.0
    assert result.bytes_sent == GIB
    assert result.rounds == 2  # the full copy, then an empty stop-and-copy


def test_eight_gib_at_fifty_mib_per_second() -> None:
    # Round 0: 8 GiB / 1.25e9 B/s = 6.8719476736 s; the guest dirties 50 MiB/s x 6.87 s = 360287970 B,
    # which fits the 300 ms budget (375,000,000 B), so it is sent during the pause: 0.288230376 s.
    result = estimate(MigrationInputs(8 * GIB, 50 * MIB, TEN_GBIT, max_downtime_s=0.3, setup_s=2.0))
    assert result.succeeded
    assert result.rounds == 2
    assert result.downtime_s == pytest.approx(0.288230376, rel=1e-6)
    assert result.duration_s == pytest.approx(2.0 + 6.8719476736 + 0.288230376, rel=1e-6)
    assert result.bytes_sent == 8 * GIB + 360287970


def test_three_rounds_when_the_first_remainder_is_too_big() -> None:
    # 4 GiB at 1 GiB/s with 0.5 GiB/s dirtying: 4 s -> 2 GiB dirty -> 2 s -> 1 GiB -> 1 s -> 0.5 GiB ...
    # the remainder shrinks by half each round until it fits 0.1 s x 1 GiB/s = 0.1 GiB.
    result = estimate(MigrationInputs(4 * GIB, GIB / 2, GIB, max_downtime_s=0.1))
    # Rounds send 4, 2, 1, 0.5, 0.25, 0.125 GiB; 0.0625 GiB then fits the budget.
    assert result.rounds == 7
    assert result.duration_s == pytest.approx(4 + 2 + 1 + 0.5 + 0.25 + 0.125 + 0.0625)
    assert result.downtime_s == pytest.approx(0.0625)


def test_never_converges_without_help() -> None:
    result = estimate(MigrationInputs(8 * GIB, 2e9, TEN_GBIT, completion_timeout_per_gib=150))
    assert not result.succeeded
    assert result.duration_s == pytest.approx(1350)  # 150 s x 9: 8Gi is 8.6 GB, which KubeVirt rounds up
    assert "completion timeout" in result.failure_reason


def test_post_copy_takes_over_at_the_completion_timeout() -> None:
    result = estimate(MigrationInputs(8 * GIB, 2e9, TEN_GBIT, allow_post_copy=True))
    assert result.succeeded and result.mode == "PostCopy"
    assert result.duration_s == pytest.approx(1350 + 8 * GIB / TEN_GBIT)
    assert result.downtime_s <= 0.3


def test_auto_converge_throttles_until_it_fits() -> None:
    result = estimate(MigrationInputs(8 * GIB, 2e9, TEN_GBIT, allow_auto_converge=True))
    assert result.succeeded and result.mode == "PreCopy"
    assert 0.2 <= result.throttle <= 0.99
    assert result.downtime_s <= 0.3
    assert result.duration_s < 1350


def test_the_completion_timeout_counts_whole_gigabytes_as_kubevirt_does() -> None:
    # Found on real KubeVirt v1.7: a 256Mi guest at 1 s/GiB is given 1 s, not 0.25 s.
    assert MigrationInputs(256 * 2**20, 0, GIB, completion_timeout_per_gib=1).completion_timeout_s == 1
    assert MigrationInputs(4 * GIB, 0, GIB, completion_timeout_per_gib=150).completion_timeout_s == 750


@pytest.mark.parametrize(
    ("field", "value"),
    [("memory_bytes", 0), ("bandwidth_bps", 0), ("dirty_rate_bps", -1), ("max_downtime_s", 0)],
)
def test_bad_inputs_name_the_field(field: str, value: float) -> None:
    inputs = {"memory_bytes": GIB, "dirty_rate_bps": 0, "bandwidth_bps": GIB, field: value}
    with pytest.raises(ModelError, match=field):
        estimate(MigrationInputs(**inputs))  # type: ignore[arg-type]


memory = st.integers(min_value=64 * MIB, max_value=512 * GIB)
rates = st.floats(min_value=0, max_value=5e9, allow_nan=False)
links = st.floats(min_value=1e7, max_value=1e10, allow_nan=False)


@given(memory, memory, rates, links)
def test_duration_grows_with_memory(m1: int, m2: int, dirty: float, link: float) -> None:
    small, large = sorted((m1, m2))
    a = estimate(MigrationInputs(small, dirty, link))
    b = estimate(MigrationInputs(large, dirty, link))
    assume(a.succeeded and b.succeeded)
    assert b.duration_s >= a.duration_s - 1e-9


@given(memory, rates, rates, links)
def test_duration_grows_with_dirty_rate(m: int, d1: float, d2: float, link: float) -> None:
    low, high = sorted((d1, d2))
    a = estimate(MigrationInputs(m, low, link))
    b = estimate(MigrationInputs(m, high, link))
    assume(a.succeeded and b.succeeded)
    assert b.duration_s >= a.duration_s - 1e-9


@given(memory, links, st.floats(min_value=1.0, max_value=4.0))
def test_no_convergence_when_dirtying_outpaces_the_link(m: int, link: float, factor: float) -> None:
    result = estimate(MigrationInputs(m, link * factor, link, max_downtime_s=0.05))
    budget_fits_everything = m <= 0.05 * link
    assert result.succeeded == budget_fits_everything


@given(memory, rates, links)
def test_successful_pre_copy_respects_the_downtime_budget(m: int, dirty: float, link: float) -> None:
    result = estimate(MigrationInputs(m, dirty, link, max_downtime_s=0.3))
    if result.succeeded and result.mode == "PreCopy":
        assert result.downtime_s <= 0.3 + 1e-9
    assert result.bytes_sent >= 0
