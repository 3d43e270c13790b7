"""ORM tables. Metric values are rows (so history queries filter and sort by metric); per-row arrays
are compressed .npy blobs, so a later comparison can pair two evaluations row by row."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from app.storage.tenancy import ProjectScoped

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class FiniteJson(TypeDecorator[Any]):
    """JSON whose non-finite numbers are stored as null, as the answers show them: JSON has no NaN or
    Infinity, PostgreSQL refuses them and SQLite would keep text that no JSON parser reads (a fit report
    of logits near 1e308 holds an infinite NLL)."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return _finite(value)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Evaluation(ProjectScoped, Base):
    __tablename__ = "evaluations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime())  # naive UTC on every backend
    model: Mapped[str | None] = mapped_column(String(256), index=True)
    dataset: Mapped[str | None] = mapped_column(String(256), index=True)
    n: Mapped[int] = mapped_column(Integer)
    classes: Mapped[int] = mapped_column(Integer)
    dataset_fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    parameters: Mapped[dict[str, Any]] = mapped_column(FiniteJson)
    reliability: Mapped[list[dict[str, Any]]] = mapped_column(FiniteJson)
    calibrator_id: Mapped[str | None] = mapped_column(String(32), index=True)  # evaluated after this calibrator
    sdm_id: Mapped[str | None] = mapped_column(String(32), index=True)  # SDM region metrics from this estimator
    model_id: Mapped[str | None] = mapped_column(String(32), index=True)  # the uploaded model that was run
    slices: Mapped[dict[str, Any] | None] = mapped_column(FiniteJson, nullable=True)  # per key, per value
    metric_lists: Mapped[dict[str, Any] | None] = mapped_column(FiniteJson, nullable=True)  # list-valued metrics
    detector_id: Mapped[str | None] = mapped_column(String(32), index=True)  # OOD separation of this detector
    ood_plots: Mapped[dict[str, Any] | None] = mapped_column(FiniteJson, nullable=True)  # its ROC and histograms

    tags: Mapped[list[EvaluationTag]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, lazy="selectin"
    )
    values: Mapped[list[MetricValue]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, lazy="selectin"
    )

    __table_args__ = (Index("ix_evaluations_project_id_created_at_id", "project_id", "created_at", "id"),)


class EvaluationTag(Base):
    __tablename__ = "evaluation_tags"

    evaluation_id: Mapped[str] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(String(512))

    __table_args__ = (Index("ix_evaluation_tags_key_value", "key", "value"),)


class MetricValue(Base):
    """One loss or metric of one evaluation: `kind` is 'loss' or 'metric', `name` its report key."""

    __tablename__ = "metric_values"

    evaluation_id: Mapped[str] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[float | None] = mapped_column(Float(53))  # null: the value overflowed (not finite)

    __table_args__ = (Index("ix_metric_values_kind_name_value", "kind", "name", "value"),)


class EvaluationArray(Base):
    """A per-row array (label, prediction, confidence, loss.<key>) as zlib-compressed .npy bytes."""

    __tablename__ = "evaluation_arrays"

    evaluation_id: Mapped[str] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(80), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class CalibratorRecord(ProjectScoped, Base):
    """A fitted calibrator: method, hyper-parameters, fitted parameters (api.md names) and fit report."""

    __tablename__ = "calibrators"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime())  # naive UTC
    method: Mapped[str] = mapped_column(String(32), index=True)
    classes: Mapped[int] = mapped_column(Integer)
    model: Mapped[str | None] = mapped_column(String(256), index=True)
    dataset: Mapped[str | None] = mapped_column(String(256), index=True)
    tags: Mapped[dict[str, str]] = mapped_column(FiniteJson)
    params: Mapped[dict[str, Any]] = mapped_column(FiniteJson)
    fitted: Mapped[dict[str, Any]] = mapped_column(FiniteJson)
    fit_report: Mapped[dict[str, Any]] = mapped_column(FiniteJson)

    __table_args__ = (Index("ix_calibrators_project_id_created_at_id", "project_id", "created_at", "id"),)


class GateRecord(ProjectScoped, Base):
    """A gate verdict with its rule-by-rule report."""

    __tablename__ = "gates"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime())  # naive UTC
    candidate_id: Mapped[str] = mapped_column(String(32), index=True)
    baseline_id: Mapped[str] = mapped_column(String(32), index=True)
    verdict: Mapped[str] = mapped_column(String(8))
    request: Mapped[dict[str, Any]] = mapped_column(FiniteJson)
    report: Mapped[dict[str, Any]] = mapped_column(FiniteJson)

    __table_args__ = (Index("ix_gates_project_id_created_at_id", "project_id", "created_at", "id"),)


