"""The in-process backend of the `caliper` CLI verbs (evaluate, gate, promote, report): the service's use
cases on the configured database, without HTTP. Registered as the `caliper.backends` entry point `local`."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from caliper_client.cli import ConfigurationError, Progress


class LocalBackend:
    """The service functions on the configured database (DATABASE_URL), without HTTP."""

    def __init__(self) -> None:
        from app.context import DatabaseNotReadyError, local_resources

        try:
            self.resources = local_resources()
        except DatabaseNotReadyError as exc:
            raise ConfigurationError(str(exc)) from exc

    def evaluate(self, logits: np.ndarray, labels: np.ndarray, options: dict[str, Any]) -> dict[str, Any]:
        from app.evaluation.schemas import EvaluationRequest

        options = dict(options)
        slices = {f"slices.{key}": np.asarray(column) for key, column in (options.pop("slices", None) or {}).items()}
        request = EvaluationRequest.model_validate(options)
        out = self.resources.evaluations.create(request, {"logits": logits, "labels": labels, **slices})
        return out.model_dump(mode="json")

    def evaluate_sources(
        self, sources: dict[str, str], options: dict[str, Any], dask: str | None, on_progress: Progress
    ) -> dict[str, Any]:
        """The files read by this process (any path or URL its user can read), or by the workers of the
        Dask cluster `dask`, with the progress of the pass over their rows."""
        from app.core import progress
        from app.distributed.cluster import Cluster
        from app.evaluation.schemas import EvaluationRequest
        from app.sources.locations import Places

        options = dict(options)
        slices = {f"slices.{key}": np.asarray(column) for key, column in (options.pop("slices", None) or {}).items()}
        request = EvaluationRequest.model_validate({**options, "source": sources})
        evaluations = self.resources.evaluations
        evaluations.files = replace(evaluations.files, places=Places.everywhere())
        if dask:
            evaluations.cluster = Cluster(dask)
        try:
            with progress.reporting(lambda done, total, _: on_progress(done, total)):
                out = evaluations.create(request, slices)
        finally:
            if evaluations.cluster is not None:
                evaluations.cluster.close()
        return out.model_dump(mode="json")

    def gate(self, body: dict[str, Any]) -> dict[str, Any]:
        from app.gating.schemas import GateRequest

        return self.resources.gates.create(GateRequest.model_validate(body)).model_dump(mode="json")

    def tag(self, evaluation_id: str, tags: dict[str, str]) -> dict[str, Any]:
        return self.resources.evaluations.set_tags(evaluation_id, tags).model_dump(mode="json")

    def check_baseline(self, baseline: str | dict[str, str]) -> None:
        from app.gating.schemas import BaselineSelector
        from app.records import NotFoundError

        selector = baseline if isinstance(baseline, str) else BaselineSelector.model_validate(baseline)
        try:
            self.resources.gates.baseline_id(selector)
        except NotFoundError as exc:
            raise ConfigurationError(f"baseline: {exc}") from exc

    def get_gate(self, gate_id: str) -> dict[str, Any]:
        return self.resources.gates.get(gate_id).model_dump(mode="json")

    def report_html(self, kind: str, record_id: str) -> str:
        """The standalone report the service's `/v1/{kind}/{id}/report.html` answers, rendered here."""
        from app.report import render

        pages = self.resources.report
        if kind == "gates":
            return render.standalone("gate.html", pages.gate(record_id))
        return render.standalone("evaluation.html", pages.evaluation(record_id))

    def is_evaluation(self, record_id: str) -> bool:
        from app.records import NotFoundError

        try:
            self.resources.evaluations.get(record_id)
        except NotFoundError:
            return False
        return True
