"""Timing helpers shared by the benchmarks: medians of repeated runs, a ratio table, and the sizes a
benchmark runs at (`make bench-smoke` runs every benchmark at tiny sizes, so one that no longer runs fails
CI; its figures mean nothing)."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

SMOKE = os.environ.get("CALIPER_BENCH_SMOKE") == "1"


def sized(full: int, smoke: int) -> int:
    """A size or a count: `full` in a benchmark run, `smoke` under `make bench-smoke`."""
    return smoke if SMOKE else full


def median_seconds(fn: Callable[[], object], repeats: int = 7, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def report(title: str, rows: dict[str, float], baseline: str) -> None:
    """Print medians and each row's ratio to `baseline` (> 1: slower than the baseline)."""
    print(f"\n{title}")
    base = rows[baseline]
    for name, seconds in rows.items():
        print(f"  {name:<34} {seconds * 1e3:10.2f} ms   {seconds / base:7.2f}x {baseline}")