class DetectorRecord(ProjectScoped, Base):
    """A fitted OOD detector: method, params, and its fitted arrays as one zstd-compressed .npz blob."""

    __tablename__ = "detectors"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime())  # naive UTC
    method: Mapped[str] = mapped_column(String(32), index=True)
    classes: Mapped[int] = mapped_column(Integer)
    dim: Mapped[int] = mapped_column(Integer)
    model: Mapped[str | None] = mapped_column(String(256), index=True)
    dataset: Mapped[str | None] = mapped_column(String(256))
    tags: Mapped[dict[str, str]] = mapped_column(FiniteJson)
    params: Mapped[dict[str, Any]] = mapped_column(FiniteJson)
    fit_info: Mapped[dict[str, Any]] = mapped_column(FiniteJson)
    arrays: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (Index("ix_detectors_project_id_created_at_id", "project_id", "created_at", "id"),)


class SdmRecord(ProjectScoped, Base):
    """A fitted SDM estimator: thresholds and calibration report as JSON; the support exemplars, their
    prediction codes and the per-class eCDF tables as one zstd-compressed .npz blob, loaded only to score."""

    __tablename__ = "sdm_estimators"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime())  # naive UTC
    classes: Mapped[int] = mapped_column(Integer)
    dim: Mapped[int] = mapped_column(Integer)
    n_support: Mapped[int] = mapped_column(Integer)
    n_calibration: Mapped[int] = mapped_column(Integer)
    model: Mapped[str | None] = mapped_column(String(256), index=True)
    dataset: Mapped[str | None] = mapped_column(String(256))
    tags: Mapped[dict[str, str]] = mapped_column(FiniteJson)
    params: Mapped[dict[str, Any]] = mapped_column(FiniteJson)
    fitted: Mapped[dict[str, Any]] = mapped_column(FiniteJson)
    calibration: Mapped[dict[str, Any]] = mapped_column(FiniteJson)
    arrays: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)

    __table_args__ = (Index("ix_sdm_estimators_project_id_created_at_id", "project_id", "created_at", "id"),)


class ModelRecord(ProjectScoped, Base):
    """An uploaded ONNX classifier: what intake read from it; its bytes live in the artifact store under
    `sha256` (shared by uploads of the same bytes, removed with the last record that names them)."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime())  # naive UTC
    name: Mapped[str] = mapped_column(String(256), index=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(Integer)
    opset: Mapped[int] = mapped_column(Integer)
    inputs: Mapped[list[dict[str, Any]]] = mapped_column(FiniteJson)
    outputs: Mapped[list[dict[str, Any]]] = mapped_column(FiniteJson)
    logits_output: Mapped[str] = mapped_column(String(256))
    embedding_output: Mapped[str | None] = mapped_column(String(256))
    feature_outputs: Mapped[list[str]] = mapped_column(FiniteJson)
    classes: Mapped[int | None] = mapped_column(Integer)
    binary: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())  # logits: log-odds [N]
    tags: Mapped[dict[str, str]] = mapped_column(FiniteJson)

    __table_args__ = (Index("ix_models_project_id_created_at_id", "project_id", "created_at", "id"),)


class PipelineRecord(ProjectScoped, Base):
    """A named, versioned deployment of a model with its heads. Its composed export is built once, at
    creation, and kept in the artifact store under `sha256`; V2 serves that file, so the answers of a
    version never change, whatever later happens to the heads it was built from."""

    __tablename__ = "pipelines"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime())  # naive UTC
    name: Mapped[str] = mapped_column(String(256))
    version: Mapped[int] = mapped_column(Integer)
    model_id: Mapped[str] = mapped_column(String(32), index=True)
    calibrator_id: Mapped[str | None] = mapped_column(String(32))
    detector_id: Mapped[str | None] = mapped_column(String(32))
    sdm_id: Mapped[str | None] = mapped_column(String(32))
    conformal_id: Mapped[str | None] = mapped_column(String(32))
    dtype: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(Integer)
    inputs: Mapped[list[dict[str, Any]]] = mapped_column(FiniteJson)
    outputs: Mapped[list[dict[str, Any]]] = mapped_column(FiniteJson)
    tags: Mapped[dict[str, str]] = mapped_column(FiniteJson)

    __table_args__ = (
        Index("ix_pipelines_project_id_created_at_id", "project_id", "created_at", "id"),
        Index("ix_pipelines_project_id_name_version", "project_id", "name", "version", unique=True),
    )


class PipelineName(ProjectScoped, Base):
    """The last version given to a pipeline name, so that a deleted version's number is never given again
    (a V2 client pinned to `name/versions/2` never reaches another deployment)."""

    __tablename__ = "pipeline_names"

    project_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    last_version: Mapped[int] = mapped_column(Integer)


class IdempotencyRecord(ProjectScoped, Base):
    """The first answer to a POST sent with an `Idempotency-Key`: claimed (state `pending`) before the
    request runs, so a concurrent duplicate meets the primary key instead of running twice; completed with
    the answer and the body's digest, which a repeat must match."""

    __tablename__ = "idempotency_keys"

    project_id: Mapped[str] = mapped_column(String(64), primary_key=True)  # keys are the caller's project's
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(), index=True)  # naive UTC
    request: Mapped[str] = mapped_column(String(512))  # "POST /v1/evaluations"
    state: Mapped[str] = mapped_column(String(8))  # pending | done
    body_sha256: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[int | None] = mapped_column(Integer)
    headers: Mapped[list[list[str]] | None] = mapped_column(FiniteJson)
    body: Mapped[bytes | None] = mapped_column(LargeBinary)


