"""The composition root: settings, database, onnxruntime session cache and fitted-model caches, built once
per process and handed to the use cases; the HTTP app and the CLI's in-process mode both start here."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.core.chunking import Chunking
from app.core.runtime import RuntimeConfig, SessionCache
from app.sdm.service import EstimatorCache
from app.storage.db import make_engine, make_session_factory


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
        chunking = Chunking(rows=settings.chunk_size, bytes=settings.chunk_bytes)
        cache = SessionCache(RuntimeConfig(settings.provider, settings.intra_op_threads, chunking=chunking))
        return cls(settings, engine, make_session_factory(engine), cache)
