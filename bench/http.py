"""HTTP overhead on a real uvicorn server.

(1) 1M x 10 float32 sent as multipart .npy: end-to-end request time against the same evaluation run
    in-process (target ≤ 1.5x), with and without storing.
(2) small JSON requests (8 x 10): median and p99 latency and requests/s over one keep-alive
    connection, against a bare FastAPI route returning the same JSON without computing (target: at
    least half of its throughput).
Run: `make bench` or `.venv/bin/python -m bench.http`.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from caliper_client import CaliperClient

from app.config import DEFAULT_PROJECT, Settings
from app.context import Resources
from app.evaluation.schemas import EvaluationRequest
from app.storage.migrate import upgrade
from app.storage.tenancy import set_project
from bench.timing import median_seconds, sized

BARE_APP = """
import json, sys
from fastapi import FastAPI
from fastapi.responses import JSONResponse
app = FastAPI()
payload = json.loads(sys.argv[1])
@app.post("/v1/evaluations")
async def bare() -> JSONResponse:
    return JSONResponse(payload, status_code=201)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(url: str, path: str = "/openapi.json") -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + path).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not start")


def start_caliper(database_url: str, **settings: str) -> tuple[subprocess.Popen[bytes], str]:
    """`caliper serve` on a free port, with CALIPER_* `settings` on top of the environment."""
    port = free_port()
    # No access log, like the bare server below: the comparison is of request handling, not logging.
    env = {
        **os.environ,
        "CALIPER_DATABASE_URL": database_url,
        "CALIPER_ACCESS_LOG": "false",
        "CALIPER_RATE_LIMIT": "100000/second",
        **settings,
    }  # the limiter runs, at a rate the loop stays under
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    return server, url


def start_bare(payload: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    script = Path(tempfile.mkdtemp()) / "bare.py"
    script.write_text(BARE_APP)
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import sys, uvicorn; sys.argv=['x', {payload!r}]; "
            f"exec(open({str(script)!r}).read()); uvicorn.run(app, port={port}, log_level='warning')",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    return server, url


def large_request(url: str, settings: Settings, repeats: int) -> None:
    rng = np.random.default_rng(0)
    rows = sized(1_000_000, 5_000)
    z = rng.normal(size=(rows, 10)).astype(np.float32)
    y = rng.integers(0, 10, rows)
    set_project(DEFAULT_PROJECT)  # what the server runs its requests as, with auth disabled
    evaluations = Resources.create(settings).evaluations  # the service code the server runs, in-process
    client = CaliperClient(url, multipart_threshold=0)
    print("\n(1) 1,000,000 x 10 float32, multipart .npy, default losses and metrics")
    for store in (False, True):
        request = EvaluationRequest(store=store)

        def in_process(request: EvaluationRequest = request) -> None:
            arrays = {"logits": z, "labels": y}
            evaluations.create(request, arrays)

        def over_http(store: bool = store) -> None:
            client.evaluate(logits=z, labels=y, store=store)

        local = median_seconds(in_process, repeats)
        remote = median_seconds(over_http, repeats)
        print(
            f"  store={store!s:<5}  in-process {local * 1e3:8.1f} ms   HTTP end-to-end {remote * 1e3:8.1f} ms"
            f"   ratio {remote / local:5.2f}x (target ≤ 1.5x)"
        )
    client.close()


def latency(url: str, body: dict[str, object], count: int) -> tuple[float, float, float]:
    samples = []
    with httpx.Client(base_url=url) as http:
        for _ in range(20):
            http.post("/v1/evaluations", json=body)
        start = time.perf_counter()
        for _ in range(count):
            t0 = time.perf_counter()
            response = http.post("/v1/evaluations", json=body)
            samples.append(time.perf_counter() - t0)
            assert response.status_code == 201, response.text
        elapsed = time.perf_counter() - start
    samples.sort()
    return statistics.median(samples), samples[int(0.99 * (len(samples) - 1))], count / elapsed


def small_requests(url: str, count: int) -> None:
    rng = np.random.default_rng(1)
    body: dict[str, object] = {
        "logits": rng.normal(size=(8, 10)).round(4).tolist(),
        "labels": rng.integers(0, 10, 8).tolist(),
    }
    print(f"\n(2) small JSON requests (8 x 10), {count} sequential requests over one keep-alive connection")
    expected = httpx.post(url + "/v1/evaluations", json={**body, "store": False}).text
    bare, bare_url = start_bare(expected)
    try:
        rows = {
            "bare FastAPI route (same JSON)": latency(bare_url, body, count),
            "caliper, store=false": latency(url, {**body, "store": False}, count),
            "caliper, store=true (SQLite)": latency(url, body, count),
        }
    finally:
        bare.terminate()
    base = rows["bare FastAPI route (same JSON)"][2]
    for name, (median, p99, rps) in rows.items():
        print(
            f"  {name:<32} median {median * 1e3:6.2f} ms  p99 {p99 * 1e3:6.2f} ms  {rps:7.0f} req/s"
            f"  {rps / base:5.2f}x bare throughput"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=sized(5, 1))
    parser.add_argument("--requests", type=int, default=sized(1000, 20))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(database_url=f"sqlite:///{tmp}/bench.db")
        upgrade(settings)
        server, url = start_caliper(settings.database_url)
        try:
            large_request(url, settings, args.repeats)
            small_requests(url, args.requests)
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
