"""Concurrent writers against a real server: 16 and 64 clients posting evaluations (with per-row arrays),
detector fits and gates for a bounded time, on SQLite and on Postgres (when CALIPER_TEST_POSTGRES_URL is
set). Prints throughput and p50/p99 latency per operation, the same clients' rate on /healthz as the
baseline, then reads every acknowledged evaluation back and counts lost rows, corrupt blobs and 5xx.
Run: `.venv/bin/python -m bench.load [--seconds 20]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from typing import Any

import httpx
import numpy as np

from app.config import Settings
from app.storage.migrate import downgrade, upgrade
from bench.http import start_caliper


def _client_loop(url: str, seed: int, seconds: float, results: dict[str, Any], lock: threading.Lock) -> None:
    rng = np.random.default_rng(seed)
    stop = time.monotonic() + seconds
    latencies: dict[str, list[float]] = defaultdict(list)
    acknowledged: dict[str, list[float]] = {}
    errors: list[int] = []
    with httpx.Client(base_url=url, timeout=120) as http:
        previous = None
        while time.monotonic() < stop:
            n = int(rng.integers(50, 500))
            body = {
                "logits": rng.normal(size=(n, 5)).tolist(),
                "labels": rng.integers(0, 5, n).tolist(),
                "per_sample": True,
            }
            features = rng.normal(size=(100, 8))
            fit = {"method": "mahalanobis", "features": features.tolist(), "labels": (np.arange(100) % 4).tolist()}
            for name, path, payload in (("evaluation", "/v1/evaluations", body), ("detector", "/v1/detectors", fit)):
                t0 = time.perf_counter()
                response = http.post(path, json=payload)
                latencies[name].append(time.perf_counter() - t0)
                if response.status_code >= 500:
                    errors.append(response.status_code)
                elif name == "evaluation" and response.status_code == 201:
                    created = response.json()
                    acknowledged[created["id"]] = created["per_sample"]["cross_entropy"]
                    if previous is not None:
                        rules = [{"metric": "accuracy", "op": "max_decrease_abs", "value": 0.5}]
                        t0 = time.perf_counter()
                        gate = http.post(
                            "/v1/gates", json={"candidate": created["id"], "baseline": previous, "rules": rules}
                        )
                        latencies["gate"].append(time.perf_counter() - t0)
                        if gate.status_code >= 500:
                            errors.append(gate.status_code)
                    previous = created["id"]
    with lock:
        for name, values in latencies.items():
            results["latencies"][name].extend(values)
        results["acknowledged"].update(acknowledged)
        results["errors"].extend(errors)


def _healthz_rate(url: str, clients: int, seconds: float) -> float:
    counts = [0] * clients

    def loop(index: int) -> None:
        stop = time.monotonic() + seconds
        with httpx.Client(base_url=url) as http:
            while time.monotonic() < stop:
                http.get("/healthz")
                counts[index] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / seconds


def run(backend: str, database_url: str, clients: int, seconds: float) -> None:
    server, url = start_caliper(database_url)
    try:
        baseline = _healthz_rate(url, clients, min(seconds, 5.0))
        results: dict[str, Any] = {"latencies": defaultdict(list), "acknowledged": {}, "errors": []}
        lock = threading.Lock()
        threads = [threading.Thread(target=_client_loop, args=(url, s, seconds, results, lock)) for s in range(clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        lost = corrupt = 0
        with httpx.Client(base_url=url, timeout=120) as http:
            for evaluation_id, rows in results["acknowledged"].items():
                stored = http.get(f"/v1/evaluations/{evaluation_id}", params={"per_sample": "true"})
                if stored.status_code == 404:
                    lost += 1
                elif stored.status_code != 200 or stored.json()["per_sample"]["cross_entropy"] != rows:
                    corrupt += 1
        alive = server.poll() is None
    finally:
        server.terminate()
        server.wait()
    total = sum(len(v) for v in results["latencies"].values())
    print(
        f"\n{backend}, {clients} clients, {seconds:.0f} s: {total / elapsed:7.1f} writes/s "
        f"({total / elapsed / baseline:.3f}x the same clients' /healthz rate of {baseline:.0f} req/s)"
    )
    for name, values in sorted(results["latencies"].items()):
        values.sort()
        p99 = values[int(0.99 * (len(values) - 1))]
        print(
            f"  {name:<10} n={len(values):5d}  p50 {statistics.median(values) * 1e3:7.1f} ms  p99 {p99 * 1e3:7.1f} ms"
        )
    print(
        f"  server alive: {alive}; 5xx: {len(results['errors'])}; acknowledged evaluations: "
        f"{len(results['acknowledged'])}; lost: {lost}; corrupt: {corrupt}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        backends = {"sqlite": f"sqlite:///{tmp}/load.db"}
        if os.environ.get("CALIPER_TEST_POSTGRES_URL"):
            backends["postgres"] = os.environ["CALIPER_TEST_POSTGRES_URL"]
        for backend, url in backends.items():
            settings = Settings(database_url=url)
            if backend == "postgres":
                downgrade(settings, "base")
            upgrade(settings)
            for clients in args.clients:
                run(backend, url, clients, args.seconds)


if __name__ == "__main__":
    main()
