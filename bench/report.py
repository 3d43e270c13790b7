"""The web report's server time: the page of a stored 1M-row evaluation (with a confusion matrix, per-class
F1 and 100 slices) against the JSON `GET /v1/evaluations/{id}` of the same evaluation, in process
(TestClient, SQLite in a temporary folder). Target: the page ≤ 100 ms. Run: `.venv/bin/python -m bench.report`."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.config import Settings
from app.evaluation.schemas import EvaluationRequest
from app.storage.migrate import upgrade
from app.storage.tenancy import set_project
from bench.timing import median_seconds, report, sized


def main(n: int = sized(1_000_000, 3_000), classes: int = 10, groups: int = sized(100, 5)) -> None:
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(database_url=f"sqlite:///{Path(folder) / 'bench.db'}", artifact_dir=Path(folder) / "a")
        upgrade(settings)
        app = create_app(settings)
        set_project(settings.project)  # what the server runs its requests as, with auth disabled
        rng = np.random.default_rng(0)
        labels = rng.integers(0, classes, n)
        logits = (rng.normal(size=(n, classes)) + 2 * np.eye(classes)[labels]).astype(np.float32)
        request = EvaluationRequest.model_validate({
            "metrics": ["accuracy", "nll", "ece", "f1", {"name": "f1", "average": "none", "key": "f1_per_class"},
                        "confusion_matrix"],
            "model": "bench", "dataset": "synthetic",
        })  # fmt: skip
        arrays = {"logits": logits, "labels": labels, "slices.group": rng.integers(0, groups, n)}
        evaluation_id = app.state.resources.evaluations.create(request, arrays).id
        with TestClient(app, base_url="http://127.0.0.1") as client:
            first = client.get(f"/ui/evaluations/{evaluation_id}")
            assert first.status_code == 200, first.text[:2000]
            rows = {
                "GET /v1/evaluations/{id} (JSON)": median_seconds(
                    lambda: client.get(f"/v1/evaluations/{evaluation_id}"), repeats=21
                ),
                "GET /ui/evaluations/{id} (page)": median_seconds(
                    lambda: client.get(f"/ui/evaluations/{evaluation_id}"), repeats=21
                ),
                "GET /ui/models/bench (history)": median_seconds(lambda: client.get("/ui/models/bench"), repeats=21),
            }
        report(
            f"web report, one stored evaluation of {n:,} rows x {classes} classes, {groups} slices (target: page "
            "≤ 100 ms)",
            rows,
            "GET /v1/evaluations/{id} (JSON)",
        )
        app.state.resources.close()


if __name__ == "__main__":
    main()
