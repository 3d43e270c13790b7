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
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import stamina

from caliper_client.wire import encode_npy, encode_tensor_object, to_wire

DEFAULT_MULTIPART_THRESHOLD = 1 << 20
RETRIED_STATUSES = (429, 503)  # the service stored nothing and says when to come back


class _Busy(Exception):
    def __init__(self, retry_after: float | None) -> None:
        super().__init__(f"busy; retry after {retry_after}")
        self.retry_after = retry_after


def _backoff(exc: Exception) -> bool | float:
    """stamina's hook: a 503/429 is retried after its Retry-After seconds (else with its backoff), and so is
    a request that never reached the server or whose answer was lost (safe: writes carry an Idempotency-Key)."""
    if isinstance(exc, _Busy):
        return exc.retry_after if exc.retry_after is not None else True
    return isinstance(exc, httpx.TransportError)


class RetryAfterTransport(httpx.BaseTransport):
    """Retries answers of 503 and 429, waiting what their `Retry-After` says (stamina's jittered backoff
    when it says nothing), and transport errors, at most `attempts` times within `timeout` seconds; the
    last answer (or error) is returned as it is. Bodies are buffered first, so a retry sends the same bytes
    with the same headers (its Idempotency-Key included)."""

    def __init__(self, inner: httpx.BaseTransport, attempts: int = 5, timeout: float = 120.0) -> None:
        self.inner, self.attempts, self.timeout = inner, attempts, timeout

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        response: httpx.Response | None = None
        for attempt in stamina.retry_context(
            on=_backoff, attempts=self.attempts, timeout=self.timeout, wait_initial=0.5, wait_max=30.0
        ):
            with attempt:
                response = self.inner.handle_request(request)
                if response.status_code in RETRIED_STATUSES and attempt.num < self.attempts:
                    response.read()
                    response.close()
                    raise _Busy(_seconds(response.headers.get("retry-after")))
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


class CaliperError(Exception):
    """The service answered with a problem (4xx/5xx); `problem` holds its body."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        super().__init__(f"{status}: {problem.get('detail', problem)}")
        self.status = status
        self.problem = problem


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
            self.http = httpx.Client(base_url=base_url, timeout=timeout, transport=retrying)
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
        self, *, logits: np.ndarray | None = None, labels: np.ndarray | None = None, **options: Any
    ) -> dict[str, Any]:
        """POST /v1/evaluations; array-valued options (probabilities, targets, …) are sent as tensors."""
        tensors = {
            k: np.asarray(v)
            for k, v in {"logits": logits, "labels": labels, **options}.items()
            if isinstance(v, np.ndarray) or (k in ("logits", "labels") and v is not None)
        }
        body = {k: v for k, v in options.items() if k not in tensors}
        return self._post_tensors("/v1/evaluations", body, tensors)

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
        response = self._send(f"/v1/calibrators/{calibrator_id}/apply", {}, tensors, {"accept": "application/x-npz"})
        self._raise_for_problem(response)
        probabilities: np.ndarray = np.load(io.BytesIO(response.content), allow_pickle=False)["probabilities"]
        return probabilities

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
        response = self._send(f"/v1/sdm/{sdm_id}/score", {}, tensors, {"accept": "application/x-npz"})
        self._raise_for_problem(response)
        with np.load(io.BytesIO(response.content), allow_pickle=False) as data:
            return {name: data[name] for name in data.files}

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
        response = self._send(f"/v1/models/{model_id}/predict", options, tensors, {"accept": "application/x-npz"})
        self._raise_for_problem(response)
        with np.load(io.BytesIO(response.content), allow_pickle=False) as data:
            return {name: data[name] for name in data.files}

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
