"""SDM: the exact k-NN search and fit + score end to end.

(1) k-NN of 10,000 queries among 100,000 support points of 1,000 float32 dims, k = 2048 and k = 100:
    Caliper's ONNX search (GEMM distances, running top-k over support chunks) against faiss-cpu
    IndexFlatL2 in the same run (target ≤ 2x), with the peak resident memory each adds.
(2) Fit (50,000 support, 10,000 calibration) and score (10,000 test) end to end, in process and over
    HTTP (multipart .npy, SQLite), against faiss searching the same queries.
Run: `.venv/bin/python -m bench.sdm` (`--scale 0.2` for a quick run on smaller sizes).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from caliper_client import CaliperClient
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.config import Settings
from app.core.neighbours import nearest
from app.core.sdm import LabelledSet, SdmEstimator
from app.storage.migrate import upgrade
from bench.timing import SMOKE


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def timed_with_peak(fn: Callable[[], Any]) -> tuple[float, int]:
    """Seconds of one call and the peak resident memory above the level before it (sampled every 2 ms)."""
    before = rss_bytes()
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    return seconds, max(peak, rss_bytes()) - before


def knn(support_n: int, queries_n: int, dim: int) -> None:
    rng = np.random.default_rng(0)
    support = rng.standard_normal((support_n, dim), dtype=np.float32)
    queries = rng.standard_normal((queries_n, dim), dtype=np.float32)
    index = faiss.IndexFlatL2(dim)
    index.add(support)
    print(
        f"\n(1) exact k-NN: {queries_n:,} queries x {support_n:,} support x {dim} float32 (faiss threads: "
        f"{faiss.omp_get_max_threads()})"
    )
    for k in (2048, 100):
        result: dict[str, Any] = {}
        faiss_s, faiss_mem = timed_with_peak(lambda: result.setdefault("faiss", index.search(queries, k)))  # noqa: B023
        ours_s, ours_mem = timed_with_peak(lambda: result.setdefault("ours", nearest(queries, support, k)))  # noqa: B023
        agree = float((result["ours"].indices == result["faiss"][1]).mean())
        print(
            f"  k = {k:<5} faiss {faiss_s:7.2f} s (+{faiss_mem / 2**20:6.0f} MiB)   caliper {ours_s:7.2f} s "
            f"(+{ours_mem / 2**20:6.0f} MiB)   = {ours_s / faiss_s:.2f}x faiss (target ≤ 2x); "
            f"same neighbour in {agree:.2%} of slots (rest: float32 near-ties)"
        )


def clustered(rng: np.random.Generator, n: int, centres: np.ndarray, readout: np.ndarray) -> tuple[np.ndarray, ...]:
    labels = rng.integers(0, len(centres), n)
    x = (centres[labels] + rng.standard_normal((n, centres.shape[1]))).astype(np.float32)
    logits = (x @ readout + rng.standard_normal((n, len(centres)))).astype(np.float32)
    return x, logits, labels


def end_to_end(support_n: int, calibration_n: int, test_n: int, dim: int, classes: int = 10) -> None:
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((classes, dim)).astype(np.float32) * 0.5  # neighbours mostly share the class
    readout = centres.T * 0.02  # own-class logit ≈ 5 above the rest, plus unit noise: some errors
    support = clustered(rng, support_n, centres, readout)
    calibration = clustered(rng, calibration_n, centres, readout)
    test = clustered(rng, test_n, centres, readout)
    k = 2048
    index = faiss.IndexFlatL2(dim)
    index.add(support[0])
    faiss_s = timed_with_peak(lambda: (index.search(calibration[0], k), index.search(test[0], k)))[0]

    estimator = SdmEstimator(0.95, k)
    fit_s, fit_mem = timed_with_peak(lambda: estimator.fit(LabelledSet(*support), LabelledSet(*calibration)))
    score_s, _ = timed_with_peak(lambda: estimator.score(test[0], test[1]))
    print(
        f"\n(2) fit ({support_n:,} support, {calibration_n:,} calibration) + score ({test_n:,}), "
        f"{dim} dims, C = {classes}, k = {k}"
    )
    print(f"  faiss searching the same queries:   {faiss_s:7.2f} s")
    print(
        f"  caliper core fit {fit_s:6.2f} s (+{fit_mem / 2**20:.0f} MiB) + score {score_s:6.2f} s = "
        f"{(fit_s + score_s) / faiss_s:.2f}x the faiss search; q′_min = {estimator.q_min_:.3f}, "
        f"calibration HR = {estimator.calibration_['high_reliability']}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(database_url=f"sqlite:///{Path(tmp) / 'bench.db'}", access_log=False)
        upgrade(settings)
        with TestClient(create_app(settings), base_url="http://127.0.0.1") as http:
            client = CaliperClient(http, multipart_threshold=0)
            start = time.perf_counter()
            created = client.fit_sdm(support=support, calibration=calibration, params={"k": k})
            http_fit = time.perf_counter() - start
            start = time.perf_counter()
            columns = client.score_sdm(created["id"], embeddings=test[0], logits=test[1])
            http_score = time.perf_counter() - start
    print(
        f"  over HTTP (multipart, SQLite): fit {http_fit:6.2f} s + score {http_score:6.2f} s = "
        f"{(http_fit + http_score) / (fit_s + score_s):.2f}x in-process; "
        f"test HR = {int(columns['high_reliability'].sum())}, OOD = {int(columns['is_ood'].sum())}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--scale", type=float, default=0.0 if SMOKE else 1.0, help="multiply every row count (dims stay 1000)"
    )
    args = parser.parse_args()

    def scaled(n: int) -> int:
        return max(2100, int(n * args.scale))

    knn(scaled(100_000), scaled(10_000), 1000)
    end_to_end(scaled(50_000), scaled(10_000), scaled(10_000), 1000)


if __name__ == "__main__":
    main()
