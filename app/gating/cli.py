"""The in-process backend of the `caliper` CLI verbs (evaluate, gate, promote, report): the service's use
cases on the configured database, without HTTP. Registered as the `caliper.backends` entry point `local`."""

from __future__ import annotations

from typing import Any

import numpy as np
from caliper_client.cli import ConfigurationError


class LocalBackend:
    """The service functions on the configured database (DATABASE_URL), without HTTP."""

    def __init__(self) -> None:
        from app.config import get_settings
        from app.context import Resources
        from app.storage.db import display_url
        from app.storage.migrate import is_at_head
        from app.storage.tenancy import set_project

        settings = get_settings()
        set_project(settings.project)  # in-process, the CLI is CALIPER_PROJECT's
        self.resources = Resources.create(settings)
        try:
            ready = is_at_head(settings, self.resources.engine)
        except Exception as exc:
            self.resources.close()
            where = display_url(settings.database_url)
            raise ConfigurationError(f"cannot reach the database {where}: {str(exc).splitlines()[0]}") from exc
        if not ready:
            self.resources.close()
            where = display_url(settings.database_url)
            raise ConfigurationError(f"the database {where} is not migrated: run `caliper db upgrade` first")

    def evaluate(self, logits: np.ndarray, labels: np.ndarray, options: dict[str, Any]) -> dict[str, Any]:
        from app.evaluation.schemas import EvaluationRequest

        request = EvaluationRequest.model_validate(options)
        out = self.resources.evaluations.create(request, {"logits": logits, "labels": labels})
        return out.model_dump(mode="json")

    def gate(self, body: dict[str, Any]) -> dict[str, Any]:
        from app.gating.schemas import GateRequest

        return self.resources.gates.create(GateRequest.model_validate(body)).model_dump(mode="json")

    def tag(self, evaluation_id: str, tags: dict[str, str]) -> dict[str, Any]:
        return self.resources.evaluations.set_tags(evaluation_id, tags).model_dump(mode="json")

    def get_gate(self, gate_id: str) -> dict[str, Any]:
        return self.resources.gates.get(gate_id).model_dump(mode="json")
