"""Concurrent writers against a real server: 16 and 64 keep-alive clients posting evaluations (with
per-row arrays), detector fits and gates for a bounded time, on SQLite and on Postgres (when
CALIPER_TEST_POSTGRES_URL is set), each with API keys required and with auth disabled in the same run.
Prints throughput, p50/p99 latency per operation and answers by status, the auth-on/auth-off
throughput ratio (target ≥ 0.95) and the same clients' rate on /healthz as a baseline; then reads every
acknowledged evaluation back and counts lost, duplicated and corrupt rows (target: 0 errors, 0 lost,
0 duplicated). Rate limits are off: this measures the service, not its limiter.
Run: `.venv/bin/python -m bench.load [--seconds 60]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections import Counter, defaultdict
from typing import Any

import httpx
import numpy as np

from app.config import Settings
from app.storage.db import make_engine, make_session_factory
from app.storage.keys import ApiKeyRepository
from app.storage.migrate import downgrade, upgrade
from bench.http import start_caliper
from bench.timing import SMOKE, sized


def _client_loop(
    url: str, headers: dict[str, str], seed: int, seconds: float, results: dict[str, Any], lock: threading.Lock
) -> None:
    rng = np.random.default_rng(seed)
    stop = time.monotonic() + seconds
    latencies: dict[str, list[float]] = defaultdict(list)
    acknowledged: dict[str, list[float]] = {}
    statuses: Counter[int] = Counter()
    with httpx.Client(base_url=url, timeout=120, headers=headers) as http:
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
                statuses[response.status_code] += 1
                if name == "evaluation" and response.status_code == 201:
                    created = response.json()
                    acknowledged[created["id"]] = created["per_sample"]["cross_entropy"]
                    if previous is not None:
                        rules = [{"metric": "accuracy", "op": "max_decrease_abs", "value": 0.5}]
                        t0 = time.perf_counter()
                        gate = http.post(
                            "/v1/gates", json={"candidate": created["id"], "baseline": previous, "rules": rules}
                        )
                        latencies["gate"].append(time.perf_counter() - t0)
                        statuses[gate.status_code] += 1
                    previous = created["id"]
    with lock:
        for name, values in latencies.items():
            results["latencies"][name].extend(values)
        results["acknowledged"].update(acknowledged)
        results["statuses"].update(statuses)


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


def _write_key(database_url: str) -> str:
    engine = make_engine(database_url)
    try:
        return ApiKeyRepository(make_session_factory(engine)).create("load", "write", "bench")[1]
    finally:
        engine.dispose()


def _stored_ids(http: httpx.Client) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        page = http.get("/v1/evaluations", params={"limit": 500, **({"cursor": cursor} if cursor else {})}).json()
        ids += [item["id"] for item in page["items"]]
        if not (cursor := page["next_cursor"]):
            return ids


def run(backend: str, database_url: str, clients: int, seconds: float, auth: bool) -> float:
    """One load run; prints its figures and returns its throughput (requests/s)."""
    headers = {"Authorization": f"Bearer {_write_key(database_url)}"} if auth else {}
    server, url = start_caliper(
        database_url, CALIPER_AUTH="required" if auth else "disabled", CALIPER_RATE_LIMIT="",
        CALIPER_PROJECT="load",  # auth disabled runs as the project the key has, so reads compare alike
    )  # fmt: skip
    try:
        baseline = _healthz_rate(url, clients, min(seconds, 5.0))
        results: dict[str, Any] = {"latencies": defaultdict(list), "acknowledged": {}, "statuses": Counter()}
        lock = threading.Lock()
        threads = [
            threading.Thread(target=_client_loop, args=(url, headers, s, seconds, results, lock))
            for s in range(clients)
        ]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        lost = corrupt = 0
        with httpx.Client(base_url=url, timeout=120, headers=headers) as http:
            for evaluation_id, rows in results["acknowledged"].items():
                stored = http.get(f"/v1/evaluations/{evaluation_id}", params={"per_sample": "true"})
                if stored.status_code == 404:
                    lost += 1
                elif stored.status_code != 200 or stored.json()["per_sample"]["cross_entropy"] != rows:
                    corrupt += 1
            unacknowledged = len(set(_stored_ids(http)) - set(results["acknowledged"]))
        alive = server.poll() is None
    finally:
        server.terminate()
        server.wait()
    total = sum(len(v) for v in results["latencies"].values())
    print(
        f"\n{backend}, {clients} clients, auth {'on ' if auth else 'off'}, {seconds:.0f} s: {total / elapsed:7.1f} "
        f"requests/s ({total / elapsed / baseline:.3f}x the same clients' /healthz rate of {baseline:.0f} req/s)"
    )
    for name, values in sorted(results["latencies"].items()):
        values.sort()
        p99 = values[int(0.99 * (len(values) - 1))]
        print(
            f"  {name:<10} n={len(values):5d}  p50 {statistics.median(values) * 1e3:7.1f} ms  p99 {p99 * 1e3:7.1f} ms"
        )
    statuses = dict(sorted(results["statuses"].items()))
    errors = sum(n for status, n in statuses.items() if status >= 400)
    print(
        f"  answers by status: {statuses}; errors: {errors}; server alive: {alive}; acknowledged evaluations: "
        f"{len(results['acknowledged'])}; lost: {lost}; duplicated (stored, never acknowledged): {unacknowledged}; "
        f"corrupt: {corrupt}"
    )
    return total / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=sized(20, 2))
    parser.add_argument("--clients", type=int, nargs="+", default=[sized(16, 2), sized(64, 4)])
    parser.add_argument("--backends", nargs="+", default=["sqlite"] if SMOKE else ["sqlite", "postgres"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        backends = {"sqlite": f"sqlite:///{tmp}/load.db"}
        if os.environ.get("CALIPER_TEST_POSTGRES_URL"):
            backends["postgres"] = os.environ["CALIPER_TEST_POSTGRES_URL"]
        for backend, url in backends.items():
            if backend not in args.backends:
                continue
            for clients in args.clients:
                rates = {}
                for auth in (False, True):
                    settings = Settings(database_url=url)
                    downgrade(settings, "base")  # each run starts empty, so its rows can be counted
                    upgrade(settings)
                    rates[auth] = run(backend, url, clients, args.seconds, auth)
                print(
                    f"  => {backend}, {clients} clients: auth on / auth off throughput {rates[True] / rates[False]:.3f}"
                )


if __name__ == "__main__":
    main()
