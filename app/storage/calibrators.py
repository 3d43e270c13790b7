"""Calibrator records: add, get, list (newest first, cursor), delete."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.storage.models import CalibratorRecord
from app.storage.pagination import page


def list_calibrators(
    session: Session, model: str | None, dataset: str | None, method: str | None, limit: int, cursor: str | None
) -> tuple[list[CalibratorRecord], str | None]:
    query = select(CalibratorRecord)
    for column, value in (
        (CalibratorRecord.model, model),
        (CalibratorRecord.dataset, dataset),
        (CalibratorRecord.method, method),
    ):
        if value is not None:
            query = query.where(column == value)
    return page(session, query, CalibratorRecord, limit, cursor)


def delete_calibrator(session: Session, calibrator_id: str) -> bool:
    deleted: int = session.execute(delete(CalibratorRecord).where(CalibratorRecord.id == calibrator_id)).rowcount  # type: ignore[attr-defined]
    return deleted > 0
