"""GET /v1/models/{id}/export: the composed model, loaded in a fresh onnxruntime session, gives what
/predict gives with the same heads, for every head combination, every calibrator method, every detector
method and the SDM estimator; the user's graph is kept unchanged, names are never taken from it, opsets
are reconciled (or refused clearly) and the size limit holds."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from onnx import helper, numpy_helper

from app.config import Settings
from tests import onnx_models
from tests.test_api_bad_input import assert_problem
from tests.test_api_models import plain_run, resources, upload

N = 1000


def probe(dtype: type) -> np.ndarray:
    """Fresh rows to compare on: not the fit rows, whose own distances sit exactly on the SDM tables' values
    (a rank discontinuity that the last bit of a distance decides)."""
    return np.random.default_rng(99).normal(size=(64, 6)).astype(dtype)


def session_outputs(data: bytes, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x}), strict=True))


def make_data(dtype: type, seed: int = 8) -> tuple[bytes, np.ndarray, dict[str, np.ndarray], np.ndarray]:
    data, _ = onnx_models.mlp(d=6, hidden=5, classes=3, dtype=dtype, seed=seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, 6)).astype(dtype)
    outputs = plain_run(data, x)
    labels = np.argmax(outputs["logits"] + 0.3 * rng.normal(size=(N, 3)), axis=1)
    return data, x, outputs, labels


def fit_heads(client: TestClient, model_id: str, x: np.ndarray, labels: np.ndarray) -> dict[str, str]:
    """A temperature calibrator, a Mahalanobis detector and an SDM estimator, each fitted from the model."""
    inputs = {"x": x.tolist()}
    calibrator = client.post(
        "/v1/calibrators",
        json={"method": "temperature", "model_id": model_id, "inputs": inputs, "labels": labels.tolist()},
    )
    detector = client.post(
        "/v1/detectors",
        json={
            "method": "mahalanobis",
            "model_id": model_id,
            "inputs": inputs,
            "labels": labels.tolist(),
            "params": {"ridge": 0.1},
        },
    )
    half = N // 2
    sdm = client.post(
        "/v1/sdm",
        json={
            "model_id": model_id,
            "support": {"inputs": {"x": x[:half].tolist()}, "labels": labels[:half].tolist()},
            "calibration": {"inputs": {"x": x[half:].tolist()}, "labels": labels[half:].tolist()},
            "params": {"k": 16, "alpha": 0.8},
        },
    )
    for response in (calibrator, detector, sdm):
        assert response.status_code == 201, response.text
    return {"calibrator_id": calibrator.json()["id"], "detector_id": detector.json()["id"], "sdm_id": sdm.json()["id"]}


def exported(client: TestClient, model_id: str, **heads: str) -> bytes:
    response = client.get(f"/v1/models/{model_id}/export", params=heads)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    onnx.checker.check_model(onnx.load_from_string(response.content), full_check=True)
    return response.content


def predicted(client: TestClient, model_id: str, x: np.ndarray, **heads: str) -> dict[str, Any]:
    response = client.post(f"/v1/models/{model_id}/predict", json={"inputs": {"x": x.tolist()}, **heads})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def assert_export_matches_predict(got: dict[str, np.ndarray], want: dict[str, Any], rtol: float) -> None:
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=rtol, atol=rtol * 1e-3)
    if "ood_score" in want:
        np.testing.assert_allclose(got["ood_score"], want["ood_score"], rtol=rtol * 10, atol=rtol)
    if "sdm" in want:
        np.testing.assert_array_equal(got["sdm_q"], want["sdm"]["q"])
        np.testing.assert_array_equal(got["high_reliability"], want["sdm"]["high_reliability"])
        np.testing.assert_allclose(got["sdm_d"], want["sdm"]["d"], rtol=rtol, atol=rtol)
        np.testing.assert_allclose(got["sdm_probabilities"], want["sdm"]["probabilities"], rtol=rtol, atol=rtol * 1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_head_combination_equals_predict(client: TestClient, dtype: type) -> None:
    data, x, outputs, labels = make_data(dtype)
    model = upload(client, data, embedding_output="embedding").json()
    heads = fit_heads(client, model["id"], x, labels)
    rtol = 2e-6 if dtype == np.float32 else 1e-12
    x, outputs = probe(dtype), plain_run(data, probe(dtype))
    for size in range(4):
        for names in itertools.combinations(sorted(heads), size):
            chosen = {name: heads[name] for name in names}
            got = session_outputs(exported(client, model["id"], **chosen), x)
            np.testing.assert_array_equal(got["logits"], outputs["logits"])  # the user's outputs, as they were
            np.testing.assert_array_equal(got["embedding"], outputs["embedding"])
            assert got["probabilities"].dtype == dtype
            assert ("ood_score" in got) == ("detector_id" in chosen)
            assert ("sdm_q" in got) == ("sdm_id" in chosen)
            assert_export_matches_predict(got, predicted(client, model["id"], x, **chosen), rtol)
    assert got["high_reliability"].dtype == np.bool_ and got["sdm_q"].dtype == np.int64
    assert got["sdm_q"].sum() > 0 and got["high_reliability"].any()  # the SDM outputs are not all trivial


CALIBRATORS = ["temperature", "temperature_ca", "vector_scaling", "matrix_scaling", "dirichlet"]
CALIBRATORS += ["histogram_binning", "isotonic", "platt", "beta"]


@pytest.mark.parametrize("method", CALIBRATORS)
def test_every_calibrator_method_equals_predict(client: TestClient, method: str) -> None:
    data, x, _, labels = make_data(np.float64, seed=14)
    model = upload(client, data, embedding_output="embedding").json()
    fit = client.post(
        "/v1/calibrators",
        json={"method": method, "model_id": model["id"], "inputs": {"x": x.tolist()}, "labels": labels.tolist()},
    )
    assert fit.status_code == 201, fit.text
    heads = {"calibrator_id": fit.json()["id"]}
    x = probe(np.float64)
    got = session_outputs(exported(client, model["id"], **heads), x)
    assert_export_matches_predict(got, predicted(client, model["id"], x, **heads), 1e-12)


DETECTORS = [
    ("mahalanobis", {"ridge": 0.1}),
    ("mahalanobis", {"covariance": "per_class", "ridge": 0.1}),
    ("mahalanobis", {"normalize": True, "shrinkage": "ledoit_wolf"}),
    ("relative_mahalanobis", {"ridge": 0.1}),
    ("knn", {"k": 5}),
    ("knn", {"k": 1}),
    ("class_gmm", {"components": 2}),
    ("class_gmm", {"components": 2, "covariance_type": "diag", "normalize": True}),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("method", "params"), DETECTORS)
def test_every_detector_method_equals_predict(
    client: TestClient, method: str, params: dict[str, Any], dtype: type
) -> None:
    data, x, _, labels = make_data(dtype, seed=16)
    model = upload(client, data, embedding_output="embedding").json()
    body = {"method": method, "model_id": model["id"], "inputs": {"x": x.tolist()}, "labels": labels.tolist()}
    fit = client.post("/v1/detectors", json={**body, "params": params})
    assert fit.status_code == 201, fit.text
    heads = {"detector_id": fit.json()["id"]}
    x = probe(dtype)
    got = session_outputs(exported(client, model["id"], **heads), x)
    assert_export_matches_predict(
        got, predicted(client, model["id"], x, **heads), 2e-6 if dtype == np.float32 else 1e-11
    )


def test_vim_and_a_layer_ensemble_equal_predict(client: TestClient) -> None:
    data, x, outputs, labels = make_data(np.float64, seed=11)
    weights = onnx_models.mlp(d=6, hidden=5, classes=3, dtype=np.float64, seed=11)[1]
    model = upload(client, data, embedding_output="embedding", feature_outputs=["embedding", "logits"]).json()
    vim = client.post(
        "/v1/detectors",
        json={
            "method": "vim",
            "features": outputs["embedding"].tolist(),
            "params": {"weight": weights.w2.T.tolist(), "bias": weights.b2.tolist(), "dim": 2},
        },
    )
    ensemble = client.post(
        "/v1/detectors",
        json={
            "method": "mahalanobis",
            "model_id": model["id"],
            "inputs": {"x": x.tolist()},
            "labels": labels.tolist(),
            "params": {"ridge": 0.1, "layer_weights": {"embedding": 0.7, "logits": 0.3}},
        },
    )
    x = probe(np.float64)
    for fit in (vim, ensemble):
        assert fit.status_code == 201, fit.text
        heads = {"detector_id": fit.json()["id"]}
        got = session_outputs(exported(client, model["id"], **heads), x)
        assert_export_matches_predict(got, predicted(client, model["id"], x, **heads), 1e-11)
    assert ensemble.json()["params"]["layers"] == ["embedding", "logits"]


def test_float64_heads_on_a_float32_model(client: TestClient) -> None:
    data, x, outputs, labels = make_data(np.float32)
    model = upload(client, data, embedding_output="embedding").json()
    heads = fit_heads(client, model["id"], x, labels)
    response = client.get(
        f"/v1/models/{model['id']}/export", params={"calibrator_id": heads["calibrator_id"], "dtype": "float64"}
    )
    got = session_outputs(response.content, x)
    assert got["probabilities"].dtype == np.float64 and got["logits"].dtype == np.float32
    temperature = client.get(f"/v1/calibrators/{heads['calibrator_id']}").json()["fitted"]["temperature"]
    z = outputs["logits"].astype(np.float64) / temperature
    want = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(got["probabilities"], want / want.sum(1, keepdims=True), rtol=1e-12)


def renamed_mlp(output_names: dict[str, str], initializer: str | None = None, opset: int = 17) -> bytes:
    """The test MLP with its outputs renamed (e.g. to one of our names), optionally with an initializer
    whose name starts with our prefix, at a chosen opset."""
    model = onnx.load_from_string(onnx_models.mlp(d=6, hidden=5, classes=3, dtype=np.float64)[0])
    for node in model.graph.node:
        node.output[:] = [output_names.get(o, o) for o in node.output]
        node.input[:] = [output_names.get(i, i) for i in node.input]
    for output in model.graph.output:
        output.name = output_names.get(output.name, output.name)
    if initializer:
        model.graph.initializer.append(numpy_helper.from_array(np.ones(1), initializer))
        model.graph.node.append(helper.make_node("Identity", [initializer], ["unused_copy"]))  # keeps it used
        model.graph.output.append(helper.make_tensor_value_info("unused_copy", onnx.TensorProto.DOUBLE, [1]))
    model.opset_import[0].version = opset
    return model.SerializeToString()


@pytest.mark.parametrize(("initializer", "prefix"), [("weights", "caliper_"), ("caliper_probabilities", "caliper1_")])
def test_name_clashes_are_resolved_by_prefixing_ours(client: TestClient, initializer: str, prefix: str) -> None:
    """The user's outputs named like ours keep their names; ours get `caliper_`, or `caliper1_` where the
    user's graph already has a name starting with `caliper_` that ours would take."""
    data = renamed_mlp({"logits": "probabilities", "embedding": "ood_score"}, initializer=initializer)
    model = upload(client, data, logits_output="probabilities", embedding_output="ood_score").json()
    _, x, _, labels = make_data(np.float64)
    plain = session_outputs(data, x)
    fit = client.post(
        "/v1/detectors",
        json={"method": "mahalanobis", "model_id": model["id"], "inputs": {"x": x.tolist()}, "labels": labels.tolist()},
    )
    export = exported(client, model["id"], detector_id=fit.json()["id"])
    got = session_outputs(export, x)
    assert set(got) == {"probabilities", "ood_score", "unused_copy", f"{prefix}probabilities", f"{prefix}ood_score"}
    np.testing.assert_array_equal(got["probabilities"], plain["probabilities"])  # theirs, untouched
    np.testing.assert_array_equal(got["ood_score"], plain["ood_score"])
    want = predicted(client, model["id"], x, detector_id=fit.json()["id"])
    np.testing.assert_allclose(got[f"{prefix}probabilities"], want["probabilities"], rtol=1e-12)
    np.testing.assert_allclose(got[f"{prefix}ood_score"], want["ood_score"], rtol=1e-11)
    user = onnx.load_from_string(data).graph
    merged = onnx.load_from_string(export).graph
    assert list(merged.node)[: len(user.node)] == list(user.node)  # their graph, unchanged
    assert {i.name for i in user.initializer} <= {i.name for i in merged.initializer}
    ours = list(merged.node)[len(user.node) :]
    assert all(o.startswith(prefix) for n in ours for o in n.output)


