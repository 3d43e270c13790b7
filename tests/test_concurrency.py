"""16 concurrent clients write evaluations, detector fits and gates to a real server (uvicorn on loopback)
for a bounded time, on SQLite and (in CI) Postgres; then every acknowledged record is read back and
every stored blob decodes to what was sent. `bench/load.py` runs the same mix longer and reports rates."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI

from app.ood.methods import fit_detector
from app.ood.schemas import DetectorRequest
from app.storage.blobs import decode_arrays
from app.storage.models import DetectorRecord

CLIENTS = 16
SECONDS = 4.0
MAX_ROUNDS = 12  # per client: bounded in count as well as in time


@dataclass
class Acknowledged:
    evaluations: dict[str, list[float]] = field(default_factory=dict)  # id -> per-row losses answered
    detectors: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> the fit request sent
    gates: dict[str, str] = field(default_factory=dict)  # id -> verdict answered
    failures: list[str] = field(default_factory=list)


def _writer(base: str, seed: int, out: Acknowledged, lock: threading.Lock) -> None:
    rng = np.random.default_rng(seed)
    stop = time.monotonic() + SECONDS
    with httpx.Client(base_url=base, timeout=60) as http:
        previous: str | None = None
        for _ in range(MAX_ROUNDS):
            if time.monotonic() > stop:
                break
            n = int(rng.integers(5, 300))
            body = {"logits": rng.normal(size=(n, 4)).tolist(), "labels": rng.integers(0, 4, n).tolist()}
            evaluation = http.post("/v1/evaluations", json={**body, "per_sample": True, "model": f"m{seed}"})
            features = rng.normal(size=(int(rng.integers(20, 80)), 5))
            fit = {
                "method": "mahalanobis",
                "features": features.tolist(),
                "labels": (np.arange(len(features)) % 3).tolist(),
            }
            detector = http.post("/v1/detectors", json=fit)
            gate = None
            if evaluation.status_code == 201 and previous is not None:
                rules = [{"metric": "accuracy", "op": "max_decrease_abs", "value": 0.5}]
                gate = http.post(
                    "/v1/gates", json={"candidate": evaluation.json()["id"], "baseline": previous, "rules": rules}
                )
            with lock:
                for response in (evaluation, detector, gate):
                    if response is not None and response.status_code != 201:
                        out.failures.append(
                            f"{response.request.url.path}: {response.status_code} {response.text[:200]}"
                        )
                if evaluation.status_code == 201:
                    created = evaluation.json()
                    out.evaluations[created["id"]] = created["per_sample"]["cross_entropy"]
                    previous = created["id"]
                if detector.status_code == 201:
                    out.detectors[detector.json()["id"]] = fit
                if gate is not None and gate.status_code == 201:
                    out.gates[gate.json()["id"]] = gate.json()["verdict"]


def test_concurrent_writers_lose_and_corrupt_nothing(live_server: str, app: FastAPI) -> None:
    out, lock = Acknowledged(), threading.Lock()
    threads = [threading.Thread(target=_writer, args=(live_server, seed, out, lock)) for seed in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not out.failures, out.failures[:5]
    assert len(out.evaluations) >= CLIENTS and out.detectors and out.gates
    with httpx.Client(base_url=live_server, timeout=60) as http:
        for evaluation_id, rows in out.evaluations.items():
            stored = http.get(f"/v1/evaluations/{evaluation_id}", params={"per_sample": "true"})
            assert stored.status_code == 200, stored.text
            assert stored.json()["per_sample"]["cross_entropy"] == rows  # this request's rows, bit for bit
        for gate_id, verdict in out.gates.items():
            assert http.get(f"/v1/gates/{gate_id}").json()["verdict"] == verdict
    with app.state.resources.database() as session:
        for detector_id, fit in out.detectors.items():
            record = session.get(DetectorRecord, detector_id)
            assert record is not None, detector_id
            stored_arrays = decode_arrays(record.arrays, f"detector {detector_id}")  # verified against its digest
            request = DetectorRequest.model_validate({k: v for k, v in fit.items() if k not in ("features", "labels")})
            detector, _ = fit_detector(
                request,
                {"features": np.asarray(fit["features"]), "labels": np.asarray(fit["labels"])},
                app.state.resources.runtime,
            )
            expected = detector.fitted_arrays()
            assert stored_arrays.keys() == expected.keys()
            for name, value in expected.items():
                np.testing.assert_array_equal(stored_arrays[name], value, err_msg=f"{detector_id}:{name}")
