"""Binary inputs (api.md): `logits` [N] (log-odds of class 1) and `probabilities` [N] (P(class 1)) are the
two-class problem z = [0, logit], p = [1 − p₁, p₁], built inside the fused graph: every loss and metric
equals the two-column evaluation, cross-entropy is the binary cross-entropy with logits, and bad binary
inputs are 422s naming the field."""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sklearn.metrics import brier_score_loss

from app.core.errors import InputError
from app.core.evaluation import EvaluationPlan, Evaluator, validate_batch
from tests.test_core_golden import METRIC, evaluate

LOSSES: list[dict[str, Any]] = [{"name": "cross_entropy"}, {"name": "focal"}, {"name": "brier"}, {"name": "nll"}]
METRICS = [
    {"name": n}
    for n in ("accuracy", "nll", "brier", "ece", "mce", "entropy", "aurc", "f1", "mcc", "roc_auc", "softmax_collapse")
]


def bce_with_logits(z: np.ndarray, y: np.ndarray) -> float:
    """torch's binary_cross_entropy_with_logits, mean: max(z, 0) − z·y + log(1 + e^−|z|)."""
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("chunk", [1, 7, 500])
def test_one_dimensional_logits_are_the_two_column_problem(dtype: type, chunk: int) -> None:
    rng = np.random.default_rng(1)
    z, y = rng.normal(size=300) * 3, rng.integers(0, 2, 300)
    w = rng.uniform(0.5, 2.0, 300)
    binary, rows = evaluate(z, y, LOSSES, METRICS, dtype, chunk=chunk, sample_weight=w)
    columns, column_rows = evaluate(np.c_[np.zeros_like(z), z], y, LOSSES, METRICS, dtype, chunk=chunk, sample_weight=w)
    assert binary.classes == 2 and binary.n == 300
    assert binary.losses == columns.losses and binary.metrics == columns.metrics
    for name, values in rows.items():
        np.testing.assert_array_equal(values, column_rows[name], err_msg=name)
    unweighted, _ = evaluate(z, y, [{"name": "cross_entropy"}], [], np.float64, chunk=chunk)
    assert unweighted.losses["cross_entropy"] == pytest.approx(bce_with_logits(z, y), rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_dimensional_probabilities_are_the_two_column_problem(dtype: type) -> None:
    rng = np.random.default_rng(2)
    p, y = rng.uniform(0.01, 0.99, 200).astype(dtype), rng.integers(0, 2, 200)
    specs = [{"name": "brier"}, {"name": "accuracy"}, {"name": "roc_auc"}, {"name": "ece"}]
    batch = validate_batch(probabilities=p, labels=y)
    assert batch.layout.binary and batch.classes == 2
    binary, _ = _evaluate_probabilities(p, y, specs)
    columns, _ = _evaluate_probabilities(np.c_[1 - p, p], y, specs)
    assert binary.metrics == pytest.approx(columns.metrics, rel=1e-6 if dtype == np.float32 else 1e-12)
    # api.md: brier is the two-column sum 2(p₁ − y)², twice scikit-learn's brier_score_loss
    want = 2 * brier_score_loss(y, p.astype(np.float64))
    assert binary.metrics["brier"] == pytest.approx(want, rel=1e-6 if dtype == np.float32 else 1e-12)


def _evaluate_probabilities(p: np.ndarray, y: np.ndarray, metrics: list[dict[str, Any]]) -> Any:
    batch = validate_batch(probabilities=p, labels=y)
    plan = EvaluationPlan(batch.layout, (), tuple(METRIC.validate_python(m) for m in metrics))
    evaluated = Evaluator(plan).evaluate(batch)
    return evaluated.result, evaluated.per_row


@pytest.mark.parametrize(
    ("arrays", "field", "message"),
    [
        ({"probabilities": np.array([0.2, 1.5]), "labels": np.array([0, 1])}, "probabilities", "[0, 1]"),
        ({"logits": np.array([0.2, -1.0]), "labels": np.array([0, 2])}, "labels", "outside [0, 2)"),
        ({"logits": np.array([0.2, -1.0]), "targets": np.array([[0.5, 0.5]] * 2)}, "targets", "0/1"),
        ({"logits": np.array([0.2, np.nan]), "labels": np.array([0, 1])}, "logits", "NaN"),
        ({"logits": np.zeros(0), "labels": np.zeros(0, int)}, "logits", "empty"),
        ({"logits": np.zeros((2, 1)), "labels": np.array([0, 0])}, "logits", "at least 2 classes"),
        (
            {"logits": np.array([0.2, -1.0]), "labels": np.array([0, 1]), "teacher_logits": np.zeros((2, 2))},
            "teacher_logits",
            "does not match",
        ),
    ],
    ids=["p_above_1", "label_2", "soft_targets", "nan", "empty", "one_column", "teacher_shape"],
)
def test_bad_binary_inputs_name_the_field(arrays: dict[str, np.ndarray], field: str, message: str) -> None:
    with pytest.raises(InputError) as refused:
        validate_batch(**arrays)
    assert refused.value.field == field and message in refused.value.message


def test_binary_evaluations_over_json_and_multipart(client: TestClient) -> None:
    rng = np.random.default_rng(4)
    z, y = rng.normal(size=50), rng.integers(0, 2, 50)
    body = {"logits": z.tolist(), "labels": y.tolist(), "metrics": ["accuracy", "f1", "roc_auc"]}
    answer = client.post("/v1/evaluations", json=body)
    assert answer.status_code == 201, answer.text
    assert answer.json()["classes"] == 2
    assert answer.json()["losses"]["cross_entropy"] == pytest.approx(bce_with_logits(z, y), rel=1e-12)

    def npy(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, array)
        return buffer.getvalue()

    files = {
        "request": (None, '{"metrics": ["accuracy", "f1", "roc_auc"]}', "application/json"),
        "logits": ("z.npy", npy(z.astype(np.float32))),
        "labels": ("y.npy", npy(y)),
    }
    multipart = client.post("/v1/evaluations", files=files)
    assert multipart.status_code == 201, multipart.text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert multipart.json()["metrics"]["roc_auc"] == pytest.approx(answer.json()["metrics"]["roc_auc"])
    refused = client.post("/v1/evaluations", json={"probabilities": [0.5, 1.2], "labels": [0, 1]})
    assert refused.status_code == 422 and "probabilities" in refused.text


def test_a_calibrator_fits_and_applies_on_binary_logits(client: TestClient) -> None:
    """Fitted on [N] log-odds it is the two-class calibrator of [0, z]; apply on [N] answers [N]
    probabilities of class 1, and an evaluation with it reads them as binary probabilities."""
    rng = np.random.default_rng(5)
    z = rng.normal(size=400) * 3
    y = (rng.uniform(size=400) < 1 / (1 + np.exp(-z / 3))).astype(int)  # over-confident logits
    binary = client.post("/v1/calibrators", json={"method": "temperature", "logits": z.tolist(), "labels": y.tolist()})
    columns = np.c_[np.zeros_like(z), z]
    two = client.post(
        "/v1/calibrators", json={"method": "temperature", "logits": columns.tolist(), "labels": y.tolist()}
    )
    assert binary.status_code == two.status_code == 201, binary.text
    assert binary.json()["classes"] == 2
    assert binary.json()["fitted"]["temperature"] == pytest.approx(two.json()["fitted"]["temperature"], rel=1e-9)
    applied = client.post(f"/v1/calibrators/{binary.json()['id']}/apply", json={"logits": z[:5].tolist()}).json()
    both = client.post(f"/v1/calibrators/{two.json()['id']}/apply", json={"logits": columns[:5].tolist()}).json()
    np.testing.assert_allclose(applied["probabilities"], np.asarray(both["probabilities"])[:, 1], rtol=1e-12)
    evaluated = client.post(
        "/v1/evaluations",
        json={"logits": z.tolist(), "labels": y.tolist(), "calibrator_id": binary.json()["id"], "store": False},
    )
    assert evaluated.status_code == 201, evaluated.text
    three = client.post(
        "/v1/calibrators",
        json={"method": "temperature", "logits": rng.normal(size=(30, 3)).tolist(), "labels": [0, 1, 2] * 10},
    ).json()
    refused = client.post(f"/v1/calibrators/{three['id']}/apply", json={"logits": z[:5].tolist()})
    assert refused.status_code == 422 and "two-class" in refused.text


def _binary_model(squeeze: bool, width: int = 1) -> bytes:
    """x [N, 4] -> x @ w [N, width], squeezed to [N] when asked: a logistic model's log-odds."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).normal(size=(4, width)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z" if squeeze else "logits"])]
    shape: list[Any] = ["N", width]
    if squeeze:
        nodes.append(helper.make_node("Squeeze", ["z", "axes"], ["logits"]))
        shape = ["N"]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([1], np.int64), "axes")]
    graph = helper.make_graph(
        nodes, "logistic", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, shape)], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize(("squeeze", "binary"), [(True, False), (False, True)], ids=["[N]", "[N, 1] binary"])
def test_a_binary_model_is_evaluated_as_the_two_class_problem(client: TestClient, squeeze: bool, binary: bool) -> None:
    from tests.test_api_models import plain_run, upload

    data = _binary_model(squeeze)
    model = upload(client, data, name="logistic", binary=binary)
    assert model.status_code == 201, model.text
    assert model.json()["binary"] is True and model.json()["classes"] == 2
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(150, 4)).astype(np.float32), rng.integers(0, 2, 150)
    options = {"labels": y.tolist(), "metrics": ["accuracy", "roc_auc", "f1"], "losses": ["cross_entropy"]}
    evaluated = client.post(
        f"/v1/models/{model.json()['id']}/evaluations", json={"inputs": {"x": x.tolist()}, **options}
    )
    assert evaluated.status_code == 201, evaluated.text
    z = plain_run(data, x)["logits"].reshape(-1)
    direct = client.post("/v1/evaluations", json={"logits": z.tolist(), **options}).json()
    got = evaluated.json()
    assert got["classes"] == 2 and got["metrics"] == pytest.approx(direct["metrics"], rel=1e-6)
    assert got["losses"]["cross_entropy"] == pytest.approx(bce_with_logits(z.astype(np.float64), y), rel=1e-6)


@pytest.mark.parametrize("squeeze", [True, False], ids=["[N]", "[N, 1] binary"])
def test_heads_on_a_binary_model_see_the_two_class_problem(client: TestClient, squeeze: bool) -> None:
    """A calibrator, a detector and an SDM estimator fitted from a binary model: predict answers the
    [N] log-odds and P(class 1) (the temperature-scaled sigmoid), the export and V2 give what predict
    gives, and a model evaluation with the calibrator equals evaluating the calibrated P(class 1)."""
    from tests import onnx_models
    from tests.test_api_models import plain_run, upload
    from tests.test_export import fit_heads, predicted, session_outputs

    data, _ = onnx_models.mlp(d=6, hidden=5, classes=1, seed=3, squeeze=squeeze)
    model = upload(client, data, name="binary-mlp", embedding_output="embedding", binary=not squeeze).json()
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1000, 6)).astype(np.float32)
    z = plain_run(data, x)["logits"].reshape(-1)
    y = (rng.random(1000) < 1 / (1 + np.exp(-0.5 * z))).astype(np.int64)  # over-confident log-odds: T ≈ 2
    heads = fit_heads(client, model["id"], x, y)
    temperature = client.get(f"/v1/calibrators/{heads['calibrator_id']}").json()["fitted"]["temperature"]
    assert temperature > 1.2  # the heads have something to correct
    probe = rng.normal(size=(64, 6)).astype(np.float32)
    z_probe = plain_run(data, probe)["logits"].reshape(-1).astype(np.float64)
    got = predicted(client, model["id"], probe, **heads)
    np.testing.assert_allclose(got["logits"], z_probe, rtol=1e-6)
    np.testing.assert_allclose(got["probabilities"], 1 / (1 + np.exp(-z_probe / temperature)), rtol=1e-5)
    np.testing.assert_array_equal(got["prediction"], (z_probe > 0).astype(int))
    assert len(got["sdm"]["probabilities"][0]) == 2 and len(got["ood_score"]) == 64
    export = client.get(f"/v1/models/{model['id']}/export", params=heads)
    assert export.status_code == 200, export.text
    exported = session_outputs(export.content, probe)
    assert exported["probabilities"].shape == (64,)
    np.testing.assert_allclose(exported["probabilities"], got["probabilities"], rtol=2e-6)
    np.testing.assert_allclose(exported["ood_score"], got["ood_score"], rtol=2e-5, atol=2e-6)
    np.testing.assert_array_equal(exported["sdm_q"], got["sdm"]["q"])
    deployed = client.post("/v1/pipelines", json={"name": "binary", "model_id": model["id"], **heads})
    assert deployed.status_code == 201, deployed.text
    tensor = {"name": "x", "datatype": "FP32", "shape": [64, 6], "data": probe.ravel().tolist()}
    served = client.post("/v2/models/binary/infer", json={"inputs": [tensor], "outputs": [{"name": "probabilities"}]})
    assert served.status_code == 200, served.text
    (answer,) = served.json()["outputs"]
    assert answer["shape"] == [64]
    np.testing.assert_allclose(answer["data"], got["probabilities"], rtol=2e-6)
    options = {"labels": y.tolist(), "metrics": ["accuracy", "ece", "roc_auc"], "losses": ["cross_entropy"]}
    with_calibrator = client.post(
        f"/v1/models/{model['id']}/evaluations",
        json={"inputs": {"x": x.tolist()}, **options, "calibrator_id": heads["calibrator_id"]},
    )
    assert with_calibrator.status_code == 201, with_calibrator.text
    calibrated = client.post(f"/v1/calibrators/{heads['calibrator_id']}/apply", json={"logits": z.tolist()}).json()
    direct = client.post("/v1/evaluations", json={"probabilities": calibrated["probabilities"], **options}).json()
    assert with_calibrator.json()["metrics"] == pytest.approx(direct["metrics"], rel=1e-6)
    assert with_calibrator.json()["losses"] == pytest.approx(direct["losses"], rel=1e-6)


def test_binary_uploads_that_do_not_fit_are_refused(client: TestClient) -> None:
    from tests.test_api_models import upload

    one_column = upload(client, _binary_model(False), name="c1")
    assert one_column.status_code == 422 and "logits_output" in one_column.text and "binary" in one_column.text
    wide = upload(client, _binary_model(False, width=3), name="c3", binary=True)
    assert wide.status_code == 422 and '"binary"' in wide.text, wide.text
