"""What every stored resource's use cases share: get one, list newest first, delete, each answered as the
API returns it. The repository maps rows; `answer` maps a record to its answer; a resource's service
adds its own use cases (fit, score, export) and reads records for them with `record`. And `RecentReads`,
for the records read on every inference request."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from cachetools import TTLCache

from app.records import Page
from app.storage.models import Base
from app.storage.repository import Repository
from app.storage.tenancy import current_project

R = TypeVar("R", bound=Base)
A = TypeVar("A")  # what the API answers for a record
V = TypeVar("V")


class RecentReads(Generic[V]):
    """Records read from the database at most once per `ttl_s` per process, per project (a key means
    another record in each): for the reads on every inference request, a model's record (0.49 ms of a
    single-row predict on SQLite) and a pipeline's name (~1.3 ms of a 5 ms single-row V2 infer). This
    process's own writes `forget` at once; another process's are seen within `ttl_s`, as a key revoked
    elsewhere is (`app.storage.keys`)."""

    def __init__(self, ttl_s: float, maxsize: int = 1024) -> None:
        self._kept: TTLCache[tuple[str, Hashable], V] = TTLCache(maxsize=maxsize, ttl=ttl_s)
        self._lock = threading.Lock()

    def get(self, key: Hashable, read: Callable[[], V]) -> V:
        scoped = (current_project(), key)
        with self._lock:
            kept = self._kept.get(scoped)
        if kept is None:
            kept = read()
            with self._lock:
                self._kept[scoped] = kept
        return kept

    def forget(self) -> None:
        with self._lock:
            self._kept.clear()


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
