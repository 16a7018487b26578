"""`virtfleet run` under tracemalloc, for finding where the operator's memory goes (a profiling aid).

Usage: python bench/traced_operator.py OUT [virtfleet run arguments...]
Each SIGUSR1 writes OUT (overwriting it): the traced total, then the top allocation sites by line and
by file, live at that moment. tracemalloc itself costs memory and time: RSS and latency figures from a
traced operator are not the operator's figures. Used by `bench/operator_scale.py --tracemalloc OUT`.
"""

from __future__ import annotations

import gc
import linecache
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType


def dump(out: Path) -> None:
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [
            tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
        ]
    )
    current, peak = tracemalloc.get_traced_memory()
    lines = [f"traced now {current / 2**20:.1f} MiB, traced peak {peak / 2**20:.1f} MiB", "", "by line:"]
    for stat in snapshot.statistics("lineno")[:40]:
        frame = stat.traceback[0]
        source = linecache.getline(frame.filename, frame.lineno).strip()
        lines.append(
            f"{stat.size / 2**20:8.2f} MiB {stat.count:9d} blocks  {frame.filename}:{frame.lineno}  {source}"
        )
    lines += ["", "by file:"]
    for stat in snapshot.statistics("filename")[:30]:
        lines.append(f"{stat.size / 2**20:8.2f} MiB {stat.count:9d} blocks  {stat.traceback[0].filename}")
    out.write_text("\n".join(lines) + "\n")


def main() -> int:
    out = Path(sys.argv[1])
    tracemalloc.start(1)

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        dump(out)

    signal.signal(signal.SIGUSR1, on_signal)
    from virtfleet.cli import main as virtfleet

    return virtfleet(["run", *sys.argv[2:]])


if __name__ == "__main__":
    sys.exit(main())
