"""A client generated from /openapi.json by openapi-python-client (a tool no one here wrote): it covers
every operation and request model, and an evaluation, a calibrator fit and a problem response round-trip
through it against a live server."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.conftest import Y_A, Z_A

PACKAGE = "caliper_generated"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory, app: Any) -> Any:
    root = tmp_path_factory.mktemp("generated")
    (root / "openapi.json").write_text(json.dumps(app.openapi()))
    (root / "config.yaml").write_text(f"package_name_override: {PACKAGE}\nproject_name_override: {PACKAGE}\n")
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("openapi-python-client")),
            "generate",
            "--path",
            "openapi.json",
            "--config",
            "config.yaml",
            "--meta",
            "none",
            "--output-path",
            PACKAGE,
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    warnings = [line for line in done.stdout.splitlines() if "Warning" in line or "Unable" in line]
    assert all("ruff" in done.stdout for _ in warnings), done.stdout  # the only warning: no ruff on PATH
    assert "Unable to" not in done.stdout and "Invalid" not in done.stdout, done.stdout
    sys.path.insert(0, str(root))
    yield importlib.import_module(PACKAGE)
    sys.path.remove(str(root))


def test_every_operation_and_request_model_is_generated(generated: Any, client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    package = Path(generated.__file__).parent
    modules = {p.stem for p in (package / "api").rglob("*.py") if p.stem != "__init__"}
    snake = {_snake(op["operationId"]) for ops in spec["paths"].values() for op in ops.values()}
    assert snake == modules
    models = {p.stem for p in (package / "models").glob("*.py")}
    for name in spec["components"]["schemas"]:
        if name.endswith("Request"):
            assert _snake(name) in models, name


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def test_an_evaluation_a_calibrator_and_a_problem_round_trip(generated: Any, live_server: str) -> None:
    client = generated.Client(base_url=live_server, raise_on_unexpected_status=True)
    models = importlib.import_module(f"{PACKAGE}.models")
    evaluations = importlib.import_module(f"{PACKAGE}.api.evaluations.create_evaluation")
    calibrators = importlib.import_module(f"{PACKAGE}.api.calibrators.create_calibrator")
    get_evaluation = importlib.import_module(f"{PACKAGE}.api.evaluations.get_evaluation")

    body = models.EvaluationRequest.from_dict(
        {
            "logits": Z_A.tolist(),
            "labels": Y_A.tolist(),
            "tags": {"split": "val"},
            "losses": ["cross_entropy", {"name": "focal", "gamma": 2.0, "key": "focal_g2"}],  # the README's shorthand
            "metrics": ["accuracy", {"name": "ece", "bins": 15}],
        }
    )
    created = evaluations.sync(client=client, body=body)
    assert isinstance(created, models.EvaluationOut), created
    assert set(created.losses.to_dict()) == {"cross_entropy", "focal_g2"}
    assert set(created.metrics.to_dict()) == {"accuracy", "ece"}
    assert created.tags.to_dict() == {"split": "val"}
    assert created.metrics.to_dict()["accuracy"] == pytest.approx(np.mean(np.argmax(Z_A, 1) == Y_A))
    fetched = get_evaluation.sync(created.id, client=client)
    assert isinstance(fetched, models.EvaluationOut) and fetched.id == created.id

    fit = models.CalibratorRequest.from_dict({"method": "temperature", "logits": Z_A.tolist(), "labels": Y_A.tolist()})
    calibrator = calibrators.sync(client=client, body=fit)
    assert isinstance(calibrator, models.CalibratorOut), calibrator
    assert calibrator.fitted.to_dict()["temperature"] > 0

    scores = importlib.import_module(f"{PACKAGE}.api.ood.score_logits")
    scored = scores.sync(
        client=client, body=models.ScoresRequest.from_dict({"logits": Z_A.tolist(), "methods": ["msp"]})
    )
    assert set(scored.scores.to_dict()) == {"msp"}, scored

    missing = get_evaluation.sync_detailed("nope", client=client)
    assert missing.status_code == 404
    assert isinstance(missing.parsed, models.Problem)
    assert missing.parsed.status == 404 and "nope" in missing.parsed.detail
