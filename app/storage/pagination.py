"""Keyset pagination, newest first by (created_at, id), with an opaque cursor."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session

from app.core.errors import InputError


class InvalidCursorError(InputError):
    """A `cursor` query parameter this service did not issue (answered as 422, field `cursor`)."""

    def __init__(self) -> None:
        super().__init__("cursor", "is not one this service issued")


def encode_cursor(created_at: datetime, record_id: str) -> str:
    raw = f"{created_at.isoformat()}|{record_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) of a cursor that `encode_cursor` wrote, exactly: base64 would skip stray
    characters and an id could hold a NUL (which PostgreSQL text refuses), so the cursor must encode back
    to itself and its id must be printable."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, record_id = raw.split("|", 1)
        created_at = datetime.fromisoformat(stamp)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidCursorError from exc
    if not record_id.isprintable() or encode_cursor(created_at, record_id) != cursor:
        raise InvalidCursorError
    return created_at, record_id


def page(
    session: Session, query: Select[Any], entity: Any, limit: int, cursor: str | None
) -> tuple[list[Any], str | None]:
    """One page of `query` over `entity` (which has created_at and id), and the next page's cursor."""
    if cursor is not None:
        stamp, record_id = decode_cursor(cursor)
        created, ident = entity.created_at, entity.id
        query = query.where(or_(created < stamp, and_(created == stamp, ident < record_id)))
    order = (entity.created_at.desc(), entity.id.desc())
    rows: list[Any] = list(session.scalars(query.order_by(*order).limit(limit + 1)))
    last = rows[limit - 1] if len(rows) > limit else None
    return rows[:limit], (encode_cursor(last.created_at, last.id) if last is not None else None)
