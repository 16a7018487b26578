"""One table from every benchmark's bench/results/<name>.json: figure, value, unit, target, met?.

Prints the table, and writes bench/results/latest.json (all figures, with the date, git revision and
machine) and bench/results/<YYYY-MM-DD>.md. `make bench` runs every benchmark and then this with
`--since <start>`: a results file older than that was not measured in the run, so its figures are left
out (flagged stale), and a missing file is flagged too. Exit status 1 when a file is stale or missing or
a target is missed.

A target is read from its text, after dropping any "(remark)": "<= 1", ">= 0.95", "< x", "> x", a bare
number (equality: "0", "6660"), "within 20% of actual" (against the sibling figure whose name ends in
"_actual" instead), numbers in a text value ("5000 / 100" against "5000 VMs / 100 nodes"); "reported..."
is n/a. Run alone: `.venv/bin/python bench/report.py [--since EPOCH]`.
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, git_revision

# Every benchmark `make bench` runs, in its order, with the command that reproduces it alone.
BENCHMARKS = {
    "twin": "make bench-twin",
    "pool_scale": "make bench-pools",
    "operator_scale": "make bench-operator",
    "planner": "make bench-planner",
}
# Figures recorded outside `make bench`, and the command that measures them again.
EXTRA = {
    "kind-e2e": "make kind-e2e",
    "kubevirt-e2e": "make kubevirt-e2e",
    "kubevirt": "make bench-kubevirt",
}
NOT_RESULTS = {"latest.json"}
COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
    "==": operator.eq,
}
NUMBER = r"-?\d[\d,_]*(?:\.\d+)?"


def _number(text: str) -> float:
    return float(text.replace(",", "").replace("_", ""))


def _numeric(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    return None


def evaluate(name: str, value: Any, target: str, siblings: dict[str, dict[str, Any]]) -> str:
    """'yes', 'no', or 'n/a' (reported only, or a target this cannot read)."""
    text = target.strip()
    if not text or text.lower().startswith("reported"):
        return "n/a"
    number = _numeric(value)
    relative = re.fullmatch(r"within\s+(\d+(?:\.\d+)?)\s*%\s+of\s+(\w+)(?:\s*\(.*\))?", text)
    if relative:
        other = siblings.get(f"{name.rsplit('_', 1)[0]}_{relative[2]}", {}).get("value")
        reference = _numeric(other)
        if number is None or reference is None or reference == 0:
            return "n/a"
        return "yes" if abs(number - reference) / abs(reference) <= float(relative[1]) / 100 else "no"
    core = re.sub(r"\(.*\)", "", text).strip().replace("≤", "<=").replace("≥", ">=")
    bound = re.fullmatch(rf"(<=|>=|<|>|==|=)?\s*({NUMBER})", core)
    if bound and number is not None:
        compare = COMPARISONS["==" if bound[1] in (None, "=") else bound[1]]
        return "yes" if compare(number, _number(bound[2])) else "no"
    if isinstance(value, str) and re.search(NUMBER, core):
        wanted = [_number(n) for n in re.findall(NUMBER, core)]
        return "yes" if [_number(n) for n in re.findall(NUMBER, value)] == wanted else "no"
    return "n/a"


def collect(since: float | None) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Rows for every fresh results file, and the names of the stale and the missing ones. Files no
    benchmark here writes (figures the e2e suites record on kind and real KubeVirt) are reported with the
    time they were measured, never as stale: `make bench` does not run them."""
    names = list(BENCHMARKS)
    names += sorted(
        p.stem for p in RESULTS.glob("*.json") if p.name not in NOT_RESULTS and p.stem not in names
    )
    rows, stale, missing = [], [], []
    for bench in names:
        path = RESULTS / f"{bench}.json"
        if not path.is_file():
            missing.append(bench)
            continue
        if since is not None and bench in BENCHMARKS and path.stat().st_mtime < since:
            stale.append(bench)
            continue
        figures = _figures(json.loads(path.read_text()))
        measured = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        for figure, row in figures.items():
            rows.append({
                "benchmark": bench, "figure": figure, "value": row["value"], "unit": row.get("unit", ""),
                "target": str(row.get("target", "")), "met": evaluate(figure, row["value"], str(row.get("target", "")), figures),
                "measured": measured.isoformat(timespec="seconds"), "command": BENCHMARKS.get(bench, EXTRA.get(bench, "")),
            })  # fmt: skip
    return rows, stale, missing


