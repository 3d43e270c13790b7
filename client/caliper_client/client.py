"""A small Python client for the Caliper API (httpx, numpy and stamina only).

Tensors go as base64 tensor objects inside JSON while the request is small, and as multipart
`.npy` parts above `multipart_threshold` bytes, so large arrays are never turned into JSON text. Every
POST carries an `Idempotency-Key` of its own, so a retried write (after a 503, a 429 or a dropped
connection) is answered from the first attempt and never stored twice.
"""

from __future__ import annotations

import io
import json
import os
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import stamina

from caliper_client.wire import encode_npy, encode_tensor_object, to_wire

DEFAULT_MULTIPART_THRESHOLD = 1 << 20
RETRIED_STATUSES = (429, 503)  # the service stored nothing and says when to come back
NPZ = "application/x-npz"


class _Busy(Exception):
    def __init__(self, retry_after: float | None) -> None:
        super().__init__(f"busy; retry after {retry_after}")
        self.retry_after = retry_after


RETRIED_TRANSPORT_ERRORS = (httpx.TimeoutException, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)


def _backoff(exc: Exception) -> bool | float:
    """stamina's hook: a 503/429 is retried after its Retry-After seconds, and so is a request whose answer
    was lost or timed out (safe: writes carry an Idempotency-Key). A refused connection or an unknown host
    is not: it fails again at once, so the caller hears of it at once."""
    if isinstance(exc, _Busy):
        return exc.retry_after if exc.retry_after is not None else True  # an HTTP date: the backoff
    return isinstance(exc, RETRIED_TRANSPORT_ERRORS)


class RetryAfterTransport(httpx.BaseTransport):
    """Retries answers of 503 and 429 that carry a `Retry-After` (the service's word that the refusal is
    passing: a 503 without one, such as an unmigrated database, is final), waiting what it says, and lost
    answers and timeouts, at most `attempts` times within `timeout` seconds; the last answer is returned as
    it is, the last transport error raised naming the server's URL. Bodies are buffered first, so a retry
    sends the same bytes with the same headers (its Idempotency-Key included)."""

    def __init__(self, inner: httpx.BaseTransport, attempts: int = 5, timeout: float = 120.0) -> None:
        self.inner, self.attempts, self.timeout = inner, attempts, timeout

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        response: httpx.Response | None = None
        try:
            for attempt in stamina.retry_context(
                on=_backoff, attempts=self.attempts, timeout=self.timeout, wait_initial=0.5, wait_max=30.0
            ):
                with attempt:
                    response = self.inner.handle_request(request)
                    retry_after = response.headers.get("retry-after")
                    passing = response.status_code in RETRIED_STATUSES and retry_after is not None
                    if passing and attempt.num < self.attempts:
                        response.read()
                        response.close()
                        raise _Busy(_seconds(retry_after))
        except httpx.TransportError as exc:
            server = f"{request.url.scheme}://{request.url.netloc.decode()}"
            raise type(exc)(f"cannot reach the Caliper service at {server}: {exc}", request=request) from exc
        assert response is not None
        return response

    def close(self) -> None:
        self.inner.close()


