"""Conformal prediction sets.

(1) Fit and predict sets for 1,000,000 × 100 float32 probabilities (LAC and APS, α = 0.1): Caliper's
    ONNX graphs (`ConformalPredictor`, as the service runs them) against MAPIE's
    `SplitConformalClassifier(prefit=True)` on the same probabilities in the same run (target ≥ 10x the
    faster peer). crepes' `predict_set` counts calibration scores per test score in Python-level loops
    (591 s for 100,000 × 100 on this machine), so it runs on 20,000 rows, with Caliper and MAPIE again at
    that size. MAPIE's APS is randomised and crepes has no APS score of its own (its p-values take any
    nonconformity score: here the same non-randomised APS scores, computed in numpy), so the APS rows
    compare the same work, not the same sets.
(2) V2 single-row binary infer of the digits pipeline with a conformal head against the same pipeline
    without it, 8 concurrent keep-alive clients (target ≥ 0.9x its throughput).
Run: `.venv/bin/python -m bench.conformal` (part of `make bench`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from app.config import Settings
from app.core.conformal import ConformalPredictor
from app.core.probability_inputs import Probabilities, as_given
from app.storage.migrate import upgrade
from bench.http import start_caliper
from bench.serving import ROOT, binary_body, throughput
from bench.timing import sized

GIVEN = Probabilities("probabilities", as_given, "bench")


def probabilities(n: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    z = (rng.normal(size=(n, classes)) * 2).astype(np.float32)
    z -= z.max(1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(1, keepdims=True)
    labels = (p.cumsum(1) < rng.uniform(size=(n, 1)).astype(np.float32)).sum(1).clip(0, classes - 1)
    return p, labels


def timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def caliper(method: str, p: np.ndarray, labels: np.ndarray) -> float:
    def run() -> None:
        predictor = ConformalPredictor(method, 0.1).fit(p, labels, GIVEN)  # type: ignore[arg-type]
        predictor.predict(p, GIVEN, f"bench:{method}")

    return timed(run)


def mapie(method: str, p: np.ndarray, labels: np.ndarray) -> float:
    from mapie.classification import SplitConformalClassifier
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Given(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
        def fit(self, x: np.ndarray, y: np.ndarray) -> Given:
            self.classes_ = np.arange(x.shape[1])
            return self

        def predict_proba(self, x: np.ndarray) -> np.ndarray:
            return x

        def predict(self, x: np.ndarray) -> np.ndarray:
            return np.argmax(x, 1)

    def run() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = SplitConformalClassifier(Given().fit(p, labels), confidence_level=0.9, conformity_score=method,
                                             prefit=True)  # fmt: skip
            model.conformalize(p, labels)
            model.predict_set(p)

    return timed(run)


def aps_scores(p: np.ndarray) -> np.ndarray:
    """Non-randomised APS scores of every class [N, C] in numpy (crepes takes scores, not probabilities)."""
    order = np.argsort(-p, axis=1, kind="stable")
    cumulative = np.cumsum(np.take_along_axis(p, order, 1), 1)
    scores = np.empty_like(cumulative)
    np.put_along_axis(scores, order, cumulative, 1)
    return scores


def crepes(method: str, p: np.ndarray, labels: np.ndarray) -> float:
    from crepes import ConformalClassifier

    def run() -> None:
        scores = 1 - p if method == "lac" else aps_scores(p)
        model = ConformalClassifier().fit(scores[np.arange(len(labels)), labels])
        model.predict_set(scores, confidence=0.9, smoothing=False)

    return timed(run)


def sets(n: int, classes: int, peers: dict[str, Callable[[str, np.ndarray, np.ndarray], float]]) -> None:
    p, labels = probabilities(n, classes)
    caliper("lac", p[:1000], labels[:1000])  # the sessions' first build is not the figure
    print(f"\n(1) fit + predict sets, {n:,} x {classes} float32 probabilities, alpha = 0.1 (one run each)")
    for method in ("lac", "aps"):
        times = {"caliper": caliper(method, p, labels)} | {name: run(method, p, labels) for name, run in peers.items()}
        faster = min(v for k, v in times.items() if k != "caliper")
        print(f"  {method}: " + "  ".join(f"{k} {v:7.2f} s" for k, v in times.items())
              + f"  -> {faster / times['caliper']:.1f}x the faster peer (target ≥ 10x)")  # fmt: skip


def deploy_pair(url: str) -> None:
    """The digits model with a calibrator as `plain`, and with the calibrator and an APS head as `guarded`."""
    val = np.load(ROOT / "models" / "digits_val.npz")
    with httpx.Client(base_url=url, timeout=120) as http, open(ROOT / "models" / "digits_mlp.onnx", "rb") as f:
        model_id = http.post("/v1/models", files={"file": f}, data={"name": "digits"}).json()["id"]
        fit = {"model_id": model_id, "inputs": {"x": val["x"].tolist()}, "labels": val["labels"].tolist()}
        calibrator = http.post("/v1/calibrators", json={"method": "temperature", **fit}).json()["id"]
        conformal = http.post("/v1/conformal", json={"method": "aps", "calibrator_id": calibrator, **fit}).json()["id"]
        for name, heads in (("plain", {}), ("guarded", {"conformal_id": conformal})):
            body = {"name": name, "model_id": model_id, "calibrator_id": calibrator, **heads}
            assert http.post("/v1/pipelines", json=body).status_code == 201


def serving(url: str, requests: int) -> None:
    one_row = np.load(ROOT / "models" / "digits_test.npz")["x"][:1].astype(np.float32)
    body, headers = binary_body(one_row)
    rates: dict[str, list[float]] = {"plain": [], "guarded": []}
    for _ in range(3):  # alternated, so that drift of the machine touches both alike
        for name in rates:
            rates[name].append(throughput(url, body, headers, 8, requests // 8, name))
    plain, guarded = (statistics.median(rates[name]) for name in ("plain", "guarded"))
    print("\n(2) single-row V2 binary infer, 8 clients, digits pipeline with a calibrator (median of 3 runs)")
    print(f"  without conformal head {plain:7.0f} req/s  runs {[round(r) for r in rates['plain']]}")
    print(f"  with an APS head       {guarded:7.0f} req/s  runs {[round(r) for r in rates['guarded']]}"
          f"  -> {guarded / plain:.2f}x (target ≥ 0.9x)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=sized(1_000_000, 2_000))
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--requests", type=int, default=sized(800, 20))
    args = parser.parse_args()
    sets(args.rows, args.classes, {"mapie": mapie})
    sets(sized(20_000, 500), args.classes, {"mapie": mapie, "crepes": crepes})
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(database_url=f"sqlite:///{tmp}/bench.db")
        upgrade(settings)
        os.environ["CALIPER_ARTIFACT_DIR"] = str(Path(tmp) / "artifacts")
        server, url = start_caliper(settings.database_url)
        try:
            deploy_pair(url)
            serving(url, args.requests)
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
