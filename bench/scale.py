"""Scale-out: one evaluation of `rows` x `classes` float32 logits in 20 `.npy` shards (labels in one
file), from the files in the server's process against 1 and 2 Dask workers (LocalCluster processes, one
thread each), and the I/O floor (`np.load(mmap_mode="r").sum()` of every shard). Prints each time and its
ratio to the single process, the speed-up of 2 workers over 1 (target ≥ 1.7x), and the peak resident
memory of every process. Run: `.venv/bin/python -m bench.scale [rows] [classes]` (default 20M x 100: 8 GB
of shards written to a temporary folder)."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.config import Settings
from app.context import Resources
from app.distributed.cluster import Cluster
from app.evaluation.schemas import EvaluationRequest
from app.storage.tenancy import set_project
from bench.timing import report, sized

SHARDS = 20


def write_shards(folder: Path, rows: int, classes: int) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, rows)
    for k, part in enumerate(np.array_split(np.arange(rows), SHARDS)):
        logits = rng.standard_normal((len(part), classes), dtype=np.float32)
        logits[np.arange(len(part)), labels[part]] += 2.0
        np.save(folder / f"logits-{k:02d}.npy", logits)
    np.save(folder / "labels.npy", labels)


def peak_rss_mb() -> float:
    """This process's peak resident memory since its last `reset_peak` (Linux VmHWM; ru_maxrss would carry
    the parent's peak across fork and exec)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def reset_peak() -> float:
    """Reset VmHWM to the current resident size, and return that size (MB): the baseline of the peak."""
    Path("/proc/self/clear_refs").write_text("5")
    return peak_rss_mb()


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(rows: int = sized(20_000_000, 20_000), classes: int = sized(100, 10)) -> None:
    set_project("default")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_shards(folder, rows, classes)
        settings = Settings(
            database_url=f"sqlite:///{folder / 'bench.db'}", artifact_dir=folder / "a", data_roots=str(folder)
        )
        resources = Resources.create(settings)
        evaluations = resources.evaluations
        request = EvaluationRequest.model_validate(
            {"source": {"logits": str(folder / "logits-*.npy"), "labels": str(folder / "labels.npy")}, "store": False}
        )

        def floor() -> None:
            for path in sorted(folder.glob("logits-*.npy")):
                np.load(path, mmap_mode="r").sum(dtype=np.float64)

        floor()  # the page cache warm for every run alike
        single = timed(lambda: evaluations.create(request, {}))
        base = reset_peak()
        times = {"in process (1 thread pool)": timed(lambda: evaluations.create(request, {}))}
        times["single run, first"] = single
        memory = {"server process, in-process run": (base, peak_rss_mb())}
        for workers in (1, 2):
            cluster = Cluster(f"local:{workers}")
            evaluations.cluster = cluster
            evaluations.create(request, {})  # the workers warm (sessions built, imports done)
            bases = list(cluster.client().run(reset_peak).values())
            base = reset_peak()
            times[f"Dask, {workers} worker(s)"] = timed(lambda: evaluations.create(request, {}))
            memory[f"server process, {workers} worker(s)"] = (base, peak_rss_mb())
            peaks = list(cluster.client().run(peak_rss_mb).values())
            memory |= {f"Dask worker {k + 1} of {workers}": (bases[k], peaks[k]) for k in range(workers)}
            cluster.close()
            evaluations.cluster = None
        times["I/O floor: mmap .sum() of the shards"] = timed(floor)
        resources.close()
    report(f"evaluation of {rows:,} x {classes} float32 logits in {SHARDS} .npy shards", times,
           "in process (1 thread pool)")  # fmt: skip
    speedup = times["Dask, 1 worker(s)"] / times["Dask, 2 worker(s)"]
    print(f"  2 workers over 1: {speedup:.2f}x (target >= 1.7x)")
    for name, (base, peak) in memory.items():
        print(f"  resident memory, {name:<32} before {base:6.0f} MB, peak {peak:6.0f} MB (+{peak - base:.0f})")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
