"""The in-process backend of the `caliper` CLI verbs (evaluate, gate, promote, report): the service's use
cases on the configured database, without HTTP. Registered as the `caliper.backends` entry point `local`."""

from __future__ import annotations

from typing import Any

import numpy as np
from caliper_client.cli import ConfigurationError


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
