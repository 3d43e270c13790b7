"""The Python client covers the whole /v1 API (issue 25: it had no methods for detectors, OOD scores and
their evaluation, keys, ...): every operation maps to a method, and the ones added here round-trip."""

from __future__ import annotations

import inspect

import numpy as np
import onnx
from caliper_client import CaliperClient, CaliperError
from fastapi.testclient import TestClient

from tests import onnx_models
from tests.conftest import Y_A, Z_A

METHODS = {
    "createEvaluation": "evaluate", "listEvaluations": "list_evaluations", "getEvaluation": "get_evaluation",
    "deleteEvaluation": "delete_evaluation", "setEvaluationTags": "set_tags",
    "createCalibrator": "fit_calibrator", "listCalibrators": "list_calibrators", "getCalibrator": "get_calibrator",
    "deleteCalibrator": "delete_calibrator", "applyCalibrator": "apply_calibrator",
    "exportCalibrator": "export_calibrator",
    "createConformal": "fit_conformal", "listConformal": "list_conformal", "getConformal": "get_conformal",
    "deleteConformal": "delete_conformal", "predictConformal": "predict_conformal",
    "exportConformal": "export_conformal",
    "createEstimate": "estimate", "listEstimates": "list_estimates", "getEstimate": "get_estimate",
    "deleteEstimate": "delete_estimate",
    "createGate": "create_gate", "listGates": "list_gates", "getGate": "get_gate",
    "getEvaluationReport": "evaluation_report_html", "getGateReport": "gate_report_html",
    "createDetector": "fit_detector", "listDetectors": "list_detectors", "getDetector": "get_detector",
    "deleteDetector": "delete_detector", "scoreDetector": "score_detector",
    "scoreLogits": "ood_scores", "evaluateOod": "evaluate_ood",
    "createSdm": "fit_sdm", "listSdm": "list_sdm", "getSdm": "get_sdm", "deleteSdm": "delete_sdm",
    "scoreSdm": "score_sdm",
    "uploadModel": "upload_model", "listModels": "list_models", "getModel": "get_model", "deleteModel": "delete_model",
    "getModelOnnx": "model_onnx", "exportModel": "export_model", "evaluateModel": "evaluate_model",
    "predict": "predict",
    "createPipeline": "create_pipeline", "listPipelines": "list_pipelines", "getPipeline": "get_pipeline",
    "deletePipeline": "delete_pipeline", "getPipelineOnnx": "pipeline_onnx",
    "listKeys": "list_keys", "createKey": "create_key", "revokeKey": "revoke_key",
    "readyz": "ready",
    "getJob": "get_job", "listJobs": "list_jobs", "cancelJob": "cancel_job",
}  # fmt: skip


