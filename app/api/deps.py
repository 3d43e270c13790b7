"""Per-application resources (settings, engine, sessions, onnxruntime cache) and their dependencies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from fastapi import Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.api.problems import ProblemError
from app.config import Settings
from app.core.runtime import RuntimeConfig, SessionCache
from app.sdm.service import EstimatorCache
from app.storage.db import make_engine, make_session_factory

T = TypeVar("T")


@dataclass
class Resources:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    cache: SessionCache
    estimators: EstimatorCache = field(default_factory=EstimatorCache)  # loaded SDM models by id

    @classmethod
    def create(cls, settings: Settings) -> Resources:
        engine = make_engine(settings.database_url)
        cache = SessionCache(RuntimeConfig(provider=settings.provider, intra_op_threads=settings.intra_op_threads))
        return cls(settings, engine, make_session_factory(engine), cache)


def load_or_404(resources: Resources, model: type[T], record_id: str, noun: str) -> T:
    """A stored record by id, or a 404 problem naming what was looked for."""
    with resources.sessions() as session:
        record = session.get(model, record_id)
    if record is None:
        raise ProblemError(404, f"no {noun} with id {record_id!r}")
    return record


def resources_of(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


async def get_resources(request: Request) -> Resources:
    """Async on purpose: FastAPI runs sync dependencies in its thread pool (a hop per request)."""
    return resources_of(request)