def _seconds(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds; an HTTP date is left to the backoff)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _named(field: str, value: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A tensor field, or a mapping of named tensors sent as `field.<name>` (a layer ensemble's layers)."""
    if isinstance(value, Mapping):
        return {f"{field}.{name}": np.asarray(layer) for name, layer in value.items()}
    return {field: np.asarray(value)}


def _given(**tensors: np.ndarray | None) -> dict[str, np.ndarray]:
    """The tensors given (not None), as arrays: one of logits and probabilities, say."""
    return {name: np.asarray(value) for name, value in tensors.items() if value is not None}


class CaliperError(Exception):
    """The service answered with a problem (4xx/5xx); `problem` holds its body."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        hint = " (send a key: set CALIPER_API_KEY to one from `caliper keys create`)" if status == 401 else ""
        super().__init__(f"{status}: {problem.get('detail', problem)}{hint}")
        self.status = status
        self.problem = problem


def checked_url(url: str) -> str:
    """An http(s) URL with a host, else ValueError naming it (a URL without a scheme can never connect)."""
    try:
        parsed = httpx.URL(url) if "://" in url else None
    except httpx.InvalidURL:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"{url!r} is not an http(s) URL of the Caliper service: write it as http://HOST:PORT")
    return url


class CaliperClient:
    """`CaliperClient("http://127.0.0.1:8000")`, or wrap any httpx.Client (e.g. a TestClient). With a URL,
    answers of 503/429 and lost connections are retried, at most `retries` times (`RetryAfterTransport`).
    `api_key` (default: the CALIPER_API_KEY environment variable) is sent as `Authorization: Bearer`."""

    def __init__(
        self,
        base_url: str | httpx.Client,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        timeout: float = 300.0,
        retries: int = 5,
        transport: httpx.BaseTransport | None = None,
        api_key: str | None = None,
    ) -> None:
        if isinstance(base_url, httpx.Client):
            self.http = base_url
        else:
            retrying = RetryAfterTransport(transport or httpx.HTTPTransport(), attempts=retries + 1)
            self.http = httpx.Client(base_url=checked_url(base_url), timeout=timeout, transport=retrying)
        key = api_key if api_key is not None else os.environ.get("CALIPER_API_KEY")
        if key:
            self.http.headers["Authorization"] = f"Bearer {key}"
        self.multipart_threshold = multipart_threshold

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> CaliperClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---- evaluations -----------------------------------------------------------------------------
    def evaluate(
        self,
        *,
        logits: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        respond_async: bool = False,
        **options: Any,
    ) -> dict[str, Any]:
        """POST /v1/evaluations; array-valued options (probabilities, targets, …) are sent as tensors, and
        `slices` ({key: one value per row}) as JSON lists, or integer columns as .npy parts when the request
        goes as multipart; multilabel `label_sets` as a list of lists, or as CSR `(indices, offsets)` arrays. With
        `respond_async`, the answer is the job (`wait_job` polls it to the result)."""
        slices = {key: np.asarray(values) for key, values in (options.pop("slices", None) or {}).items()}
        label_sets = options.pop("label_sets", None)
        if isinstance(label_sets, tuple):  # CSR (indices, offsets): tensors, as parts when large
            options["label_sets.indices"], options["label_sets.offsets"] = (np.asarray(a) for a in label_sets)
        elif label_sets is not None:  # a list of lists of label indices
            options["label_sets"] = label_sets
        tensors = {
            k: np.asarray(v)
            for k, v in {"logits": logits, "labels": labels, **options}.items()
            if isinstance(v, np.ndarray) or (k in ("logits", "labels") and v is not None)
        }
        body = {k: v for k, v in options.items() if k not in tensors}
        if sum(t.nbytes for t in (*tensors.values(), *slices.values())) > self.multipart_threshold:
            tensors |= {f"slices.{k}": v for k, v in slices.items() if v.dtype.kind in "iu"}
        listed = {k: v.tolist() for k, v in slices.items() if f"slices.{k}" not in tensors}
        if listed:
            body["slices"] = listed
        headers = {"Prefer": "respond-async"} if respond_async else None
        return self._check(self._send("/v1/evaluations", body, tensors, headers))

    def get_evaluation(self, evaluation_id: str, per_sample: bool = False) -> dict[str, Any]:
        return self._check(self.http.get(f"/v1/evaluations/{evaluation_id}", params={"per_sample": per_sample}))

    def list_evaluations(self, **filters: Any) -> dict[str, Any]:
        return self._check(self.http.get("/v1/evaluations", params={k: v for k, v in filters.items() if v is not None}))

    def delete_evaluation(self, evaluation_id: str) -> None:
        self._check(self.http.delete(f"/v1/evaluations/{evaluation_id}"))

    # ---- calibrators ------------------------------------------------------------------------------
    def fit_calibrator(self, method: str, *, logits: np.ndarray, labels: np.ndarray, **options: Any) -> dict[str, Any]:
        """POST /v1/calibrators; `validation=(logits, labels)` is sent as the held-out split."""
        tensors = {"logits": np.asarray(logits), "labels": np.asarray(labels)}
        validation = options.pop("validation", None)
        if validation is not None:
            tensors["validation.logits"], tensors["validation.labels"] = map(np.asarray, validation)
        return self._post_tensors("/v1/calibrators", {"method": method, **options}, tensors)

    def apply_calibrator(self, calibrator_id: str, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, fetched as .npz (dtype kept)."""
        tensors = {"logits": np.asarray(logits)}
        response = self._send(f"/v1/calibrators/{calibrator_id}/apply", {}, tensors, {"accept": NPZ})
        return self._arrays(response)["probabilities"]

    def export_calibrator(self, calibrator_id: str, dtype: str = "float32") -> bytes:
        """The calibrator as ONNX model bytes (input `logits`, output `probabilities`)."""
        response = self.http.get(f"/v1/calibrators/{calibrator_id}/onnx", params={"dtype": dtype})
        self._raise_for_problem(response)
        return response.content

    def get_calibrator(self, calibrator_id: str) -> dict[str, Any]:
        return self._check(self.http.get(f"/v1/calibrators/{calibrator_id}"))

    def list_calibrators(self, **filters: Any) -> dict[str, Any]:
        return self._check(self.http.get("/v1/calibrators", params={k: v for k, v in filters.items() if v is not None}))

    def delete_calibrator(self, calibrator_id: str) -> None:
        self._check(self.http.delete(f"/v1/calibrators/{calibrator_id}"))

    # ---- conformal prediction sets -----------------------------------------------------------------
    def fit_conformal(
        self,
        method: str,
        *,
        labels: np.ndarray,
        logits: np.ndarray | None = None,
        probabilities: np.ndarray | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """POST /v1/conformal on calibration rows (logits or probabilities); options: params (alpha,
        mondrian, lambda, k_reg), calibrator_id, model, dataset, tags."""
        tensors = {"labels": np.asarray(labels)} | _given(logits=logits, probabilities=probabilities)
        return self._post_tensors("/v1/conformal", {"method": method, **options}, tensors)

    def predict_conformal(
        self, conformal_id: str, *, logits: np.ndarray | None = None, probabilities: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """`prediction_set` [N, C] bool and `set_size` [N], fetched as .npz."""
        tensors = _given(logits=logits, probabilities=probabilities)
        return self._arrays(self._send(f"/v1/conformal/{conformal_id}/predict", {}, tensors, {"accept": NPZ}))

    def conformal_coverage(
        self,
        conformal_id: str,
        *,
        labels: np.ndarray,
        logits: np.ndarray | None = None,
        probabilities: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """The JSON answer with labels: sets, sizes, coverage, class and size-stratified coverage."""
        tensors = {"labels": np.asarray(labels)} | _given(logits=logits, probabilities=probabilities)
        return self._post_tensors(f"/v1/conformal/{conformal_id}/predict", {}, tensors)

    def export_conformal(self, conformal_id: str, dtype: str = "float32") -> bytes:
        """The predictor as ONNX model bytes (input `logits`; outputs `prediction_set`, `set_size`)."""
        response = self.http.get(f"/v1/conformal/{conformal_id}/onnx", params={"dtype": dtype})
        self._raise_for_problem(response)
        return response.content

    def get_conformal(self, conformal_id: str) -> dict[str, Any]:
        return self._check(self.http.get(f"/v1/conformal/{conformal_id}"))

    def list_conformal(self, **filters: Any) -> dict[str, Any]:
        return self._check(self.http.get("/v1/conformal", params={k: v for k, v in filters.items() if v is not None}))

    def delete_conformal(self, conformal_id: str) -> None:
        self._check(self.http.delete(f"/v1/conformal/{conformal_id}"))

    # ---- label-free accuracy estimates -------------------------------------------------------------
    def estimate(
        self,
        *,
        logits: np.ndarray | None = None,
        probabilities: np.ndarray | None = None,
        reference: tuple[np.ndarray, np.ndarray] | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """POST /v1/estimates on unlabelled rows; `reference=(logits, labels)` (labelled rows from the
        training distribution) enables atc and doc; options: methods, calibrator_id, model, dataset, tags."""
        tensors = _given(logits=logits, probabilities=probabilities)
        if reference is not None:
            tensors["reference.logits"], tensors["reference.labels"] = map(np.asarray, reference)
        return self._post_tensors("/v1/estimates", options, tensors)

    def get_estimate(self, estimate_id: str) -> dict[str, Any]:
        return self._check(self.http.get(f"/v1/estimates/{estimate_id}"))

    def list_estimates(self, **filters: Any) -> dict[str, Any]:
        return self._check(self.http.get("/v1/estimates", params={k: v for k, v in filters.items() if v is not None}))

    def delete_estimate(self, estimate_id: str) -> None:
        self._check(self.http.delete(f"/v1/estimates/{estimate_id}"))

    # ---- detectors and OOD scores ------------------------------------------------------------------
    def fit_detector(
        self,
        method: str,
        *,
        features: np.ndarray | Mapping[str, np.ndarray],
        labels: np.ndarray | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """POST /v1/detectors; `features` is [N, D] or a mapping of layers (a layer ensemble); options:
        params, model, dataset, tags, and `validation={"features_in": layers, "features_out": layers}` (the
        ensemble's weights)."""
        tensors = _named("features", features)
        if labels is not None:
            tensors["labels"] = np.asarray(labels)
        for name, layers in (options.pop("validation", None) or {}).items():
            tensors |= _named(f"validation.{name}", layers)
        return self._post_tensors("/v1/detectors", {"method": method, **options}, tensors)

    def score_detector(
        self, detector_id: str, features: np.ndarray | Mapping[str, np.ndarray], **options: Any
    ) -> dict[str, np.ndarray]:
        """Per-row `scores` (higher: more out-of-distribution) and `nearest_class`, fetched as .npz."""
        response = self._send(
            f"/v1/detectors/{detector_id}/score", options, _named("features", features), {"accept": NPZ}
        )
        return self._arrays(response)

    def get_detector(self, detector_id: str) -> dict[str, Any]:
        return self._check(self.http.get(f"/v1/detectors/{detector_id}"))

    def list_detectors(self, **filters: Any) -> dict[str, Any]:
        return self._check(self.http.get("/v1/detectors", params={k: v for k, v in filters.items() if v is not None}))

    def delete_detector(self, detector_id: str) -> None:
        self._check(self.http.delete(f"/v1/detectors/{detector_id}"))

    def ood_scores(self, logits: np.ndarray, methods: list[Any] | None = None) -> dict[str, Any]:
        """POST /v1/ood/scores: logit-based scores by method (no fit needed)."""
        body = {"methods": methods} if methods is not None else {}
        return self._post_tensors("/v1/ood/scores", body, {"logits": np.asarray(logits)})

    def evaluate_ood(
        self,
        *,
        scores_in: np.ndarray | None = None,
        scores_out: np.ndarray | None = None,
        detector_id: str | None = None,
        features_in: np.ndarray | Mapping[str, np.ndarray] | None = None,
        features_out: np.ndarray | Mapping[str, np.ndarray] | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """POST /v1/ood/evaluate: separation metrics of given scores, or of a detector's scores of features."""
        given = {"scores_in": scores_in, "scores_out": scores_out, "features_in": features_in,
                 "features_out": features_out}  # fmt: skip
        tensors = {k: v for name, value in given.items() if value is not None for k, v in _named(name, value).items()}
        body = {"detector_id": detector_id, **options} if detector_id is not None else options
        return self._post_tensors("/v1/ood/evaluate", body, tensors)

    # ---- SDM ---------------------------------------------------------------------------------------
    def fit_sdm(
        self,
        *,
        support: tuple[np.ndarray, np.ndarray, np.ndarray],
        calibration: tuple[np.ndarray, np.ndarray, np.ndarray],
        **options: Any,
    ) -> dict[str, Any]:
        """POST /v1/sdm; each set is (embeddings, logits, labels); options: params, model, dataset, tags."""
        tensors = {
            f"{part}.{name}": np.asarray(value)
            for part, values in (("support", support), ("calibration", calibration))
            for name, value in zip(("embeddings", "logits", "labels"), values, strict=True)
        }
        return self._post_tensors("/v1/sdm", options, tensors)

    def score_sdm(self, sdm_id: str, *, embeddings: np.ndarray, logits: np.ndarray) -> dict[str, np.ndarray]:
        """Per-row SDM outputs, fetched as .npz (array names as api.md's JSON fields)."""
        tensors = {"embeddings": np.asarray(embeddings), "logits": np.asarray(logits)}
        return self._arrays(self._send(f"/v1/sdm/{sdm_id}/score", {}, tensors, {"accept": NPZ}))

    def get_sdm(self, sdm_id: str) -> dict[str, Any]:
        return self._check(self.http.get(f"/v1/sdm/{sdm_id}"))

    def list_sdm(self, **filters: Any) -> dict[str, Any]:
        return self._check(self.http.get("/v1/sdm", params={k: v for k, v in filters.items() if v is not None}))

    def delete_sdm(self, sdm_id: str) -> None:
        self._check(self.http.delete(f"/v1/sdm/{sdm_id}"))

    # ---- models ------------------------------------------------------------------------------------
    def upload_model(self, onnx_file: str | Path | bytes, name: str, **options: Any) -> dict[str, Any]:
        """POST /v1/models with a file path or the model's bytes; options: logits_output,
        embedding_output, feature_outputs, tags."""
        data = onnx_file if isinstance(onnx_file, bytes) else Path(onnx_file).read_bytes()
        files = {
            "file": ("model.onnx", data, "application/octet-stream"),
            "request": ("request.json", json.dumps({"name": name, **options}).encode(), "application/json"),
        }
        return self._check(self._post("/v1/models", files=files))

    def predict(self, model_id: str, inputs: Mapping[str, np.ndarray], **options: Any) -> dict[str, np.ndarray]:
        """Per-row columns, fetched as .npz (`sdm.*` keys with sdm_id); options: calibrator_id, detector_id,
        sdm_id, return_embedding."""
        tensors = {f"inputs.{k}": np.asarray(v) for k, v in inputs.items()}
        return self._arrays(self._send(f"/v1/models/{model_id}/predict", options, tensors, {"accept": NPZ}))

    def evaluate_model(
        self, model_id: str, inputs: Mapping[str, np.ndarray], *, labels: np.ndarray | None = None, **options: Any
    ) -> dict[str, Any]:
        """POST /v1/models/{id}/evaluations; `ood_inputs` (a mapping) and array options go as tensors."""
        tensors = {f"inputs.{k}": np.asarray(v) for k, v in inputs.items()}
        tensors |= {f"ood_inputs.{k}": np.asarray(v) for k, v in (options.pop("ood_inputs", None) or {}).items()}
        tensors |= {k: np.asarray(v) for k, v in {"labels": labels, **options}.items() if isinstance(v, np.ndarray)}
        body = {k: v for k, v in options.items() if k not in tensors}
        return self._post_tensors(f"/v1/models/{model_id}/evaluations", body, tensors)

    def get_model(self, model_id: str) -> dict[str, Any]:
        return self._check(self.http.get(f"/v1/models/{model_id}"))

    def list_models(self, **filters: Any) -> dict[str, Any]:
        return self._check(self.http.get("/v1/models", params={k: v for k, v in filters.items() if v is not None}))

    def delete_model(self, model_id: str) -> None:
        self._check(self.http.delete(f"/v1/models/{model_id}"))

    def model_onnx(self, model_id: str) -> bytes:
        """The uploaded model's bytes, as uploaded."""
        response = self.http.get(f"/v1/models/{model_id}/onnx")
        self._raise_for_problem(response)
        return response.content

    def export_model(self, model_id: str, **heads: str | None) -> bytes:
        """The model with its heads merged into one ONNX model (calibrator_id, detector_id, sdm_id, dtype)."""
        params = {k: v for k, v in heads.items() if v is not None}
        response = self.http.get(f"/v1/models/{model_id}/export", params=params)
        self._raise_for_problem(response)
        return response.content

    # ---- pipelines ---------------------------------------------------------------------------------
    def create_pipeline(self, name: str, model_id: str, **heads: Any) -> dict[str, Any]:
        """POST /v1/pipelines: a new version of `name` (served on /v2 by that name)."""
        body = {"name": name, "model_id": model_id, **{k: v for k, v in heads.items() if v is not None}}
        return self._check(self._post("/v1/pipelines", json=body))

    def get_pipeline(self, pipeline_id: str) -> dict[str, Any]:
        return self._check(self.http.get(f"/v1/pipelines/{pipeline_id}"))

    def list_pipelines(self, **filters: Any) -> dict[str, Any]:
        return self._check(self.http.get("/v1/pipelines", params={k: v for k, v in filters.items() if v is not None}))

    def pipeline_onnx(self, pipeline_id: str) -> bytes:
        response = self.http.get(f"/v1/pipelines/{pipeline_id}/onnx")
        self._raise_for_problem(response)
        return response.content

    def delete_pipeline(self, pipeline_id: str) -> None:
        self._check(self.http.delete(f"/v1/pipelines/{pipeline_id}"))

    # ---- gates -------------------------------------------------------------------------------------
    def create_gate(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._check(self._post("/v1/gates", json=dict(body)))

    def get_gate(self, gate_id: str) -> dict[str, Any]:
        return self._check(self.http.get(f"/v1/gates/{gate_id}"))

    def evaluation_report_html(self, evaluation_id: str) -> str:
        """The evaluation's standalone HTML report (assets inlined: it opens offline)."""
        return self._html(f"/v1/evaluations/{evaluation_id}/report.html")

    def gate_report_html(self, gate_id: str) -> str:
        """The gate's standalone HTML report (assets inlined: it opens offline)."""
        return self._html(f"/v1/gates/{gate_id}/report.html")

    def _html(self, path: str) -> str:
        response = self.http.get(path)
        self._raise_for_problem(response)
        return response.text

    def list_gates(self, **filters: Any) -> dict[str, Any]:
        return self._check(self.http.get("/v1/gates", params={k: v for k, v in filters.items() if v is not None}))

    # ---- jobs -------------------------------------------------------------------------------------
    def get_job(self, job_id: str) -> dict[str, Any]:
        """GET /v1/jobs/{id}: state, progress, and when it has succeeded the `result`."""
        return self._check(self.http.get(f"/v1/jobs/{job_id}"))

    def list_jobs(self, **filters: Any) -> dict[str, Any]:
        return self._check(self.http.get("/v1/jobs", params={k: v for k, v in filters.items() if v is not None}))

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """DELETE /v1/jobs/{id}: the job, cancelled or still stopping (then poll it)."""
        return self._check(self.http.delete(f"/v1/jobs/{job_id}"))

    def wait_job(
        self, job_id: str, poll_s: float = 0.5, on_progress: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """Poll the job until it has finished; its `result` when it succeeded, else a CaliperError with its
        problem. `on_progress` sees each poll's job (a progress bar)."""
        while True:
            job = self.get_job(job_id)
            if on_progress is not None:
                on_progress(job)
            if job["state"] == "succeeded":
                result: dict[str, Any] = job["result"]
                return result
            if job["state"] in ("failed", "cancelled"):
                raise CaliperError(job["error"].get("status", 500), job["error"])
            time.sleep(poll_s)

    # ---- keys and health ----------------------------------------------------------------------------
    def create_key(self, role: str = "write", name: str = "") -> dict[str, Any]:
        """A new key of the caller's project (an admin key's call); its secret `key` is in this answer only."""
        return self._check(self._post("/v1/keys", json={"role": role, "name": name}))

    def list_keys(self) -> dict[str, Any]:
        return self._check(self.http.get("/v1/keys"))

    def revoke_key(self, key_id: str) -> None:
        self._check(self.http.delete(f"/v1/keys/{key_id}"))

    def ready(self) -> dict[str, Any]:
        """GET /readyz: each dependency's check (a CaliperError with them when the service is not ready)."""
        return self._check(self.http.get("/readyz"))

    def set_tags(self, evaluation_id: str, tags: Mapping[str, str]) -> dict[str, Any]:
        return self._check(self._post(f"/v1/evaluations/{evaluation_id}/tags", json={"tags": dict(tags)}))

    # ---- transport -------------------------------------------------------------------------------
    def _post_tensors(self, path: str, body: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return self._check(self._send(path, body, tensors))

    def _send(
        self,
        path: str,
        body: Mapping[str, Any],
        tensors: Mapping[str, np.ndarray],
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """JSON with base64 tensors (nested under dotted names) when small, multipart .npy parts otherwise."""
        size = sum(t.nbytes for t in tensors.values())
        if size <= self.multipart_threshold:
            payload: dict[str, Any] = dict(body)
            for name, value in tensors.items():
                *parents, leaf = name.split(".")
                node = payload
                for key in parents:
                    node = node.setdefault(key, {})
                node[leaf] = encode_tensor_object(to_wire(value))
            return self._post(path, json=payload, headers=headers)
        files: dict[str, Any] = {"request": ("request.json", json.dumps(body).encode(), "application/json")}
        files.update({k: (f"{k}.npy", encode_npy(to_wire(v)), "application/octet-stream") for k, v in tensors.items()})
        return self._post(path, files=files, headers=headers)

    def _post(self, path: str, headers: Mapping[str, str] | None = None, **content: Any) -> httpx.Response:
        """A POST with an Idempotency-Key of its own: its retries are one logical request."""
        keyed = {"Idempotency-Key": uuid.uuid4().hex, **(headers or {})}
        return self.http.post(path, headers=keyed, **content)

    def _arrays(self, response: httpx.Response) -> dict[str, np.ndarray]:
        """The arrays of an .npz answer (read without pickles)."""
        self._raise_for_problem(response)
        with np.load(io.BytesIO(response.content), allow_pickle=False) as data:
            return {name: data[name] for name in data.files}

    @staticmethod
    def _raise_for_problem(response: httpx.Response) -> None:
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"detail": response.text}
            raise CaliperError(response.status_code, problem)

    def _check(self, response: httpx.Response) -> dict[str, Any]:
        """The JSON body of a success; a problem raises CaliperError."""
        self._raise_for_problem(response)
        if response.status_code == 204 or not response.content:
            return {}
        result: dict[str, Any] = response.json()
        return result
