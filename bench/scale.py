"""Scale-out: one evaluation of `rows` x `classes` float32 logits in 20 `.npy` shards (labels in one
file), from the files in the server's process against 1 and 2 Dask workers (LocalCluster processes, one
thread each), and the I/O floor (`np.load(mmap_mode="r").sum()` of every shard). Prints each time and its
ratio to the single process, the speed-up of 2 workers over 1 (target ≥ 1.7x), and the peak resident
memory of every process. Run: `.venv/bin/python -m bench.scale [rows] [classes]` (default 20M x 100: 8 GB
of shards written to a temporary folder)."""

from __future__ import annotations

import resource
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
from app.sources.locations import Places
from app.storage.tenancy import set_project
from bench.timing import report

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
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(rows: int = 20_000_000, classes: int = 100) -> None:
    set_project("default")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_shards(folder, rows, classes)
        settings = Settings(database_url=f"sqlite:///{folder / 'bench.db'}", artifact_dir=folder / "a")
        resources = Resources.create(settings)
        evaluations = resources.evaluations
        evaluations.places = Places.of(str(folder), "")
        request = EvaluationRequest.model_validate(
            {"source": {"logits": str(folder / "logits-*.npy"), "labels": str(folder / "labels.npy")}, "store": False}
        )

        def floor() -> None:
            for path in sorted(folder.glob("logits-*.npy")):
                np.load(path, mmap_mode="r").sum(dtype=np.float64)

        floor()  # the page cache warm for every run alike
        single = timed(lambda: evaluations.create(request, {}))
        times = {"in process (1 thread pool)": timed(lambda: evaluations.create(request, {}))}
        times["single run, first"] = single
        memory = {"server process": peak_rss_mb()}
        for workers in (1, 2):
            cluster = Cluster(f"local:{workers}")
            evaluations.cluster = cluster
            evaluations.create(request, {})  # the workers warm (sessions built, imports done)
            times[f"Dask, {workers} worker(s)"] = timed(lambda: evaluations.create(request, {}))
            peaks = cluster.client().run(peak_rss_mb)
            memory |= {f"Dask worker {k + 1} of {workers}": v for k, v in enumerate(peaks.values())}
            cluster.close()
            evaluations.cluster = None
        times["I/O floor: mmap .sum() of the shards"] = timed(floor)
        resources.close()
    report(f"evaluation of {rows:,} x {classes} float32 logits in {SHARDS} .npy shards", times,
           "in process (1 thread pool)")  # fmt: skip
    speedup = times["Dask, 1 worker(s)"] / times["Dask, 2 worker(s)"]
    print(f"  2 workers over 1: {speedup:.2f}x (target >= 1.7x)")
    for name, megabytes in memory.items():
        print(f"  peak resident memory, {name:<28} {megabytes:8.0f} MB")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
