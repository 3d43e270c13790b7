"""A thread-safe least-recently-used cache of values built on first use (sessions, loaded models)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


class LruCache(Generic[V]):
    """At most `capacity` values by key. `get` builds a missing value outside the lock, so a slow build
    (a graph, a large blob) does not block hits on other keys; two racing builds keep the later one."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, build: Callable[[], V]) -> V:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = build()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return value

    def evict(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)
