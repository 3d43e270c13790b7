"""What every stored resource has: an id, a creation time (naive UTC in the database, RFC 3339 on the
wire) and the user's labels (model, dataset, tags). Tags are bounded in count and length (documented in
the OpenAPI schema), so a request cannot store thousands of rows or megabyte keys."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

MAX_TAGS = 64
TagKey = Annotated[str, Field(min_length=1, max_length=128)]
TagValue = Annotated[str, Field(max_length=512)]
Tags = Annotated[
    dict[TagKey, TagValue],
    Field(max_length=MAX_TAGS, description=f"At most {MAX_TAGS} tags; keys 1–128 characters, values up to 512."),
]


class Labels(BaseModel):
    """The labels a create request may give a record (its model, dataset and tags)."""

    model: str | None = Field(None, max_length=256)
    dataset: str | None = Field(None, max_length=256)
    tags: Tags = Field(default_factory=dict)


def new_id() -> str:
    return uuid.uuid4().hex


def utc_now() -> datetime:
    """Naive UTC, as every backend stores it."""
    return datetime.now(UTC).replace(tzinfo=None)


def rfc3339(stamp: datetime) -> str:
    return stamp.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")


Timestamp = Annotated[datetime, PlainSerializer(rfc3339, return_type=str)]  # a stored naive-UTC time, as RFC 3339


class RecordOut(BaseModel):
    """The answer describing a stored record, read from the record's attributes (`model_validate(record)`)."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    created_at: Timestamp
