"""What every stored resource's use cases share: get one, list newest first, delete, each answered as the
API returns it. The repository maps rows; `answer` maps a record to its answer; a resource's service
adds its own use cases (fit, score, export) and reads records for them with `record`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from app.records import Page
from app.storage.models import Base
from app.storage.repository import Repository

R = TypeVar("R", bound=Base)
A = TypeVar("A")  # what the API answers for a record


class StoredResource(Generic[R, A]):
    def __init__(self, repository: Repository[R], answer: Callable[[R], A]) -> None:
        self.repository, self.answer = repository, answer

    def record(self, record_id: str, role: str = "") -> R:
        """The stored record, for the resource's other use cases (restoring an estimator, an export)."""
        return self.repository.get(record_id, role)

    def get(self, record_id: str) -> A:
        return self.answer(self.repository.get(record_id))

    def page(
        self, limit: int, cursor: str | None, tags: tuple[tuple[str, str | None], ...] = (), **equal: str | None
    ) -> Page[A]:
        """Newest first, filtered by equality on the given (non-None) columns and by tags (key, value or
        None for any); `next_cursor` follows."""
        rows, next_cursor = self.repository.page(limit, cursor, tags, **equal)
        return Page[A](items=[self.answer(r) for r in rows], next_cursor=next_cursor)

    def delete(self, record_id: str) -> None:
        self.repository.delete(record_id)
