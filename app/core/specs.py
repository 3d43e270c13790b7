"""Base class for the parameter models of losses and metrics (one pydantic model per name)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

KEY_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"
MetricValue = float | list[float] | list[list[float]]  # a number, per class (average "none"), or C × C


class TermSpec(BaseModel):
    """A named loss or metric with its parameters; reported under `key` when given, else `name`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    key: str | None = Field(None, pattern=KEY_PATTERN, description="Name to report the value under.")

    @property
    def report_key(self) -> str:
        return self.key or self.name


def named(value: Any) -> Any:
    """A list's bare names as the shorthand they are: "ece" is {"name": "ece"} (a before-validator)."""
    if isinstance(value, list):
        return [{"name": v} if isinstance(v, str) else v for v in value]
    return value


def names_or_specs(names: Iterable[str]) -> Callable[[dict[str, Any]], None]:
    """A field's `json_schema_extra`: each item of its list is a spec object or, as shorthand, one of the
    bare `names` (what `named` accepts), so that validators and generated clients take both."""
    choices = sorted(names)

    def document(schema: dict[str, Any]) -> None:
        for variant in schema.get("anyOf", [schema]):
            if variant.get("type") == "array":
                variant["items"] = {"anyOf": [{"type": "string", "enum": choices}, variant["items"]]}

    return document
