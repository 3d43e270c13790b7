"""Per-application resources (settings, engine, sessions, onnxruntime cache) and their dependencies."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.core.runtime import RuntimeConfig, SessionCache
from app.storage.db import make_engine, make_session_factory


@dataclass
class Resources:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    cache: SessionCache

    @classmethod
    def create(cls, settings: Settings) -> Resources:
        engine = make_engine(settings.database_url)
        cache = SessionCache(RuntimeConfig(provider=settings.provider, intra_op_threads=settings.intra_op_threads))
        return cls(settings, engine, make_session_factory(engine), cache)


def resources_of(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


async def get_resources(request: Request) -> Resources:
    """Async on purpose: FastAPI runs sync dependencies in its thread pool (a hop per request)."""
    return resources_of(request)
