"""Base class for the parameter models of losses and metrics (one pydantic model per name)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

KEY_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"


class TermSpec(BaseModel):
    """A named loss or metric with its parameters; reported under `key` when given, else `name`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    key: str | None = Field(None, pattern=KEY_PATTERN, description="Name to report the value under.")

    @property
    def report_key(self) -> str:
        return self.key or self.name
