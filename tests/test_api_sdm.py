"""/v1/sdm over the ASGI app: the worked example end to end, transports, listing, bad input (4xx and
nothing stored), the empty region, and evaluations with `sdm_id`."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from caliper_client import CaliperClient
from caliper_client.wire import encode_npy, encode_tensor_object
from fastapi.testclient import TestClient

from app.sdm.service import EVALUATION_METRICS
from tests.conftest import count_rows
from tests.test_api_bad_input import assert_problem
from tests.test_sdm_core import CAL_H, CAL_Y, CAL_Z, SUP_H, SUP_Y, SUP_Z, TEST_EXPECTED, TEST_H, TEST_Z


def fit_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "support": {"embeddings": SUP_H, "logits": SUP_Z, "labels": SUP_Y},
        "calibration": {"embeddings": CAL_H, "logits": CAL_Z, "labels": CAL_Y},
        "params": {"alpha": 0.95, "k": 2048},
        "model": "demo",
    }
    body.update(overrides)
    return body


def fit(client: TestClient, **overrides: Any) -> dict[str, Any]:
    response = client.post("/v1/sdm", json=fit_body(**overrides))
    assert response.status_code == 201, response.text
    return response.json()


@pytest.mark.parametrize(("precision", "tolerance"), [("auto", 1e-9), ("float32", 1e-6)])
def test_worked_example_over_http(client: TestClient, precision: str, tolerance: float) -> None:
    created = fit(client, params={"precision": precision})
    assert created["q_min"] == 3.0 and created["alpha"] == 0.95
    np.testing.assert_allclose(created["psi"], [0.9825610935, 0.9914068753], atol=1e-10)
    assert created["n_support"] == 10 and created["n_calibration"] == 12 and created["k"] == 10
    assert created["classes"] == 2 and created["dim"] == 2 and created["high_reliability_attainable"]
    assert created["hr_class_conditional_accuracy"] == 0.95 and created["message"] is None
    assert created["calibration"]["distance_ecdf_sizes"] == [4, 5]
    assert created["calibration"]["similarity_ecdf_sizes"] == [6, 6]
    assert created["calibration"]["sdm_loss"]["marginal"] == pytest.approx(0.40223491674, abs=1e-9)
    scored = client.post(f"/v1/sdm/{created['id']}/score", json={"embeddings": TEST_H, "logits": TEST_Z})
    assert scored.status_code == 200, scored.text
    body = scored.json()
    for name, expected in TEST_EXPECTED.items():
        if isinstance(expected[0], bool) or name in ("prediction", "q", "nearest_index", "effective_sample_size"):
            assert body[name] == expected, name
        else:  # JSON lists are float64 (auto keeps them); a float32 search rounds the distances
            np.testing.assert_allclose(body[name], expected, rtol=tolerance, atol=tolerance, err_msg=name)
    assert body["summary"] == {
        "n": 6,
        "ood": 1,
        "high_reliability": 3,
        "high_reliability_lower": 1,
        "q_min": 3.0,
        "psi": created["psi"],
        "alpha": 0.95,
        "hr_class_conditional_accuracy": 0.95,
    }
    assert client.get(f"/v1/sdm/{created['id']}").json() == created


def test_multipart_fit_and_npz_scores_through_the_client(caliper: CaliperClient) -> None:
    small = CaliperClient(caliper.http, multipart_threshold=0)  # every tensor as a .npy part
    created = small.fit_sdm(
        support=(np.asarray(SUP_H), np.asarray(SUP_Z, np.float32), np.asarray(SUP_Y, np.int32)),
        calibration=(np.asarray(CAL_H), np.asarray(CAL_Z, np.float32), np.asarray(CAL_Y)),
        params={"support_statistics": True},
    )
    assert created["q_min"] == 3.0
    assert created["support_statistics"]["q"] == [3, 2, 3, 0, 3, 2, 2, 3, 0, 3]
    assert created["support_statistics"]["sdm_loss"]["marginal"] == pytest.approx(0.3244983082, abs=1e-6)  # float32
    assert (
        "support_statistics" not in small.get_sdm(created["id"])
        or small.get_sdm(created["id"])["support_statistics"] is None
    )
    columns = small.score_sdm(created["id"], embeddings=np.asarray(TEST_H), logits=np.asarray(TEST_Z))
    assert columns["high_reliability"].tolist() == TEST_EXPECTED["high_reliability"]
    # float32 calibration logits move ψ and the sdm values by ~1e-8 (test row 4 ties calibration row 0's
    # distance exactly, so float32 *embeddings* would change its d: see sdm.md §6)
    np.testing.assert_allclose(columns["probabilities_lower"], TEST_EXPECTED["probabilities_lower"], atol=1e-6)
    # float64 search, reported (and used) in the estimator's float32 (the calibration logits' dtype)
    np.testing.assert_allclose(columns["d_nearest"], TEST_EXPECTED["d_nearest"], rtol=1e-7)
    assert columns["effective_sample_size"].tolist() == TEST_EXPECTED["effective_sample_size"]


def test_list_get_delete(client: TestClient) -> None:
    first, second = fit(client, model="a"), fit(client, model="b")
    listed = client.get("/v1/sdm").json()
    assert [item["id"] for item in listed["items"]] == [second["id"], first["id"]]
    assert [i["id"] for i in client.get("/v1/sdm", params={"model": "a"}).json()["items"]] == [first["id"]]
    page = client.get("/v1/sdm", params={"limit": 1}).json()
    assert len(page["items"]) == 1 and page["next_cursor"]
    assert client.delete(f"/v1/sdm/{first['id']}").status_code == 204
    assert_problem(client.get(f"/v1/sdm/{first['id']}"), 404)
    assert_problem(client.post(f"/v1/sdm/{first['id']}/score", json={"embeddings": TEST_H, "logits": TEST_Z}), 404)
    assert_problem(client.delete(f"/v1/sdm/{first['id']}"), 404)


def test_no_correct_calibration_prediction_is_a_valid_fit_with_an_empty_region(client: TestClient) -> None:
    wrong = (-np.asarray(CAL_Z)).tolist()
    created = fit(client, calibration={"embeddings": CAL_H, "logits": wrong, "labels": CAL_Y})
    assert created["q_min"] is None and created["psi"] == [0.0, 0.0]
    assert not created["high_reliability_attainable"] and created["hr_class_conditional_accuracy"] == 0.0
    assert "region is empty" in created["message"]
    scored = client.post(f"/v1/sdm/{created['id']}/score", json={"embeddings": TEST_H, "logits": TEST_Z}).json()
    assert scored["summary"]["high_reliability"] == 0 and scored["summary"]["q_min"] is None
    assert not any(scored["high_reliability"]) and not any(scored["high_reliability_lower"])


def _tensor(rows: list[list[float]], dtype: type = np.float64) -> dict[str, Any]:
    """A base64 tensor object: JSON itself cannot carry NaN or infinity."""
    return encode_tensor_object(np.asarray(rows, dtype))


def _with(part: str, **fields: Any) -> dict[str, Any]:
    body = fit_body()
    body[part] = {**body[part], **fields}
    return body


BAD_FITS = [
    ("dimension mismatch", _with("calibration", embeddings=[[*r, 0.0] for r in CAL_H]), "calibration.embeddings"),
    ("class count mismatch", _with("calibration", logits=[[*r, 0.0] for r in CAL_Z]), "calibration.logits"),
    ("one calibration class", _with("calibration", labels=[0] * 12), "calibration.labels"),
    ("label out of range", _with("support", labels=[0] * 9 + [2]), "support.labels"),
    ("negative label", _with("calibration", labels=[-1, *CAL_Y[1:]]), "calibration.labels"),
    ("float labels", _with("support", labels=[0.5] * 10), "support.labels"),
    ("NaN embedding", _with("support", embeddings=_tensor([[np.nan, 0.0], *SUP_H[1:]])), "support.embeddings"),
    ("inf logits", _with("calibration", logits=_tensor([[np.inf, 0.0], *CAL_Z[1:]], np.float32)), "calibration.logits"),
    ("row mismatch", _with("support", embeddings=SUP_H[:9]), "support.embeddings"),
    ("one class of logits", _with("support", logits=[[1.0]] * 10), "support.logits"),
    ("1-D embeddings", _with("support", embeddings=[1.0] * 10), "support.embeddings"),
    ("empty set", _with("calibration", embeddings=[], logits=[], labels=[]), "calibration"),
    ("missing support", {k: v for k, v in fit_body().items() if k != "support"}, "support"),
    ("missing tensor", _with("support", embeddings=None), "support.embeddings"),
    (
        "float32 overflow",
        fit_body(params={"precision": "float32"})
        | {"support": {"embeddings": [[1e30, 0.0], *SUP_H[1:]], "logits": SUP_Z, "labels": SUP_Y}},
        "support.embeddings",
    ),
    (
        "calibration overflow",
        _with("calibration", embeddings=_tensor([[1e200, 0.0], *CAL_H[1:]])),
        "calibration.embeddings",
    ),
    ("alpha at 0.5", fit_body(params={"alpha": 0.5}), "params.alpha"),
    ("alpha above 1", fit_body(params={"alpha": 1.01}), "params.alpha"),
    ("k = 0", fit_body(params={"k": 0}), "params.k"),
    ("unknown param", fit_body(params={"kk": 3}), "params.kk"),
    ("string dtype", _with("support", embeddings={"dtype": "float16", "shape": [1], "data_b64": "AAA="}), "support"),
]


@pytest.mark.parametrize(("body", "field"), [c[1:] for c in BAD_FITS], ids=[c[0] for c in BAD_FITS])
def test_bad_fit_input_is_4xx_and_stores_nothing(client: TestClient, body: dict[str, Any], field: str) -> None:
    response = client.post("/v1/sdm", json=body)
    assert response.status_code in (400, 422), response.text
    assert_problem(response, response.status_code, field)
    assert sum(count_rows(client.app).values()) == 0  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"embeddings": [[*r, 1.0] for r in TEST_H], "logits": TEST_Z}, "embeddings"),
        ({"embeddings": TEST_H, "logits": [[*r, 1.0] for r in TEST_Z]}, "logits"),
        ({"embeddings": TEST_H[:5], "logits": TEST_Z}, "embeddings"),
        ({"embeddings": [[1e160, 0.0], *TEST_H[1:]], "logits": TEST_Z}, "embeddings"),
        ({"embeddings": _tensor([[np.inf, 0.0], *TEST_H[1:]]), "logits": TEST_Z}, "embeddings"),
        ({"embeddings": TEST_H, "logits": _tensor([[np.nan, 0.0], *TEST_Z[1:]], np.float32)}, "logits"),
        ({"logits": TEST_Z}, "embeddings"),
        ({"embeddings": TEST_H}, "logits"),
        ({"embeddings": [], "logits": []}, "embeddings"),
        ({"embeddings": TEST_H, "logits": TEST_Z, "extra": 1}, "extra"),
    ],
)
def test_bad_score_input_is_4xx(client: TestClient, body: dict[str, Any], field: str) -> None:
    created = fit(client)
    assert_problem(client.post(f"/v1/sdm/{created['id']}/score", json=body), 422, field)


def test_multipart_fit_with_an_unknown_part_is_refused(client: TestClient) -> None:
    files = {
        "request": ("request.json", b"{}", "application/json"),
        "support.features": ("f.npy", encode_npy(np.zeros((2, 2))), "application/octet-stream"),
    }
    assert_problem(client.post("/v1/sdm", files=files), 422, "support.features")
    assert sum(count_rows(client.app).values()) == 0  # type: ignore[arg-type]


def test_npz_output_has_every_column(client: TestClient) -> None:
    created = fit(client)
    response = client.post(
        f"/v1/sdm/{created['id']}/score",
        json={"embeddings": TEST_H, "logits": TEST_Z},
        headers={"accept": "application/x-npz"},
    )
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-npz"
    with np.load(io.BytesIO(response.content), allow_pickle=False) as data:
        names = set(data.files)
    json_names = set(
        client.post(f"/v1/sdm/{created['id']}/score", json={"embeddings": TEST_H, "logits": TEST_Z}).json()
    )
    assert names == json_names - {"summary"}


def test_evaluation_with_sdm_id_reports_the_region(client: TestClient) -> None:
    created = fit(client)
    labels = [0, 1, 1, 1, 1, 1]  # predictions [0, 1, 0, 1, 0, 1]: rows 0, 1, 5 (the region) right; 2 and 4 wrong
    response = client.post(
        "/v1/evaluations",
        json={"logits": TEST_Z, "labels": labels, "embeddings": TEST_H, "sdm_id": created["id"], "model": "m"},
    )
    assert response.status_code == 201, response.text
    metrics = response.json()["metrics"]
    assert response.json()["sdm_id"] == created["id"]
    assert metrics["sdm_hr_coverage"] == pytest.approx(3 / 6)
    assert metrics["sdm_hr_accuracy"] == 1.0
    assert metrics["sdm_non_hr_accuracy"] == pytest.approx(1 / 3)  # rows 2, 3, 4: only row 3 is right
    assert metrics["sdm_hr_lower_coverage"] == pytest.approx(1 / 6)
    assert metrics["sdm_ood_share"] == pytest.approx(1 / 6)
    assert {k for k in metrics if k.startswith("sdm_")} == set(EVALUATION_METRICS)  # each declares its direction
    stored = client.get(f"/v1/evaluations/{response.json()['id']}").json()
    assert stored["metrics"]["sdm_hr_coverage"] == pytest.approx(0.5) and stored["sdm_id"] == created["id"]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"sdm_id": "nope"}, "embeddings"),
        ({"embeddings": TEST_H}, "sdm_id"),
        ({"embeddings": [[*r, 0.0] for r in TEST_H], "sdm_id": "ID"}, "embeddings"),
    ],
)
def test_evaluation_with_bad_sdm_input_stores_nothing(client: TestClient, extra: dict[str, Any], field: str) -> None:
    created = fit(client)
    before = count_rows(client.app)  # type: ignore[arg-type]
    extra = {k: (created["id"] if v == "ID" else v) for k, v in extra.items()}
    response = client.post("/v1/evaluations", json={"logits": TEST_Z, "labels": [0] * 6, **extra})
    assert_problem(response, 422, field)
    assert count_rows(client.app) == before  # type: ignore[arg-type]


def test_evaluation_with_an_unknown_sdm_id_is_404(client: TestClient) -> None:
    response = client.post(
        "/v1/evaluations", json={"logits": TEST_Z, "labels": [0] * 6, "embeddings": TEST_H, "sdm_id": "missing"}
    )
    assert_problem(response, 404)
    assert count_rows(client.app)["evaluations"] == 0  # type: ignore[arg-type]


def test_gates_treat_sdm_coverage_as_higher_is_better(client: TestClient) -> None:
    sdm_id = fit(client)["id"]

    def evaluation(scale: float) -> str:
        logits = (np.asarray(TEST_Z) * scale).tolist()
        body = {"logits": logits, "labels": [0, 1, 1, 1, 1, 1], "embeddings": TEST_H, "sdm_id": sdm_id}
        response = client.post("/v1/evaluations", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    candidate, baseline = evaluation(1.0), evaluation(0.01)  # shrunken logits: nothing clears ψ
    rules = [
        {"metric": "sdm_hr_coverage", "op": "min_improvement_abs", "value": 0.4},
        {"metric": "sdm_hr_coverage", "op": "min", "value": 0.6, "severity": "warn"},
    ]
    gate = client.post("/v1/gates", json={"candidate": candidate, "baseline": baseline, "rules": rules}).json()
    assert [r["passed"] for r in gate["rules"]] == [True, False] and gate["verdict"] == "warn"
    assert gate["rules"][0]["candidate"] == pytest.approx(0.5) and gate["rules"][0]["baseline"] == 0.0
