"""RecentReads: a record is read once per time-to-live per project; `forget` drops every kept one."""

from __future__ import annotations

import time

import pytest

from app.storage.tenancy import project_scope
from app.stored import RecentReads


def test_a_record_is_read_once_per_ttl_and_per_project() -> None:
    reads: list[tuple[str, str]] = []
    recent: RecentReads[str] = RecentReads(ttl_s=0.2)

    def read(project: str, key: str) -> str:
        reads.append((project, key))
        return f"{project}:{key}"

    for project in ("a", "b"):
        with project_scope(project):
            for _ in range(3):
                assert recent.get("m1", lambda p=project: read(p, "m1")) == f"{project}:m1"
    assert reads == [("a", "m1"), ("b", "m1")]  # one read each: a key means another record in each project
    with project_scope("a"):
        recent.forget()
        recent.get("m1", lambda: read("a", "m1"))
        assert len(reads) == 3  # forgotten: read again
        time.sleep(0.25)
        recent.get("m1", lambda: read("a", "m1"))
        assert len(reads) == 4  # past its time to live: read again


def test_a_failed_read_is_not_kept() -> None:
    recent: RecentReads[str] = RecentReads(ttl_s=60)
    attempts = []

    def missing() -> str:
        attempts.append(1)
        raise LookupError("no such record")

    with project_scope("a"):
        for _ in range(2):
            with pytest.raises(LookupError):
                recent.get("gone", missing)
    assert len(attempts) == 2
