"""V2 serving of a pipeline against the same exported model behind a bare FastAPI route.

The digits demo MLP with a temperature calibrator and a KNN detector is deployed as a pipeline on a real
Caliper server (subprocess, uvicorn, model workers); the baseline is a bare FastAPI app (subprocess,
uvicorn) whose one route reads the same V2 binary request, calls `InferenceSession.run` on the same
exported file in-process and answers the same V2 binary response: the difference is Caliper's request
handling and the worker hop, the price of running the model outside the API process.

(1) single-row V2 binary infer: median and p99 latency over one keep-alive connection, and throughput
    with 8 concurrent keep-alive clients (target ≥ 0.9x the bare route's throughput); the same pipeline
    over V2 gRPC with tritonclient.grpc, 8 clients on their own channels (target ≥ 1.5x the REST rate);
(2) 100,000 × 64 float32 binary infer: end-to-end against `session.run` on the same file in this process
    (target ≤ 1.5x), with the bare route's time for the same request (what HTTP alone costs), and against
    the same request as V2 JSON (binary should be ≥ 10x faster).
Run: `.venv/bin/python -m bench.serving` (part of `make bench`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

from app.config import Settings
from app.storage.migrate import upgrade
from bench.http import free_port, start_caliper, wait_ready
from bench.timing import median_seconds, sized

ROOT = Path(__file__).resolve().parents[1]
HEADER = "Inference-Header-Content-Length"

BARE_APP = """
import json, sys
import numpy as np, onnxruntime as ort
from fastapi import FastAPI, Request, Response
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
names = [o.name for o in session.get_outputs()]
app = FastAPI()
@app.get("/ready")
def ready() -> dict:
    return {}
@app.post("/v2/models/digits/infer")
async def infer(request: Request) -> Response:
    body = await request.body()
    length = int(request.headers["Inference-Header-Content-Length"])
    header = json.loads(body[:length])
    given = header["inputs"][0]
    x = np.frombuffer(body, np.float32, offset=length).reshape(given["shape"])
    outputs = dict(zip(names, session.run(None, {given["name"]: x})))
    described, raw = [], []
    for name, value in outputs.items():
        data = value.tobytes()
        described.append({"name": name, "datatype": "FP32", "shape": list(value.shape),
                          "parameters": {"binary_data_size": len(data)}})
        raw.append(data)
    text = json.dumps({"model_name": "digits", "model_version": "1", "outputs": described}).encode()
    return Response(text + b"".join(raw), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(text))})
"""


def binary_body(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """What tritonclient.http sends for one binary FP32 input and no named outputs."""
    header = {
        "inputs": [
            {"name": "x", "shape": list(x.shape), "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}
        ],
        "parameters": {"binary_data_output": True},
    }
    text = json.dumps(header).encode()
    return text + x.tobytes(), {HEADER: str(len(text))}


def json_body(x: np.ndarray) -> bytes:
    given = {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}
    return json.dumps({"inputs": [given]}).encode()


def deploy(url: str) -> bytes:
    """Upload the digits model, fit its heads from the validation split, deploy; the export's bytes."""
    val = np.load(ROOT / "models" / "digits_val.npz")
    with httpx.Client(base_url=url, timeout=120) as http, open(ROOT / "models" / "digits_mlp.onnx", "rb") as f:
        model = http.post("/v1/models", files={"file": f}, data={"name": "digits", "embedding_output": "embedding"})
        model_id = model.json()["id"]
        fit = {"model_id": model_id, "inputs": {"x": val["x"].tolist()}, "labels": val["labels"].tolist()}
        calibrator = http.post("/v1/calibrators", json={"method": "temperature", **fit}).json()["id"]
        detector = http.post("/v1/detectors", json={"method": "knn", "params": {"k": 10}, **fit}).json()["id"]
        body = {"name": "digits", "model_id": model_id, "calibrator_id": calibrator, "detector_id": detector}
        pipeline = http.post("/v1/pipelines", json=body).json()
        return http.get(f"/v1/pipelines/{pipeline['id']}/onnx").content


def start_bare(export: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    script = export.with_name("bare.py")
    script.write_text(BARE_APP)
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import sys, uvicorn; sys.argv=['x', {str(export)!r}]; exec(open({str(script)!r}).read()); "
            f"uvicorn.run(app, port={port}, log_level='warning', access_log=False)",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, "/ready")
    return server, url


def post(http: httpx.Client, body: bytes, headers: dict[str, str], model: str = "digits") -> httpx.Response:
    response = http.post(f"/v2/models/{model}/infer", content=body, headers=headers)
    assert response.status_code == 200, response.text
    return response


def latency(url: str, body: bytes, headers: dict[str, str], count: int) -> tuple[float, float]:
    samples = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for _ in range(20):
            post(http, body, headers)
        for _ in range(count):
            start = time.perf_counter()
            post(http, body, headers)
            samples.append(time.perf_counter() - start)
    samples.sort()
    return statistics.median(samples), samples[int(0.99 * (len(samples) - 1))]


