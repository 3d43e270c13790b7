"""Projects: every stored resource belongs to one, and every ORM query sees only the caller's.

The caller's project is a context variable, set once per request by the authentication middleware (or by
the CLI's in-process mode). Two session events do the rest, so no repository or route has to remember:
`do_orm_execute` adds `project_id = <project>` to every ORM SELECT, UPDATE and DELETE of a
`ProjectScoped` table (SQLAlchemy's `with_loader_criteria`, its documented global-filter recipe), and
`before_flush` stamps new rows with it. Every repository query is an ORM statement on the mapped classes;
Core statements on bare Table objects are left alone (only tests and migrations use them). With no
project in scope a query raises `NoProjectError` instead of reading every project's rows: isolation fails
closed. The one deliberate exception is `ALL_PROJECTS` (an execution option), for content-addressed
files that identical uploads of several projects share.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from sqlalchemy import String, event
from sqlalchemy.orm import Mapped, ORMExecuteState, Session, mapped_column, sessionmaker, with_loader_criteria

ALL_PROJECTS = {"all_projects": True}  # `.execution_options(**ALL_PROJECTS)`: counts across projects

_project: ContextVar[str | None] = ContextVar("caliper_project", default=None)


class NoProjectError(RuntimeError):
    """A query ran outside any project: a bug (never a client's fault), refused rather than unfiltered."""


class ProjectScoped:
    """Mixin of the tables whose rows belong to a project."""

    project_id: Mapped[str] = mapped_column(String(64))


def current_project() -> str:
    project = _project.get()
    if project is None:
        raise NoProjectError("no project in scope: storage refuses to read or write unscoped")
    return project


def set_project(project: str) -> None:
    """The project of everything that follows in this context (a request's task, or a CLI process)."""
    _project.set(project)


@contextmanager
def project_scope(project: str) -> Iterator[None]:
    token = _project.set(project)
    try:
        yield
    finally:
        _project.reset(token)


def scope_to_projects(factory: sessionmaker[Session]) -> None:
    """Install the two events on the sessions this factory makes."""

    @event.listens_for(factory, "do_orm_execute")
    def _filter(state: ORMExecuteState) -> None:
        if not state.is_orm_statement or not (state.is_select or state.is_update or state.is_delete):
            return  # Core statements on Table objects (test fixtures, migrations) are not filtered
        if state.is_column_load or state.is_relationship_load or state.execution_options.get("all_projects"):
            return
        project = _project.get()
        if project is None:
            if any(issubclass(mapper.class_, ProjectScoped) for mapper in state.all_mappers):
                current_project()  # raises: a scoped table, queried outside any project
            return  # e.g. api_keys, which authentication reads before any project is known
        state.statement = state.statement.options(
            with_loader_criteria(ProjectScoped, lambda table: table.project_id == project, include_aliases=True)
        )

    @event.listens_for(factory, "before_flush")
    def _stamp(session: Session, *_: Any) -> None:
        for record in session.new:
            if isinstance(record, ProjectScoped):
                record.project_id = current_project()
