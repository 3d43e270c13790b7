"""The service's Prometheus metrics (api.md, "Conventions": `GET /metrics`): HTTP requests by route and
status with their latency (V2 gRPC calls by method and code, with theirs), the time and rows of model
runs, model workers replaced, requests refused by the limits and database errors. One registry per app,
so that tests and several apps in one process do not share counts; the use cases report through
callbacks. Under `caliper serve --workers N` each process writes its values to PROMETHEUS_MULTIPROC_DIR
and /metrics sums them over the processes (prometheus-client's multi-process mode)."""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.responses import Response

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    """The metrics of one app, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "caliper_http_requests", "HTTP requests answered.", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "caliper_http_request_seconds",
            "Time from the request's start to its answer's end.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.grpc_calls = Counter(
            "caliper_grpc_calls", "V2 gRPC calls answered, by method and status code.", ["method", "code"],
            registry=self.registry,
        )  # fmt: skip
        self.grpc_latency = Histogram(
            "caliper_grpc_call_seconds", "Time of a V2 gRPC call in the service, by method.", ["method"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.model_seconds = Histogram(
            "caliper_model_run_seconds", "onnxruntime time of uploaded models and pipelines, per call to the "
            "worker pool.", buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.model_rows = Counter("caliper_model_rows", "Rows run through uploaded models.", registry=self.registry)
        self.graph_seconds = Histogram(
            "caliper_onnxruntime_run_seconds",
            "onnxruntime time of the service's own graphs, per run, by kind (evaluation, objective, knn-exact, …).",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.request_rows = Counter(
            "caliper_request_rows",
            "Rows of the tensors requests sent (the largest tensor's first dimension), by route.",
            ["route"],
            registry=self.registry,
        )
        self.worker_restarts = Counter(
            "caliper_model_worker_restarts",
            "Model worker processes replaced after a crash, a limit or a broken call.",
            registry=self.registry,
        )
        self.refusals = Counter(
            "caliper_refused_requests",
            "Requests refused by a limit: rate-limit (429), overloaded (503), body-timeout (408), header-timeout "
            "(408), connections (503: CALIPER_MAX_CONNECTIONS).",
            ["reason"],
            registry=self.registry,
        )
        self.database_errors = Counter(
            "caliper_database_errors",
            "Requests that met a database error: unavailable (answered 503) or error (500).",
            ["kind"],
            registry=self.registry,
        )

    def observe_model_run(self, seconds: float, rows: int) -> None:
        self.model_seconds.observe(seconds)
        self.model_rows.inc(rows)

    def observe_graph_run(self, kind: str, seconds: float) -> None:
        self.graph_seconds.labels(kind).observe(seconds)

    def response(self) -> Response:
        registry = self.registry
        if os.environ.get(MULTIPROCESS_DIR):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
