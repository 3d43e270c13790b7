"""What every stored resource has: an id, a creation time (naive UTC in the database, RFC 3339 on the
wire) and the user's labels (model, dataset, tags). Tags are bounded in count and length (documented in
the OpenAPI schema), so a request cannot store thousands of rows or megabyte keys."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from app.core.errors import InputError

T = TypeVar("T")
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


def finite_or_none(values: Mapping[str, Any]) -> dict[str, Any]:
    """JSON has no inf/NaN: a value that overflowed is reported (and stored) as null, in lists too (a
    metric of C values, a confusion matrix)."""
    return {k: _finite(v) for k, v in values.items()}


def _finite(value: Any) -> Any:
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value if math.isfinite(value) else None


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


class Page(BaseModel, Generic[T]):
    """One page of a list, newest first; `next_cursor` fetches the next (null on the last page)."""

    items: list[T]
    next_cursor: str | None


class NotFoundError(LookupError):
    """No record with that id (or none matching a selector): answered 404 with this message."""

    @classmethod
    def of(cls, noun: str, record_id: str, role: str = "") -> NotFoundError:
        return cls(f"no {noun} with id {record_id!r}" + (f" ({role})" if role else ""))


class ConflictError(Exception):
    """The change would break stored records that depend on this one (answered 409 with this message)."""


@dataclass(frozen=True)
class EvaluationFilter:
    """Which stored evaluations a list or a gate's baseline selects: equality on model and dataset, and
    each tag (key, value) required, value None for any value."""

    model: str | None = None
    dataset: str | None = None
    tags: tuple[tuple[str, str | None], ...] = ()
    since: datetime | None = None  # created at or after (naive UTC)
    until: datetime | None = None  # created before
    detector_id: str | None = None  # model evaluations with this detector's OOD separation

    @classmethod
    def selecting(
        cls, model: str | None, dataset: str | None, tags: Iterable[str], field: str = "tag"
    ) -> EvaluationFilter:
        """Tags written `key:value`, or a bare `key` for any value (422 naming `field` for an empty key)."""
        return cls(model, dataset, tag_pairs(tags, field))


def tag_pairs(tags: Iterable[str], field: str = "tag") -> tuple[tuple[str, str | None], ...]:
    """Tag filters written `key:value`, or a bare `key` for any value (422 naming `field` for an empty key)."""
    pairs: list[tuple[str, str | None]] = []
    for text in tags:
        key, sep, value = text.partition(":")
        if not key:
            raise InputError(field, f"{text!r} must be key:value or key")
        pairs.append((key, value if sep else None))
    return tuple(pairs)