@pytest.mark.parametrize(("opset", "ours_converted"), [(17, True), (21, False), (13, False)])
def test_opsets_are_reconciled_keeping_the_user_graph_where_possible(
    client: TestClient, opset: int, ours_converted: bool
) -> None:
    data = renamed_mlp({}, opset=opset)
    model = upload(client, data, embedding_output="embedding").json()
    _, x, _, labels = make_data(np.float64)
    heads = fit_heads(client, model["id"], x, labels)
    merged = onnx.load_from_string(exported(client, model["id"], **heads))
    x = probe(np.float64)
    opsets = {o.domain: o.version for o in merged.opset_import}
    assert len(merged.opset_import) == len(opsets)
    user_nodes = list(onnx.load_from_string(data).graph.node)
    if ours_converted or opset == 21:
        assert opsets[""] == opset and list(merged.graph.node)[: len(user_nodes)] == user_nodes
    else:  # opset 13: our graph cannot go below 16 (no Identity adapter), so the user's is converted up
        assert opsets[""] == 21
    got = session_outputs(merged.SerializeToString(), x)
    assert_export_matches_predict(got, predicted(client, model["id"], x, **heads), 1e-12)


@pytest.mark.parametrize("opset", [11, 13, 15, 17, 21])
@pytest.mark.parametrize("name", onnx_models.ARCHITECTURES)
def test_common_architectures_export_at_every_opset(client: TestClient, name: str, opset: int) -> None:
    """An MLP, a CNN, a residual block and an attention block, each written at opsets 11 to 21, export with
    every head and the export gives what /predict gives (issue 25: 9 of these 20 answered 500)."""
    data = onnx_models.architecture(name, opset)
    rng = np.random.default_rng(opset)
    x = rng.normal(size=(N, *onnx_models.INPUT_SHAPES[name])).astype(np.float32)
    logits = plain_run(data, x)["logits"]
    standardised = (logits - logits.mean(0)) / logits.std(0)  # every class wins on some rows
    labels = np.argmax(standardised + 0.3 * rng.normal(size=logits.shape), axis=1)
    model = upload(client, data, embedding_output="embedding").json()
    heads = fit_heads(client, model["id"], x, labels)
    merged = onnx.load_from_string(exported(client, model["id"], **heads))
    assert {o.domain: o.version for o in merged.opset_import}[""] >= opset
    fresh = rng.normal(size=(64, *onnx_models.INPUT_SHAPES[name])).astype(np.float32)
    got = session_outputs(merged.SerializeToString(), fresh)
    np.testing.assert_allclose(got["logits"], plain_run(data, fresh)["logits"], rtol=1e-6, atol=1e-6)
    assert_export_matches_predict(got, predicted(client, model["id"], fresh, **heads), 2e-6)


