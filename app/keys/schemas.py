"""What /v1/keys takes and answers."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.examples import examples
from app.records import RecordOut, Timestamp


class KeyRequest(BaseModel):
    model_config = examples({"role": "read", "name": "dashboards"})

    role: Literal["read", "write", "admin"] = "write"
    name: str = Field("", max_length=256, description="A note to recognise the key by.")


class KeyOut(RecordOut):
    project: str
    role: str
    name: str
    revoked_at: Timestamp | None


class NewKey(KeyOut):
    key: str = Field(description="The key itself: shown in this answer only (the service keeps its digest).")


class KeyList(BaseModel):
    items: list[KeyOut]
    next_cursor: None = Field(None, description="Always null: a project's keys come in one page.")
