"""Predict through the service against onnxruntime in the client process.

(1) 100,000 rows float32 sent as a multipart .npy part, logits back as .npz: end-to-end time against
    `InferenceSession.run` on the same inputs in this process (target ≤ 1.5x), for the digits demo MLP
    (64 → 32 → 10) and a wider MLP (256 → 1024 → 1000).
(2) a single-row predict: median latency against the same request's `InferenceSession.run` (the
    worker-process overhead, target ≤ 1 ms).
(1b) where the time of (1) goes, for the digits MLP: each stage of the request alone, in this process (the
    multipart parse and .npy decode; the request body alone over HTTP, to an unknown model, answered 404
    once it was read and decoded; the worker hop with its chunks; predict's probabilities; the .npz
    encoding), against the same `InferenceSession.run`.
(3) an evaluation of the digits MLP on 1,000,000 rows, in-process: the streamed model evaluation against
    predict + a separate evaluation of the materialised logits (target ≤ 1.1x), with the Python heap peak
    beyond the inputs (tracemalloc) and the worker's peak RSS (target: bounded by the chunk, not by N).
Run: `.venv/bin/python -m bench.models`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from app.api.multipart import parse_multipart
from app.config import DEFAULT_PROJECT, Settings
from app.context import Resources
from app.evaluation.schemas import EvaluationRequest, ModelEvaluationRequest
from app.models.schemas import ModelRequest
from app.models.workers import WorkerLimits, WorkerPool
from app.pipelines.heads import Heads
from app.storage.migrate import upgrade
from app.storage.models import ModelRecord
from app.storage.tenancy import set_project
from app.tensors import decode_npy
from bench.http import start_caliper
from bench.timing import median_seconds, sized

ROOT = Path(__file__).resolve().parents[1]


def wide_mlp() -> bytes:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.normal(size=(256, 1024)) / 16).astype(np.float32), "w1"),
        numpy_helper.from_array((rng.normal(size=(1024, 1000)) / 32).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["embedding"]),
        helper.make_node("MatMul", ["embedding", "w2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=sized(100_000, 2_000))
    parser.add_argument("--repeats", type=int, default=sized(3, 1))
    parser.add_argument("--evaluation-rows", type=int, default=sized(1_000_000, 5_000))
    args = parser.parse_args()
    tmp = tempfile.mkdtemp()
    os.environ["CALIPER_ARTIFACT_DIR"] = f"{tmp}/artifacts"  # start_caliper passes the environment on
    settings = Settings(database_url=f"sqlite:///{tmp}/bench.db")
    upgrade(settings)
    server, url = start_caliper(settings.database_url)
    client = httpx.Client(base_url=url, timeout=600)
    try:
        models = {
            "digits MLP 64-32-10": (ROOT / "models/digits_mlp.onnx").read_bytes(),
            "MLP 256-1024-1000": wide_mlp(),
        }
        print(f"(1) predict on {args.rows:,} rows float32, multipart .npy in, .npz out")
        for name, data in models.items():
            width = onnx.load_from_string(data).graph.input[0].type.tensor_type.shape.dim[1].dim_value
            x = np.random.default_rng(1).random((args.rows, width), dtype=np.float32)
            model = client.post("/v1/models", files={"file": ("m.onnx", data)}, data={"name": name}).json()
            session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
            body = npy(x)

            def remote(body: bytes = body, model_id: str = model["id"]) -> None:
                response = client.post(
                    f"/v1/models/{model_id}/predict",
                    files={"inputs.x": ("x.npy", body)},
                    headers={"accept": "application/x-npz"},
                )
                response.raise_for_status()

            local = median_seconds(lambda x=x, session=session: session.run(None, {"x": x}), args.repeats)
            over = median_seconds(remote, args.repeats)
            print(
                f"  {name:<22} InferenceSession {local * 1e3:8.1f} ms   service {over * 1e3:8.1f} ms"
                f"   ratio {over / local:5.2f}x (target ≤ 1.5x)"
            )
        stages(args.rows, args.repeats, client)
        print("\n(2) one row, JSON in and out (median of 200)")
        data = models["digits MLP 64-32-10"]
        model = client.post("/v1/models", files={"file": ("m.onnx", data)}, data={"name": "one"}).json()
        row = np.random.default_rng(2).random((1, 64), dtype=np.float32)
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        payload = json.dumps({"inputs": {"x": row.tolist()}})
        samples = []
        for _ in range(200):
            start = time.perf_counter()
            client.post(
                f"/v1/models/{model['id']}/predict", content=payload, headers={"content-type": "application/json"}
            )
            samples.append(time.perf_counter() - start)
        hop = worker_hop(data, row)  # before the in-process session runs: its spinning threads would share the CPUs
        local = median_seconds(lambda: session.run(None, {"x": row}), 50)
        remote = statistics.median(samples)
        print(f"  InferenceSession {local * 1e3:.3f} ms   whole HTTP request {remote * 1e3:.3f} ms")
        print(
            f"  worker hop (WorkerPool.run) {hop * 1e3:.3f} ms   overhead {(hop - local) * 1e3:.3f} ms (target ≤ 1 ms)"
        )
        streamed_evaluation(args.evaluation_rows)
    finally:
        client.close()
        server.terminate()
        server.wait()


def digits_in_process() -> tuple[Resources, ModelRecord]:
    """A composition root on a fresh SQLite database with the digits demo model uploaded."""
    tmp = tempfile.mkdtemp()
    set_project(DEFAULT_PROJECT)
    resources = Resources.create(Settings(database_url=f"sqlite:///{tmp}/e.db", artifact_dir=f"{tmp}/a"))
    upgrade(resources.settings)
    upload = resources.artifacts.writer()
    upload.write((ROOT / "models/digits_mlp.onnx").read_bytes())
    created = resources.models.create(ModelRequest(name="digits"), upload)
    return resources, resources.predictions.runner.get(created.id)


def stages(rows: int, repeats: int, client: httpx.Client) -> None:
    resources, record = digits_in_process()
    x = np.random.default_rng(1).random((rows, 64), dtype=np.float32)
    session = ort.InferenceSession((ROOT / "models/digits_mlp.onnx").read_bytes(), providers=["CPUExecutionProvider"])
    request = httpx.Request("POST", "http://bench/", files={"inputs.x": ("x.npy", npy(x))})
    body, content_type = request.read(), request.headers["content-type"]
    columns = resources.predictions.predict(record.id, {"x": x}, Heads())

    def decoded() -> None:
        for part in parse_multipart(body, content_type):
            decode_npy(part.name, part.data)

    def sent() -> None:
        response = client.post("/v1/models/unknown/predict", content=body, headers={"content-type": content_type})
        assert response.status_code == 404  # after the body was read, parsed and decoded

    def encoded() -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **columns)  # type: ignore[arg-type]
        buffer.getvalue()

    timings = {
        "InferenceSession.run": median_seconds(lambda: session.run(None, {"x": x}), repeats),
        "multipart parse + .npy decode": median_seconds(decoded, repeats),
        "HTTP: the body sent, read, decoded": median_seconds(sent, repeats),
        "worker hop (runner, chunked)": median_seconds(
            lambda: resources.predictions.runner.outputs(record, {"x": x}, ["logits"]), repeats
        ),
        "predict (hop + probabilities)": median_seconds(
            lambda: resources.predictions.predict(record.id, {"x": x}, Heads()), repeats
        ),
        ".npz encoding of the answer": median_seconds(encoded, repeats),
    }
    base = timings["InferenceSession.run"]
    print(f"\n(1b) where the time goes, digits MLP, {rows:,} rows, each stage alone in this process")
    for name, seconds in timings.items():
        print(f"  {name:<32} {seconds * 1e3:8.1f} ms   {seconds / base:5.2f}x the run")
    resources.close()


def streamed_evaluation(rows: int) -> None:
    resources, record = digits_in_process()
    rng = np.random.default_rng(3)
    x, labels = rng.random((rows, 64), dtype=np.float32), rng.integers(0, 10, rows)
    runner = resources.predictions.runner

    def streamed() -> None:
        resources.evaluations.create_from_model(
            record.id, ModelEvaluationRequest(store=False), {"inputs.x": x, "labels": labels}
        )

    def materialised() -> None:
        logits = runner.outputs(record, {"x": x}, ["logits"])["logits"]
        resources.evaluations.create(EvaluationRequest(store=False), {"logits": logits, "labels": labels})

    print(f"\n(3) evaluation of the digits MLP on {rows:,} rows (inputs {x.nbytes / 2**20:.0f} MiB), in-process")
    runner.outputs(record, {"x": x[:1000]}, ["logits"])  # every worker started, its session loaded
    runner.outputs(record, {"x": x[:1000]}, ["logits"])
    before = {pid: peak_rss_mib(pid) for pid in resources.workers.pids()}
    timings = {}
    for name, run in (("predict + evaluation", materialised), ("streamed model evaluation", streamed)):
        run()  # warm the sessions
        tracemalloc.start()
        start = time.perf_counter()
        run()
        timings[name] = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"  {name:<27} {timings[name]:6.2f} s   heap peak {peak / 2**20:7.1f} MiB")
    ratio = timings["streamed model evaluation"] / timings["predict + evaluation"]
    print(f"  streamed / materialised: {ratio:.2f}x (target ≤ 1.1x)")
    for pid in resources.workers.pids():
        print(
            f"  worker {pid} peak RSS {before.get(pid, 0):.0f} MiB loaded, {peak_rss_mib(pid):.0f} MiB after both runs"
        )
    resources.close()


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1024


def worker_hop(data: bytes, row: np.ndarray) -> float:
    """The worker-process hop alone: WorkerPool.run on one row (shared memory both ways, one pipe round trip)."""
    path = Path(tempfile.mkdtemp()) / "m.onnx"
    path.write_bytes(data)
    pool = WorkerPool(1, WorkerLimits(memory_bytes=4 << 30, timeout_s=60))
    try:
        pool.load("bench", str(path))
        hop = median_seconds(lambda: pool.run("bench", str(path), {"x": row}, ["logits"]), 200, warmup=20)
    finally:
        pool.close()
    return hop


if __name__ == "__main__":
    main()