class ConformalRecord(ProjectScoped, Base):
    """A split conformal predictor: its score method and params, the calibrator it ranks through (if
    any), and q̂ (one, or one per class under Mondrian; null for +∞)."""

    __tablename__ = "conformal_predictors"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime())  # naive UTC
    method: Mapped[str] = mapped_column(String(16), index=True)
    classes: Mapped[int] = mapped_column(Integer)
    n_calibration: Mapped[int] = mapped_column(Integer)
    calibrator_id: Mapped[str | None] = mapped_column(String(32))
    model: Mapped[str | None] = mapped_column(String(256), index=True)
    dataset: Mapped[str | None] = mapped_column(String(256), index=True)
    tags: Mapped[dict[str, str]] = mapped_column(FiniteJson)
    params: Mapped[dict[str, Any]] = mapped_column(FiniteJson)
    quantiles: Mapped[list[float | None]] = mapped_column(FiniteJson)  # [q̂], or [q̂_c] under Mondrian
    fit_report: Mapped[dict[str, Any]] = mapped_column(FiniteJson)

    __table_args__ = (Index("ix_conformal_predictors_project_id_created_at_id", "project_id", "created_at", "id"),)


class EstimateRecord(ProjectScoped, Base):
    """A label-free accuracy estimate of unlabelled rows: the estimates by method, the mean confidence,
    and what the labelled reference showed."""

    __tablename__ = "estimates"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime())  # naive UTC
    n: Mapped[int] = mapped_column(Integer)
    calibrator_id: Mapped[str | None] = mapped_column(String(32))
    model_id: Mapped[str | None] = mapped_column(String(32))
    model: Mapped[str | None] = mapped_column(String(256), index=True)
    dataset: Mapped[str | None] = mapped_column(String(256), index=True)
    tags: Mapped[dict[str, str]] = mapped_column(FiniteJson)
    estimates: Mapped[dict[str, float | None]] = mapped_column(FiniteJson)
    mean_confidence: Mapped[float] = mapped_column(Float)
    reference: Mapped[dict[str, Any] | None] = mapped_column(FiniteJson)

    __table_args__ = (Index("ix_estimates_project_id_created_at_id", "project_id", "created_at", "id"),)


class JobRecord(ProjectScoped, Base):
    """Work run in the background (`Prefer: respond-async`): its state and progress, the answer the
    synchronous call would have given (`result`) or its problem (`error`). `owner` is the process running
    it, which beats `heartbeat_at` while the job is queued or running; a job whose beat stops is failed."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime())  # naive UTC
    kind: Mapped[str] = mapped_column(String(32), index=True)  # evaluation | model_evaluation | calibrator | …
    state: Mapped[str] = mapped_column(String(16), index=True)  # queued | running | succeeded | failed | cancelled
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int | None] = mapped_column(Integer)
    unit: Mapped[str] = mapped_column(String(16), default="rows")
    started_at: Mapped[datetime | None] = mapped_column(DateTime())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime())
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime())
    owner: Mapped[str] = mapped_column(String(64))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    location: Mapped[str | None] = mapped_column(String(256))  # the stored result's path
    result: Mapped[dict[str, Any] | None] = mapped_column(FiniteJson)
    error: Mapped[dict[str, Any] | None] = mapped_column(FiniteJson)

    __table_args__ = (Index("ix_jobs_project_id_created_at_id", "project_id", "created_at", "id"),)


class ApiKey(Base):
    """An API key: `caliper_<id>_<secret>`, of which only a salted HMAC-SHA-256 of the secret is kept
    (`app.storage.keys` says why not a slow hash). Not project-scoped: it is what finds the project."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[str] = mapped_column(String(8))  # read | write | admin
    name: Mapped[str] = mapped_column(String(256))
    salt: Mapped[bytes] = mapped_column(LargeBinary(16))
    digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_at: Mapped[datetime] = mapped_column(DateTime())  # naive UTC
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime())
