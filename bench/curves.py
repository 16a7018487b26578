"""Draw the operator's cost curves from the benchmark results: docs/performance-curves.png.

Reads bench/results/operator_scale.json (RSS, restart resync, replicas change -> first create, busy time
after settling, at each fleet size) and bench/results/planner.json (planner time at 1,000 to 100,000 VMs),
prints each curve's growth exponent (the slope on log-log axes between the smallest and largest size: 1
is linear, below 1 grows slower than the fleet) and draws one PNG with a panel per figure.

Needs matplotlib (the `bench` extra: `.venv/bin/pip install -e '.[bench]'`). Run: `make bench-curves`.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS

DOCS = Path(__file__).resolve().parents[1] / "docs"
CURVE = re.compile(r"curve_(\d+)_vms_(\w+)")
PLANNER = re.compile(r"planner_seconds_(\d+)_vms")
# (figure in the results, panel title, unit)
PANELS = (
    ("rss_mib", "RSS after a restart, idle", "MiB"),
    ("peak_rss_mib", "Peak RSS (VmHWM) of the process that grew the fleet", "MiB"),
    ("resync_seconds", "Restart: process start -> every VM seen, idle", "s"),
    ("first_create_p50_ms", "Replicas change -> first create, p50", "ms"),
    ("busy_after_settled_seconds", "Busy after every pool reported its VMs (1 s steps)", "s"),
)


def curves(operator: dict[str, Any], planner: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """Figure -> [(VMs, value)] in order of size."""
    found: dict[str, list[tuple[int, float]]] = {}
    for name, row in operator.items():
        match = CURVE.fullmatch(name)
        if match and isinstance(row["value"], int | float):
            found.setdefault(match[2], []).append((int(match[1]), float(row["value"])))
    for name, row in planner.items():
        match = PLANNER.fullmatch(name)
        if match:
            found.setdefault("planner_seconds", []).append((int(match[1]), float(row["value"])))
    return {name: sorted(points) for name, points in found.items()}


def growth_exponent(points: list[tuple[int, float]]) -> float | None:
    """Slope of log(value) over log(VMs) from the smallest to the largest size (1: linear)."""
    (n0, v0), (n1, v1) = points[0], points[-1]
    if n0 == n1 or v0 <= 0 or v1 <= 0:
        return None
    return math.log(v1 / v0) / math.log(n1 / n0)


def per_thousand(points: list[tuple[int, float]]) -> float:
    """What 1,000 more VMs add, from the smallest to the largest size: a curve with a fixed base (the
    interpreter, imports) grows linearly if this holds while the exponent stays well under 1."""
    (n0, v0), (n1, v1) = points[0], points[-1]
    return (v1 - v0) / (n1 - n0) * 1000 if n1 != n0 else 0.0


def draw(found: dict[str, list[tuple[int, float]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [*PANELS, ("planner_seconds", "Planner: plan a drain (20 VMs per node)", "s")]
    panels = [p for p in panels if p[0] in found]
    columns = 3
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.4 * columns, 3.9 * rows), squeeze=False)
    for ax, (name, title, unit) in zip(axes.flat, panels, strict=False):
        sizes, values = zip(*found[name], strict=True)
        ax.plot(sizes, values, marker="o")
        for x, y in zip(sizes, values, strict=True):
            ax.annotate(f"{y:g}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
        if name == "planner_seconds":
            ax.set_xscale("log")
            ax.set_yscale("log")
        exponent = growth_exponent(found[name])
        suffix = (
            f"\n~VMs^{exponent:.2f}; +{per_thousand(found[name]):.3g} {unit} per 1,000 VMs"
            if exponent is not None
            else ""
        )
        ax.set_title(title + suffix, fontsize=9)
        ax.set_xlabel("VMs")
        ax.set_ylabel(unit)
        ax.set_ylim(bottom=0 if name != "planner_seconds" else None)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    figure.suptitle("virtfleet operator cost by fleet size (bench/operator_scale.py, bench/planner.py)")
    figure.tight_layout()
    figure.savefig(out, dpi=90)
    print(f"written: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DOCS / "performance-curves.png")
    args = parser.parse_args()
    operator = json.loads((RESULTS / "operator_scale.json").read_text())
    planner = json.loads((RESULTS / "planner.json").read_text())
    found = curves(operator, planner)
    if not found:
        raise SystemExit("no curve_* figures in bench/results/operator_scale.json: run make bench-operator")
    for name, points in found.items():
        exponent = growth_exponent(points)
        shape = (
            "n/a" if exponent is None else f"VMs^{exponent:.2f}, +{per_thousand(points):.3g} per 1,000 VMs"
        )
        print(f"{name:<28} " + "  ".join(f"{n}: {v:g}" for n, v in points) + f"   growth {shape}")
    draw(found, args.out)


if __name__ == "__main__":
    main()
