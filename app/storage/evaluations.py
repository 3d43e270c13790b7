"""Evaluation records: create (all or nothing), get, list with filters and a cursor, tags, delete, arrays."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import Select, delete, select
from sqlalchemy.orm import Session, sessionmaker

from app.records import EvaluationFilter, NotFoundError
from app.storage.blobs import decode_array, encode_array
from app.storage.models import Evaluation, EvaluationArray, EvaluationTag, MetricValue
from app.storage.pagination import page


def selected(filters: EvaluationFilter) -> Select[Any]:
    """The evaluations `filters` select."""
    query = select(Evaluation)
    if filters.model is not None:
        query = query.where(Evaluation.model == filters.model)
    if filters.dataset is not None:
        query = query.where(Evaluation.dataset == filters.dataset)
    if filters.detector_id is not None:
        query = query.where(Evaluation.detector_id == filters.detector_id)
    if filters.since is not None:
        query = query.where(Evaluation.created_at >= filters.since)
    if filters.until is not None:
        query = query.where(Evaluation.created_at < filters.until)
    for key, value in filters.tags:
        tagged = select(EvaluationTag.evaluation_id).where(EvaluationTag.key == key)
        if value is not None:
            tagged = tagged.where(EvaluationTag.value == value)
        query = query.where(Evaluation.id.in_(tagged))
    return query


class EvaluationRepository:
    """Evaluations with their tags, metric values and per-row arrays."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def add(
        self,
        record: Evaluation,
        tags: dict[str, str],
        losses: dict[str, float | None],
        metrics: dict[str, Any],
        arrays: dict[str, np.ndarray],
        ood: dict[str, float | None] | None = None,
    ) -> Evaluation:
        """Write an evaluation with its tags, values and per-row arrays in one transaction; a metric
        whose value is a list (per class, a confusion matrix) is kept in `metric_lists`, not as a value row."""
        record.tags = [EvaluationTag(key=k, value=v) for k, v in tags.items()]
        lists = {k: v for k, v in metrics.items() if isinstance(v, list)}
        record.metric_lists = lists or None
        record.values = (
            [MetricValue(kind="loss", name=k, value=v) for k, v in losses.items()]
            + [MetricValue(kind="metric", name=k, value=v) for k, v in metrics.items() if k not in lists]
            + [MetricValue(kind="ood", name=k, value=v) for k, v in (ood or {}).items()]
        )
        with self.sessions.begin() as session:
            session.add(record)
            session.flush()
            session.add_all(
                EvaluationArray(evaluation_id=record.id, name=k, data=encode_array(v)) for k, v in arrays.items()
            )
        return record

    def get(self, evaluation_id: str, role: str = "") -> Evaluation:
        with self.sessions() as session:
            record = session.get(Evaluation, evaluation_id)
        if record is None:
            raise NotFoundError.of("evaluation", evaluation_id, role)
        return record

    def arrays(self, evaluation_id: str, prefix: str = "") -> dict[str, np.ndarray]:
        """The stored per-row arrays whose names start with `prefix` (all by default)."""
        query = select(EvaluationArray).where(EvaluationArray.evaluation_id == evaluation_id)
        if prefix:
            query = query.where(EvaluationArray.name.startswith(prefix, autoescape=True))
        with self.sessions() as session:
            return {
                row.name: decode_array(row.data, f"evaluation {evaluation_id} ({row.name})")
                for row in session.scalars(query)
            }

    def page(self, filters: EvaluationFilter, limit: int, cursor: str | None) -> tuple[list[Evaluation], str | None]:
        """Newest first, ordered by (created_at, id); the cursor is the last item's position."""
        with self.sessions() as session:
            return page(session, selected(filters), Evaluation, limit, cursor)

    def newest(self, filters: EvaluationFilter) -> Evaluation | None:
        query = selected(filters).order_by(Evaluation.created_at.desc(), Evaluation.id.desc()).limit(1)
        with self.sessions() as session:
            return session.scalars(query).first()

    def set_tags(self, evaluation_id: str, tags: dict[str, str]) -> Evaluation:
        """Set tags on a stored evaluation; an existing key gets the new value."""
        with self.sessions.begin() as session:
            record = session.get(Evaluation, evaluation_id)
            if record is None:
                raise NotFoundError.of("evaluation", evaluation_id)
            current = {t.key: t for t in record.tags}
            for key, value in tags.items():
                if key in current:
                    current[key].value = value
                else:
                    record.tags.append(EvaluationTag(key=key, value=value))
            session.flush()
        return record

    def delete(self, evaluation_id: str) -> None:
        with self.sessions.begin() as session:
            for table in (EvaluationArray, EvaluationTag, MetricValue):  # explicit: SQLite may run without FK cascades
                session.execute(delete(table).where(table.evaluation_id == evaluation_id))
            result = session.execute(delete(Evaluation).where(Evaluation.id == evaluation_id))
        if not result.rowcount:  # type: ignore[attr-defined]
            raise NotFoundError.of("evaluation", evaluation_id)