def test_every_v1_operation_has_a_client_method(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    operations = {
        op["operationId"] for path, ops in spec["paths"].items() for op in ops.values() if path.startswith("/v1")
    }
    assert operations <= set(METHODS), sorted(operations - set(METHODS))  # /v2 is tritonclient's
    public = {name for name, _ in inspect.getmembers(CaliperClient, inspect.isfunction) if not name.startswith("_")}
    assert set(METHODS.values()) <= public, sorted(set(METHODS.values()) - public)


def test_detectors_ood_keys_and_model_bytes_through_the_client(caliper: CaliperClient) -> None:
    rng = np.random.default_rng(3)
    features, labels = rng.normal(size=(60, 4)), np.arange(60) % 3
    detector = caliper.fit_detector("mahalanobis", features=features, labels=labels, params={"ridge": 0.1})
    assert caliper.get_detector(detector["id"])["method"] == "mahalanobis"
    assert [d["id"] for d in caliper.list_detectors()["items"]] == [detector["id"]]
    inside, outside = rng.normal(size=(20, 4)), rng.normal(5.0, 1.0, size=(20, 4))
    scored = caliper.score_detector(detector["id"], inside)
    assert scored["scores"].shape == (20,) and scored["nearest_class"].shape == (20,)
    separation = caliper.evaluate_ood(detector_id=detector["id"], features_in=inside, features_out=outside)
    assert separation["auroc"] > 0.9 and separation["n_in"] == 20
    direct = caliper.evaluate_ood(
        scores_in=scored["scores"], scores_out=caliper.score_detector(detector["id"], outside)["scores"]
    )
    assert direct["auroc"] == separation["auroc"]
    layers = {"a": features, "b": features[:, :2] * 2}
    ensemble = caliper.fit_detector("mahalanobis", features=layers, labels=labels)
    assert caliper.score_detector(ensemble["id"], {"a": inside, "b": inside[:, :2]})["scores"].shape == (20,)
    caliper.delete_detector(ensemble["id"])

    logit_scores = caliper.ood_scores(Z_A, methods=["msp", {"name": "energy", "temperature": 2.0}])["scores"]
    assert set(logit_scores) == {"msp", "energy"} and len(logit_scores["msp"]) == len(Z_A)

    made = caliper.create_key(role="read", name="dashboards")
    assert made["key"].startswith("caliper_") and made["role"] == "read"
    assert [k["id"] for k in caliper.list_keys()["items"]] == [made["id"]]
    caliper.revoke_key(made["id"])

    data = onnx_models.mlp()[0]
    model = caliper.upload_model(data, "mlp")
    assert caliper.model_onnx(model["id"]) == data
    baseline, candidate = caliper.evaluate(logits=Z_A, labels=Y_A), caliper.evaluate(logits=Z_A, labels=Y_A)
    gate = caliper.create_gate(
        {
            "candidate": candidate["id"],
            "baseline": baseline["id"],
            "rules": [{"metric": "nll", "op": "max", "value": 5}],
        }
    )
    assert [g["id"] for g in caliper.list_gates()["items"]] == [gate["id"]]
    assert caliper.ready()["status"] == "ready"


def test_a_job_through_the_client(caliper: CaliperClient, client: TestClient) -> None:
    submitted = client.post("/v1/evaluations", json={"logits": Z_A.tolist(), "labels": Y_A.tolist()},
                            headers={"Prefer": "respond-async"}).json()  # fmt: skip
    seen: list[str] = []
    result = caliper.wait_job(submitted["id"], poll_s=0.01, on_progress=lambda job: seen.append(job["state"]))
    assert result == caliper.get_evaluation(result["id"]) and seen[-1] == "succeeded"
    assert [j["id"] for j in caliper.list_jobs(state="succeeded")["items"]] == [submitted["id"]]
    try:
        caliper.cancel_job(submitted["id"])
    except CaliperError as exc:
        assert exc.status == 409
    else:
        raise AssertionError("a finished job was cancelled")


def test_conformal_predictors_through_the_client(caliper: CaliperClient) -> None:
    rng = np.random.default_rng(8)
    logits, labels = rng.normal(size=(200, 4)) * 2, rng.integers(0, 4, 200)
    fitted = caliper.fit_conformal("top_k", logits=logits.astype(np.float32), labels=labels, params={"alpha": 0.2},
                                   tags={"run": "1"})  # fmt: skip
    assert caliper.get_conformal(fitted["id"]) == fitted
    assert [c["id"] for c in caliper.list_conformal(tag="run:1")["items"]] == [fitted["id"]]
    sets = caliper.predict_conformal(fitted["id"], logits=logits[:7])
    assert (
        sets["prediction_set"].shape == (7, 4) and sets["set_size"].tolist() == sets["prediction_set"].sum(1).tolist()
    )
    report = caliper.conformal_coverage(fitted["id"], logits=logits, labels=labels)
    assert report["coverage"] == fitted["fit_report"]["coverage"]
    exported = onnx.load_from_string(caliper.export_conformal(fitted["id"]))
    assert [o.name for o in exported.graph.output] == ["prediction_set", "set_size"]
    caliper.delete_conformal(fitted["id"])
    try:
        caliper.get_conformal(fitted["id"])
    except CaliperError as error:
        assert error.status == 404
    else:
        raise AssertionError("deleted, yet found")


def test_estimates_through_the_client(caliper: CaliperClient) -> None:
    rng = np.random.default_rng(9)
    logits, reference = rng.normal(size=(80, 3)), (rng.normal(size=(60, 3)), rng.integers(0, 3, 60))
    made = caliper.estimate(logits=logits.astype(np.float32), reference=reference, dataset="d", tags={"w": "1"})
    assert sorted(made["estimates"]) == ["accuracy_atc", "accuracy_cbpe", "accuracy_doc"]
    assert caliper.get_estimate(made["id"]) == made
    assert [e["id"] for e in caliper.list_estimates(tag="w:1")["items"]] == [made["id"]]
    caliper.delete_estimate(made["id"])
    assert caliper.list_estimates(dataset="d")["items"] == []
