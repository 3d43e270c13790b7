"""The service's Prometheus metrics (api.md, "Conventions": `GET /metrics`): HTTP requests by route and
status with their latency, and the time and rows of model runs. One registry per app, so that tests and
several apps in one process do not share counts; the use cases report through callbacks."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.responses import Response

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)


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
        self.model_seconds = Histogram(
            "caliper_model_run_seconds", "onnxruntime time of uploaded models and pipelines, per call to the "
            "worker pool.", buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.model_rows = Counter("caliper_model_rows", "Rows run through uploaded models.", registry=self.registry)

    def observe_model_run(self, seconds: float, rows: int) -> None:
        self.model_seconds.observe(seconds)
        self.model_rows.inc(rows)

    def response(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