def throughput(
    url: str, body: bytes, headers: dict[str, str], clients: int, per_client: int, model: str = "digits"
) -> float:
    """Requests per second of `clients` threads, each with its own keep-alive connection, to `model`."""

    def connect() -> tuple[Callable[[], object], Callable[[], None]]:
        http = httpx.Client(base_url=url, timeout=60)
        return lambda: post(http, body, headers, model), http.close

    return rate(connect, clients, per_client)


def rate(
    connect: Callable[[], tuple[Callable[[], object], Callable[[], None]]], clients: int, per_client: int
) -> float:
    """Calls per second of `clients` threads, each with its own connection: `connect()` gives a call and a close."""
    barrier = threading.Barrier(clients + 1)

    def run() -> None:
        call, close = connect()
        try:
            call()
            barrier.wait()
            for _ in range(per_client):
                call()
        finally:
            close()

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return clients * per_client / (time.perf_counter() - start)


def grpc_connect(address: str, x: np.ndarray) -> tuple[Callable[[], object], Callable[[], None]]:
    """A tritonclient.grpc channel of its own and the single-row infer on it."""
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(address)
    given = triton.InferInput("x", list(x.shape), "FP32")
    given.set_data_from_numpy(x)
    return lambda: client.infer("digits", [given]), client.close


def single_row(url: str, bare_url: str, grpc_address: str, requests: int) -> None:
    one_row = np.load(ROOT / "models" / "digits_test.npz")["x"][:1].astype(np.float32)
    body, headers = binary_body(one_row)
    print("\n(1) single-row V2 binary infer of the digits pipeline (calibrator + KNN detector)")
    rates = {}
    for name, target in (("caliper /v2", url), ("bare route, session.run", bare_url)):
        median, p99 = latency(target, body, headers, requests)
        rates[name] = throughput(target, body, headers, 8, requests // 8)
        print(
            f"  {name:<26} median {median * 1e3:6.2f} ms  p99 {p99 * 1e3:6.2f} ms  8 clients {rates[name]:7.0f} req/s"
        )
    rates["grpc"] = rate(lambda: grpc_connect(grpc_address, one_row), 8, requests // 8)
    print(f"  {'caliper V2 gRPC':<26} {'':44}8 clients {rates['grpc']:7.0f} req/s")
    ratio = rates["caliper /v2"] / rates["bare route, session.run"]
    print(f"  caliper REST throughput / bare: {ratio:.2f}x (target ≥ 0.9x)")
    print(f"  caliper gRPC throughput / REST: {rates['grpc'] / rates['caliper /v2']:.2f}x (target ≥ 1.5x)")


def large_batch(url: str, bare_url: str, export: Path, repeats: int) -> None:
    x = np.random.default_rng(0).normal(size=(sized(100_000, 2_000), 64)).astype(np.float32)
    body, headers = binary_body(x)
    text = json_body(x)
    session = ort.InferenceSession(str(export), providers=["CPUExecutionProvider"])
    with httpx.Client(base_url=url, timeout=600) as http, httpx.Client(base_url=bare_url, timeout=600) as bare:
        times = {
            "session.run in-process": median_seconds(lambda: session.run(None, {"x": x}), repeats),
            "bare route /v2 binary": median_seconds(lambda: post(bare, body, headers), repeats),
            "caliper /v2 binary": median_seconds(lambda: post(http, body, headers), repeats),
            "caliper /v2 JSON": median_seconds(
                lambda: post(http, text, {"Content-Type": "application/json"}), max(1, repeats // 2)
            ),
        }
    print("\n(2) 100,000 x 64 float32 through the same pipeline")
    base = times["session.run in-process"]
    for name, seconds in times.items():
        print(f"  {name:<26} {seconds * 1e3:9.1f} ms  {seconds / base:6.2f}x session.run")
    speedup = times["caliper /v2 JSON"] / times["caliper /v2 binary"]
    print(f"  binary vs JSON: {speedup:.1f}x faster (target ≥ 10x)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=sized(2000, 20))
    parser.add_argument("--repeats", type=int, default=sized(5, 1))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(database_url=f"sqlite:///{tmp}/bench.db")
        upgrade(settings)
        os.environ["CALIPER_ARTIFACT_DIR"] = f"{tmp}/artifacts"
        # the 100k-row V2 JSON request is ~130 MB: above the default JSON limit, which the bench lifts
        grpc_port = free_port()
        server, url = start_caliper(  # the default configuration: no rate limit
            settings.database_url, CALIPER_MAX_JSON_BYTES=str(256 << 20), CALIPER_RATE_LIMIT="",
            CALIPER_GRPC_PORT=str(grpc_port),
        )  # fmt: skip
        export = Path(tmp) / "digits-export.onnx"
        try:
            export.write_bytes(deploy(url))
            bare, bare_url = start_bare(export)
            try:
                single_row(url, bare_url, f"127.0.0.1:{grpc_port}", args.requests)
                large_batch(url, bare_url, export, args.repeats)
            finally:
                bare.terminate()
                bare.wait()
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
