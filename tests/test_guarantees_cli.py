"""`caliper conformal …` and `caliper estimate` against a live server: fit, predict with coverage, show,
list, delete, an estimate, and failures as exit code 2 with the message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from tests.test_api_conformal import data, softmax


@pytest.fixture(autouse=True)
def _one_backend(settings: Settings) -> None:
    """The commands are HTTP clients: what they drive is tested on both backends in test_api_conformal."""
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("backend-independent: run on SQLite only")


def caliper(*args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CALIPER_URL"}
    command = [sys.executable, "-m", "caliper_client.cli", *args, *(["--url", url] if url else [])]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_the_conformal_and_estimate_commands_round_trip(live_server: str, client: TestClient, tmp_path: Path) -> None:
    z, labels = data()
    fresh, fresh_labels = data(seed=4, n=120)
    for name, array in {"z": z, "y": labels, "fresh": fresh, "fresh_y": fresh_labels}.items():
        np.save(tmp_path / f"{name}.npy", array)
    fitted = caliper("conformal", "fit", "--method", "raps", "--logits", str(tmp_path / "z.npy"), "--labels",
                     str(tmp_path / "y.npy"), "--alpha", "0.2", "--k-reg", "2", "--model", "m", "--tag", "run=1",
                     url=live_server)  # fmt: skip
    assert fitted.returncode == 0, fitted.stderr
    conformal_id = fitted.stdout.strip()
    shown = json.loads(caliper("conformal", "show", conformal_id, url=live_server).stdout)
    assert shown["params"] == {"alpha": 0.2, "mondrian": False, "lambda": 0.01, "k_reg": 2} and shown["model"] == "m"
    assert caliper("conformal", "list", "--model", "m", url=live_server).stdout.split()[:2] == [conformal_id, "raps"]

    out = tmp_path / "sets.npz"
    predicted = caliper("conformal", "predict", conformal_id, "--logits", str(tmp_path / "fresh.npy"), "-o", str(out),
                        "--labels", str(tmp_path / "fresh_y.npy"), url=live_server)  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr
    expected = client.post(f"/v1/conformal/{conformal_id}/predict",
                           json={"logits": fresh.tolist(), "labels": fresh_labels.tolist()}).json()  # fmt: skip
    with np.load(out) as sets:
        assert sets["set_size"].tolist() == expected["set_size"]
        assert [np.flatnonzero(row).tolist() for row in sets["prediction_set"]] == expected["sets"]
    assert json.loads(predicted.stdout.splitlines()[-1])["coverage"] == expected["coverage"]

    estimated = caliper("estimate", "--probabilities", str(tmp_path / "p.npy"), url=live_server)
    assert estimated.returncode == 2 and "p.npy" in estimated.stderr, estimated.stderr
    np.save(tmp_path / "p.npy", softmax(fresh))
    estimated = caliper("estimate", "--probabilities", str(tmp_path / "p.npy"), "--dataset", "week", "--json",
                        url=live_server)  # fmt: skip
    assert estimated.returncode == 0, estimated.stderr
    record = json.loads(estimated.stdout)
    assert record["estimates"]["accuracy_cbpe"] == pytest.approx(softmax(fresh).max(1).mean(), rel=1e-12)
    reference = ["--reference-logits", str(tmp_path / "z.npy"), "--reference-labels", str(tmp_path / "y.npy")]
    with_reference = caliper("estimate", "--logits", str(tmp_path / "fresh.npy"), *reference, url=live_server)
    assert with_reference.returncode == 0 and "accuracy_atc=" in with_reference.stdout, with_reference.stderr

    assert caliper("conformal", "delete", conformal_id, url=live_server).returncode == 0
    missing = caliper("conformal", "show", conformal_id, url=live_server)
    assert missing.returncode == 2 and "404" in missing.stderr


def test_the_commands_fail_clearly(live_server: str, tmp_path: Path) -> None:
    np.save(tmp_path / "y.npy", np.zeros(3, np.int64))
    no_url = caliper("conformal", "list")
    assert no_url.returncode == 2 and "--url" in no_url.stderr
    neither = caliper("conformal", "fit", "--method", "lac", "--labels", str(tmp_path / "y.npy"), url=live_server)
    assert neither.returncode == 2 and "--logits" in neither.stderr, neither.stderr
    np.save(tmp_path / "z.npy", np.zeros((3, 2)))
    bad_alpha = caliper("conformal", "fit", "--method", "lac", "--logits", str(tmp_path / "z.npy"), "--labels",
                        str(tmp_path / "y.npy"), "--alpha", "1.5", url=live_server)  # fmt: skip
    assert bad_alpha.returncode == 2 and "422" in bad_alpha.stderr and "alpha" in bad_alpha.stderr, bad_alpha.stderr
    half = caliper("estimate", "--logits", str(tmp_path / "z.npy"), "--reference-logits", str(tmp_path / "z.npy"),
                   url=live_server)  # fmt: skip
    assert half.returncode == 2 and "together" in half.stderr