def _figures(raw: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    """{"figure": {"value", "unit", "target"}}; a plain value or nested record (as the e2e suites write
    them) becomes one reported row per number or text, its name the path to it."""
    figures: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and "value" in value:
            figures[name] = value
        elif isinstance(value, dict):
            figures.update(_figures(value, f"{name}."))
        else:
            figures[name] = {"value": value, "unit": "", "target": "reported (measured by the e2e suite)"}
    return figures


def _git_dirty() -> bool:
    result = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=False
    )
    return bool(result.stdout.strip())


def _table(rows: list[dict[str, Any]], markdown: bool) -> str:
    header = ["benchmark", "figure", "value", "unit", "target", "met?"]
    cells = [[r["benchmark"], r["figure"], str(r["value"]), r["unit"], r["target"], r["met"]] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]
    widths[4] = min(widths[4], 60)  # long targets overflow rather than widen everything
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        value = row[2].rjust(widths[2])
        lines.append("  ".join([row[0].ljust(widths[0]), row[1].ljust(widths[1]), value, row[3].ljust(widths[3]),
                                row[4].ljust(widths[4]), row[5]]))  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--since", type=float, help="epoch seconds the run started: older results are stale")
    parser.add_argument("--load-start", help="load averages when the run started (for the record)")
    args = parser.parse_args()
    now = datetime.now(UTC)
    rows, stale, missing = collect(args.since)
    missed = [r for r in rows if r["met"] == "no"]
    machine = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_start": args.load_start,
        "load_average_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    report: dict[str, Any] = {
        "date": now.isoformat(timespec="seconds"),
        "run_started": datetime.fromtimestamp(args.since, UTC).isoformat(timespec="seconds") if args.since else None,
        "git_revision": git_revision(),
        "git_dirty": _git_dirty(),
        "machine": machine,
        "summary": {
            "figures": len(rows),
            "targets_met": sum(r["met"] == "yes" for r in rows),
            "targets_missed": [f"{r['benchmark']}.{r['figure']}" for r in missed],
            "stale": stale,
            "missing": missing,
        },
        "figures": {
            r["benchmark"] + "." + r["figure"]: {k: r[k] for k in ("value", "unit", "target", "met", "measured")}
            for r in rows
        },
    }  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    revision = report["git_revision"] + (" (with uncommitted changes)" if report["git_dirty"] else "")
    load = f"load average {args.load_start or '?'} at the start, {machine['load_average_end']} at the end"
    notes = [f"{len(rows)} figures, {report['summary']['targets_met']} targets met, {len(missed)} missed"]
    notes += [f"STALE (not measured in this run, left out): {', '.join(stale)}"] if stale else []
    notes += [f"MISSING (no results file): {', '.join(missing)}"] if missing else []
    notes += [f"MISSED: {', '.join(report['summary']['targets_missed'])}"] if missed else []
    markdown = [
        f"# Benchmarks, {now:%Y-%m-%d %H:%M} UTC",
        "",
        f"git {revision}; {machine['cpus']} CPUs, Python {machine['python']}, {machine['platform']}; {load}.",
        "Reproduce: `make bench` (all), or per benchmark: "
        + ", ".join(f"`{c}` ({b})" for b, c in BENCHMARKS.items())
        + ".",
        "",
        _table(rows, markdown=True),
        "",
        *[f"- {n}" for n in notes],
        "",
    ]
    dated = RESULTS / f"{now:%Y-%m-%d}.md"
    dated.write_text("\n".join(markdown))
    print(f"\nbenchmarks — {now:%Y-%m-%d %H:%M} UTC, git {revision}, {machine['cpus']} cpus, Python "
          f"{machine['python']}, {load}\n")  # fmt: skip
    print(_table(rows, markdown=False))
    print()
    for note in notes:
        print(note)
    print(f"written: {RESULTS / 'latest.json'}, {dated}")
    return 1 if stale or missing or missed else 0


if __name__ == "__main__":
    sys.exit(main())
