"""`caliper model …` against a live server: upload, list, show, predict with a head, evaluate, delete,
and every failure an exit code 2 with the service's message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from scipy.special import softmax

from app.config import Settings
from tests import onnx_models
from tests.test_api_models import fit_temperature, plain_run


@pytest.fixture(autouse=True)
def _one_backend(settings: Settings) -> None:
    """The commands are HTTP clients: what they drive is tested on both backends in test_api_models."""
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("backend-independent: run on SQLite only")


def caliper(*args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CALIPER_URL"}
    command = [sys.executable, "-m", "caliper_client.cli", "model", *args, *(["--url", url] if url else [])]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_the_model_commands_round_trip(live_server: str, client: TestClient, tmp_path: Path) -> None:
    data, _ = onnx_models.mlp(dtype=np.float32)
    (tmp_path / "m.onnx").write_bytes(data)
    uploaded = caliper(
        "upload", str(tmp_path / "m.onnx"), "--name", "cli-mlp", "--embedding-output", "embedding", "--tag", "team=a",
        url=live_server,
    )  # fmt: skip
    assert uploaded.returncode == 0, uploaded.stderr
    model_id = uploaded.stdout.strip()
    listed = caliper("list", "--name", "cli-mlp", url=live_server)
    assert listed.returncode == 0 and listed.stdout.split()[:2] == [model_id, "cli-mlp"], listed.stdout
    shown = json.loads(caliper("show", model_id, url=live_server).stdout)
    assert shown["embedding_output"] == "embedding" and shown["tags"] == {"team": "a"}

    x = np.random.default_rng(3).normal(size=(50, 6)).astype(np.float32)
    expected = plain_run(data, x)
    labels = np.argmax(expected["logits"], axis=1)
    calibrator = fit_temperature(client, expected["logits"].astype(np.float64) * 0.5, labels)
    np.savez(tmp_path / "inputs.npz", x=x)
    np.save(tmp_path / "labels.npy", labels)
    out = tmp_path / "columns.npz"
    predicted = caliper(
        "predict", model_id, "--inputs", str(tmp_path / "inputs.npz"), "-o", str(out),
        "--calibrator", calibrator["id"], "--return-embedding", url=live_server,
    )  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr
    with np.load(out) as columns:
        np.testing.assert_array_equal(columns["logits"], expected["logits"])
        np.testing.assert_array_equal(columns["embedding"], expected["embedding"])
        temperature = calibrator["fitted"]["temperature"]
        want = softmax(expected["logits"].astype(np.float64) / temperature, axis=1)
        np.testing.assert_allclose(columns["probabilities"], want, rtol=1e-5, atol=1e-6)

    evaluated = caliper(
        "evaluate", model_id, "--inputs", str(tmp_path / "inputs.npz"), "--labels", str(tmp_path / "labels.npy"),
        "--metric", "accuracy", "--json", url=live_server,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    evaluation = json.loads(evaluated.stdout)
    assert evaluation["metrics"] == {"accuracy": 1.0} and evaluation["model_id"] == model_id

    assert caliper("delete", model_id, url=live_server).returncode == 0
    missing = caliper("show", model_id, url=live_server)
    assert missing.returncode == 2 and "404" in missing.stderr and model_id in missing.stderr, missing.stderr


def test_the_model_commands_fail_clearly(live_server: str, tmp_path: Path) -> None:
    no_url = caliper("list")
    assert no_url.returncode == 2 and "--url" in no_url.stderr
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    refused = caliper("upload", str(tmp_path / "bad.onnx"), "--name", "bad", url=live_server)
    assert refused.returncode == 2 and "422" in refused.stderr, refused.stderr
    absent = caliper(
        "predict", "nope", "--inputs", str(tmp_path / "none.npz"), "-o", str(tmp_path / "o.npz"), url=live_server
    )
    assert absent.returncode == 2 and "none.npz" in absent.stderr, absent.stderr
    bad_tag = caliper("upload", str(tmp_path / "bad.onnx"), "--name", "bad", "--tag", "=x", url=live_server)
    assert bad_tag.returncode == 2 and "no key" in bad_tag.stderr, bad_tag.stderr
