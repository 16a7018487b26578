"""Linux cpu lists ("0-3,8,10-11"), as the NUMA topology annotation writes them."""

from __future__ import annotations


def parse_cpu_list(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            low, high = (int(x) for x in part.split("-", 1))
            if high < low:
                raise ValueError(f"cpu range {part!r} runs backwards")
            cpus.extend(range(low, high + 1))
        else:
            cpus.append(int(part))
    return cpus


def format_cpu_list(cpus: list[int]) -> str:
    ranges: list[str] = []
    ordered = sorted(set(cpus))
    start = prev = None
    for cpu in [*ordered, None]:
        if cpu is not None and prev is not None and cpu == prev + 1:
            prev = cpu
            continue
        if start is not None:
            ranges.append(f"{start}" if start == prev else f"{start}-{prev}")
        start = prev = cpu
    return ",".join(ranges)
