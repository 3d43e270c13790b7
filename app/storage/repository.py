"""One repository per resource: plain fields in, records out, `NotFoundError` for a missing id. Every
query the service runs lives in `app.storage`, and sees only the caller's project (`app.storage.tenancy`)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, func, select, update
from sqlalchemy import delete as sql_delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.records import ConflictError, NotFoundError
from app.storage.models import Base, ModelRecord, PipelineName, PipelineRecord, SdmRecord
from app.storage.pagination import page
from app.storage.tenancy import ALL_PROJECTS

R = TypeVar("R", bound=Base)
Tags = tuple[tuple[str, str | None], ...]


class Repository(Generic[R]):
    """Add, get, page newest first by equality filters, delete: each call its own transaction."""

    def __init__(self, sessions: sessionmaker[Session], record: type[R], noun: str) -> None:
        self.sessions, self.record, self.noun = sessions, record, noun
        self.id_column = getattr(record, "id")  # noqa: B009 (every resource table has an `id` key)

    def add(self, record: R) -> R:
        with self.sessions.begin() as session:
            session.add(record)
        return record

    def get(self, record_id: str, role: str = "") -> R:
        with self.sessions() as session:
            record: R | None = session.get(self.record, record_id)
        if record is None:
            raise NotFoundError.of(self.noun, record_id, role)
        return record

    def page(self, limit: int, cursor: str | None, tags: Tags = (), **equal: str | None) -> tuple[list[R], str | None]:
        """Rows whose columns equal the given (non-None) values and whose JSON `tags` hold each (key, value)
        of `tags` (value None: any value), newest first, and the next cursor."""
        query: Select[Any] = select(self.record)
        for column, value in equal.items():
            if value is not None:
                query = query.where(getattr(self.record, column) == value)
        for key, value in tags:
            tagged = getattr(self.record, "tags")[key].as_string()  # noqa: B009 (JSON_EXTRACT on SQLite, ->> on PG)
            query = query.where(tagged.is_not(None) if value is None else tagged == value)
        with self.sessions() as session:
            return page(session, query, self.record, limit, cursor)

    def among(self, column: str, values: Collection[str], limit: int) -> list[R]:
        """Rows whose `column` is one of `values`, newest first, at most `limit` (the web report's links:
        the gates that judged these evaluations)."""
        if not values:
            return []
        query = select(self.record).where(getattr(self.record, column).in_(list(values)))
        order = (getattr(self.record, "created_at").desc(), self.id_column.desc())  # noqa: B009
        with self.sessions() as session:
            return list(session.scalars(query.order_by(*order).limit(limit)))

    def delete(self, record_id: str) -> None:
        with self.sessions.begin() as session:
            result = session.execute(sql_delete(self.record).where(self.id_column == record_id))
        if not result.rowcount:  # type: ignore[attr-defined]
            raise NotFoundError.of(self.noun, record_id)


class SdmRepository(Repository[SdmRecord]):
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        super().__init__(sessions, SdmRecord, "SDM estimator")

    def fitted_blob(self, record_id: str) -> bytes:
        """The deferred blob of fitted arrays (support exemplars included), read only to score."""
        with self.sessions() as session:
            blob = session.scalar(select(SdmRecord.arrays).where(SdmRecord.id == record_id))
        if blob is None:
            raise NotFoundError.of(self.noun, record_id)
        return blob


class ModelRepository(Repository[ModelRecord]):
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        super().__init__(sessions, ModelRecord, "model")

    def delete_model(self, model_id: str) -> str:
        """Delete the record (409 while a pipeline deploys it); returns its artifact's digest."""
        with self.sessions.begin() as session:
            record = session.get(ModelRecord, model_id)
            if record is None:
                raise NotFoundError.of(self.noun, model_id)
            pipelines = session.scalars(select(PipelineRecord).where(PipelineRecord.model_id == model_id)).all()
            if pipelines:
                named = ", ".join(f"{p.name} v{p.version} ({p.id})" for p in pipelines)
                raise ConflictError(f"model {model_id!r} is deployed by pipelines: {named}; delete those first")
            digest = record.sha256
            session.delete(record)
        return digest

    def learn_classes(self, model_id: str, classes: int) -> None:
        """Set C on a model that declared its class dimension symbolic, once (api.md: null until first run)."""
        with self.sessions.begin() as session:
            session.execute(
                update(ModelRecord)
                .where(ModelRecord.id == model_id, ModelRecord.classes.is_(None))
                .values(classes=classes)
            )


class PipelineRepository(Repository[PipelineRecord]):
    INSERT_ATTEMPTS = 5

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        super().__init__(sessions, PipelineRecord, "pipeline")

    def add_version(self, record: PipelineRecord) -> PipelineRecord:
        """Insert as the next version of its name: its counter incremented in place (`UPDATE … RETURNING`,
        which locks the row, so concurrent posts of one name take turns) in the insert's transaction; a
        deleted version's number is never given again. The first post of a name inserts the counter, and
        two such posts meet at its key: the loser retries and increments."""
        for attempt in range(self.INSERT_ATTEMPTS):
            try:
                with self.sessions.begin() as session:
                    version = session.scalar(
                        update(PipelineName)
                        .where(PipelineName.name == record.name)
                        .values(last_version=PipelineName.last_version + 1)
                        .returning(PipelineName.last_version)
                    )
                    if version is None:
                        version = 1
                        session.add(PipelineName(name=record.name, last_version=version))
                        session.flush()
                    record.version = version
                    session.add(record)
                return record
            except IntegrityError:
                if attempt == self.INSERT_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def named(self, name: str, version: int | None = None) -> PipelineRecord:
        """The given version of a name, or its latest."""
        query = select(PipelineRecord).where(PipelineRecord.name == name)
        query = query.where(PipelineRecord.version == version) if version is not None else query
        with self.sessions() as session:
            record = session.scalars(query.order_by(PipelineRecord.version.desc()).limit(1)).first()
        if record is None:
            raise NotFoundError(f"no pipeline named {name!r}" + (f" with version {version}" if version else ""))
        return record

    def delete_pipeline(self, pipeline_id: str) -> str:
        """Delete the record; returns its export's digest."""
        with self.sessions.begin() as session:
            record = session.get(PipelineRecord, pipeline_id)
            if record is None:
                raise NotFoundError.of(self.noun, pipeline_id)
            digest = record.sha256
            session.delete(record)
        return digest


class ArtifactReferences:
    """Whether any record names an artifact. Models and pipeline exports share one content-addressed
    store, and identical uploads share a file across projects: a file is unused only when no model and
    no pipeline of any project names it."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def in_use(self, digest: str) -> bool:
        with self.sessions() as session:
            for record in (ModelRecord, PipelineRecord):
                query = select(func.count()).select_from(record).where(record.sha256 == digest)
                if session.scalar(query.execution_options(**ALL_PROJECTS)):
                    return True
        return False
