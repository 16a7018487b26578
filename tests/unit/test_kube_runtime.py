"""virtfleet.kube.runtime: in-flight creates and deletes count until the watch shows them, or they expire."""

from __future__ import annotations

from virtfleet.kube.runtime import EXPECTATION_TTL, Expectations, Runtime
from virtfleet.settings import Settings


def test_observed_writes_clear_and_lost_ones_expire() -> None:
    expectations = Expectations()
    expectations.creates.update({"p-0": 100.0, "p-1": 100.0})
    expectations.deletes.update({"p-7": 100.0})
    expectations.observe(present={"p-0", "p-7"})
    assert set(expectations.creates) == {"p-1"}  # p-0 arrived
    assert set(expectations.deletes) == {"p-7"}  # p-7 is still there
    expectations.observe(present={"p-0"})
    assert expectations.deletes == {}
    expectations.expire(now=100.0 + EXPECTATION_TTL + 1)
    assert expectations.creates == {}


def test_learned_figures_outlive_the_objects_they_came_from() -> None:
    runtime = Runtime(kube=None, settings=Settings())  # type: ignore[arg-type]
    assert runtime.learn("setup", None) is None  # nothing finished yet: the planner's default applies
    assert runtime.learn("setup", 21.5) == 21.5
    # The plan that showed it was deleted with its migrations: the next plan still estimates with it.
    assert runtime.learn("setup", None) == 21.5
    assert runtime.learn("setup", 19.0) == 19.0
    assert runtime.learn("cold", None) is None  # each figure is learned on its own
