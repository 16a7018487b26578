"""bench/report.py: targets are read from their text; figures the e2e suites record join the table."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from report import _figures, evaluate


def test_targets_are_read_from_their_text() -> None:
    assert evaluate("rss", 180.0, "<= 200 (MiB)", {}) == "yes"
    assert evaluate("rss", 210.0, "<= 200", {}) == "no"
    assert evaluate("x", 3, "reported", {}) == "n/a"
    siblings = {"makespan_actual": {"value": 100.0}}
    assert evaluate("makespan_estimated", 115.0, "within 20% of actual", siblings) == "yes"
    assert evaluate("makespan_estimated", 125.0, "within 20% of actual", siblings) == "no"


def test_e2e_records_become_reported_rows() -> None:
    raw = {
        "drain_elapsed_s": 19.6,
        "drain_per_vm": {"vm-0": {"actual_duration_s": 15, "actual_downtime_s": None}},
        "rss": {"value": 180, "unit": "MiB", "target": "<= 200"},
    }
    figures = _figures(raw)
    assert figures["rss"] == raw["rss"]
    assert figures["drain_per_vm.vm-0.actual_duration_s"]["value"] == 15
    assert figures["drain_elapsed_s"]["target"].startswith("reported")
    assert all(evaluate(name, row["value"], row["target"], figures) == "n/a" for name, row in figures.items()
               if name != "rss")  # fmt: skip
