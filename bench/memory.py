"""Peak server memory per request against the body's size, for the three tensor transports: nested JSON
lists, base64 tensor objects in JSON, and multipart .npy parts. Each body goes to a fresh server (so the
kernel's high-water mark, VmHWM, belongs to that request alone); the figure is (VmHWM − RSS before) /
body bytes. Run: `.venv/bin/python -m bench.memory [--rows 1000000]`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
from pathlib import Path

import httpx
import numpy as np
from caliper_client.wire import encode_tensor_object

from app.config import Settings
from app.storage.migrate import upgrade
from bench.http import start_caliper
from bench.timing import sized


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _bodies(rows: int, classes: int) -> dict[str, tuple[bytes, dict[str, str]]]:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(rows, classes)).astype(np.float32)
    labels = rng.integers(0, classes, rows)
    options = {"store": False}
    as_lists = json.dumps({**options, "logits": logits.round(5).tolist(), "labels": labels.tolist()}).encode()
    as_b64 = json.dumps(
        {**options, "logits": encode_tensor_object(logits), "labels": encode_tensor_object(labels)}
    ).encode()
    parts = []
    for name, array in (("logits", logits), ("labels", labels)):
        buffer = io.BytesIO()
        np.save(buffer, array)
        parts.append((name, buffer.getvalue()))
    boundary = "caliperbench"
    multipart = (
        b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.npy"\r\n\r\n'.encode()
            + data
            + b"\r\n"
            for name, data in [("request", json.dumps(options).encode()), *parts]
        )
        + f"--{boundary}--\r\n".encode()
    )
    json_type = {"content-type": "application/json"}
    return {
        "JSON nested lists": (as_lists, json_type),
        "JSON base64 tensor objects": (as_b64, json_type),
        "multipart .npy parts": (multipart, {"content-type": f"multipart/form-data; boundary={boundary}"}),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=sized(1_000_000, 5_000))
    parser.add_argument("--classes", type=int, default=4)
    args = parser.parse_args()
    bodies = _bodies(args.rows, args.classes)
    print(f"peak server memory per request, {args.rows:,} x {args.classes} float32 logits (store=false)")
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(database_url=f"sqlite:///{tmp}/memory.db")
        upgrade(settings)
        os.environ["CALIPER_MAX_JSON_BYTES"] = str(max(len(b) for b, _ in bodies.values()) + 1)
        for name, (body, headers) in bodies.items():
            server, url = start_caliper(settings.database_url)
            try:
                httpx.post(url + "/v1/evaluations", json={"logits": [[0.0, 1.0]], "labels": [0], "store": False})
                before = _kib(server.pid, "VmRSS")
                response = httpx.post(url + "/v1/evaluations", content=body, headers=headers, timeout=600)
                assert response.status_code == 201, response.text[:300]
                peak = _kib(server.pid, "VmHWM")
            finally:
                server.terminate()
                server.wait()
            print(
                f"  {name:<28} body {len(body) / 2**20:7.1f} MiB   peak +{(peak - before) / 2**20:7.1f} MiB"
                f"   {(peak - before) / len(body):5.2f}x the body"
            )


if __name__ == "__main__":
    main()
