"""Evaluation records: create (all or nothing), get, list with filters and a cursor, delete, arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.storage.blobs import decode_array, encode_array
from app.storage.models import Evaluation, EvaluationArray, EvaluationTag, MetricValue
from app.storage.pagination import page


@dataclass(frozen=True)
class EvaluationFilter:
    model: str | None = None
    dataset: str | None = None
    tags: tuple[tuple[str, str], ...] = ()


def add_evaluation(
    session: Session,
    record: Evaluation,
    tags: dict[str, str],
    losses: dict[str, float | None],
    metrics: dict[str, float | None],
    arrays: dict[str, np.ndarray],
) -> None:
    """Stage an evaluation with its tags, values and per-row arrays; the caller's transaction commits."""
    record.tags = [EvaluationTag(key=k, value=v) for k, v in tags.items()]
    record.values = [MetricValue(kind="loss", name=k, value=v) for k, v in losses.items()] + [
        MetricValue(kind="metric", name=k, value=v) for k, v in metrics.items()
    ]
    session.add(record)
    session.flush()
    session.add_all(EvaluationArray(evaluation_id=record.id, name=k, data=encode_array(v)) for k, v in arrays.items())


def get_evaluation(session: Session, evaluation_id: str) -> Evaluation | None:
    return session.get(Evaluation, evaluation_id)


def load_arrays(session: Session, evaluation_id: str, names: list[str] | None = None) -> dict[str, np.ndarray]:
    query = select(EvaluationArray).where(EvaluationArray.evaluation_id == evaluation_id)
    if names is not None:
        query = query.where(EvaluationArray.name.in_(names))
    return {
        row.name: decode_array(row.data, f"evaluation {evaluation_id} ({row.name})") for row in session.scalars(query)
    }


def list_evaluations(
    session: Session, filters: EvaluationFilter, limit: int, cursor: str | None
) -> tuple[list[Evaluation], str | None]:
    """Newest first, ordered by (created_at, id); the cursor is the last item's position."""
    query = select(Evaluation)
    if filters.model is not None:
        query = query.where(Evaluation.model == filters.model)
    if filters.dataset is not None:
        query = query.where(Evaluation.dataset == filters.dataset)
    for key, value in filters.tags:
        tagged = select(EvaluationTag.evaluation_id).where(EvaluationTag.key == key, EvaluationTag.value == value)
        query = query.where(Evaluation.id.in_(tagged))
    return page(session, query, Evaluation, limit, cursor)


def delete_evaluation(session: Session, evaluation_id: str) -> bool:
    for table in (EvaluationArray, EvaluationTag, MetricValue):  # explicit: SQLite may run without FK cascades
        session.execute(delete(table).where(table.evaluation_id == evaluation_id))
    deleted: int = session.execute(delete(Evaluation).where(Evaluation.id == evaluation_id)).rowcount  # type: ignore[attr-defined]
    return deleted > 0