def test_opsets_that_cannot_be_reconciled_are_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    """The merge itself (`app.core.compose`, which a model worker runs): when the converter fails both
    ways, the InputError names both opsets (the worker hands it back as a 422, as the size limit below)."""
    from app.core.compose import compose
    from app.core.errors import InputError

    def refuse(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
        raise RuntimeError(f"No Adapter To Version ${version}")

    monkeypatch.setattr(onnx.version_converter, "convert_version", refuse)
    user = onnx.load_from_string(renamed_mlp({}, opset=17))
    heads = onnx.load_from_string(onnx_models.architecture("mlp", 13))  # any graph at another opset
    with pytest.raises(InputError, match="cannot reconcile opsets") as refused:
        compose(user, heads, [("logits", "x")])
    assert "ai.onnx 17" in refused.value.message and refused.value.field == "model_id"


def test_an_export_over_the_size_limit_is_422(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    data, x, _, labels = make_data(np.float32)
    model = upload(client, data, embedding_output="embedding").json()
    heads = fit_heads(client, model["id"], x, labels)
    monkeypatch.setattr(resources(client).exports, "max_bytes", len(data) + 1000)
    response = client.get(f"/v1/models/{model['id']}/export", params={"sdm_id": heads["sdm_id"]})
    assert_problem(response, 422)
    assert "CALIPER_MAX_EXPORT_BYTES" in response.json()["detail"]
    assert client.get(f"/v1/models/{model['id']}/export").status_code == 200  # without the support it fits


def test_unknown_and_unfitting_heads(client: TestClient) -> None:
    data, _x, _outputs, _labels = make_data(np.float32)
    model = upload(client, data, embedding_output="embedding").json()
    assert_problem(client.get("/v1/models/nope/export"), 404)
    assert_problem(client.get(f"/v1/models/{model['id']}/export", params={"calibrator_id": "nope"}), 404)
    assert_problem(client.get(f"/v1/models/{model['id']}/export", params={"dtype": "float16"}), 422)
    wide = np.random.default_rng(0).normal(size=(40, 4))
    calibrator = client.post(
        "/v1/calibrators", json={"method": "temperature", "logits": wide.tolist(), "labels": [0, 1, 2, 3] * 10}
    )
    response = client.get(f"/v1/models/{model['id']}/export", params={"calibrator_id": calibrator.json()["id"]})
    assert_problem(response, 422)
    assert "C = 4" in response.json()["detail"]


def test_the_cli_writes_the_same_export_in_process_and_from_a_server(
    client: TestClient, live_server: str, settings: Settings, tmp_path: Path
) -> None:
    data, x, _, labels = make_data(np.float32)
    model = upload(client, data, embedding_output="embedding").json()
    heads = fit_heads(client, model["id"], x, labels)
    want = exported(client, model["id"], **heads)
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env |= {"CALIPER_DATABASE_URL": settings.database_url, "CALIPER_ARTIFACT_DIR": str(settings.artifact_dir)}
    flags = ["--calibrator", heads["calibrator_id"], "--detector", heads["detector_id"], "--sdm", heads["sdm_id"]]
    for where in ([], ["--url", live_server]):
        target = tmp_path / f"export{len(where)}.onnx"
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", "export", model["id"], *flags, *where, "-o", str(target)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert target.read_bytes() == want and str(target) in done.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "app.cli", "export", "nope", "--url", live_server, "-o", str(tmp_path / "x.onnx")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "no model with id 'nope'" in missing.stderr
    assert "Traceback" not in missing.stderr and not (tmp_path / "x.onnx").exists()


def test_the_merge_runs_in_a_model_worker_under_its_limits(client: TestClient) -> None:
    """Issue 25: exports loaded, converted and checked the user's model in the API process, unbounded. The
    merge now runs in a model worker: past CALIPER_MODEL_TIMEOUT_S it answers 422 model-limits, the worker
    is replaced, and the service goes on."""
    from dataclasses import replace

    model = upload(client, onnx_models.architecture("cnn", 13), embedding_output="embedding").json()
    pool = resources(client).workers
    limits = pool.limits
    pool.limits = replace(limits, timeout_s=1e-4)
    try:
        response = client.get(f"/v1/models/{model['id']}/export")
    finally:
        pool.limits = limits
    assert_problem(response, 422)
    assert response.json()["type"].endswith("/model-limits") and "CALIPER_MODEL_TIMEOUT_S" in response.text
    exported(client, model["id"])  # a new worker merges it
