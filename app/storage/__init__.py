"""Persistence: SQLAlchemy models, engine and sessions, blobs, Alembic migrations."""
