"""The composition root: settings, database, onnxruntime sessions, repositories and the use-case services
built on them, once per process. The HTTP app and the CLI's in-process mode both start here."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.api.problems import problem_of
from app.calibration.service import CalibrationService
from app.config import Settings, get_settings
from app.conformal.service import ConformalService
from app.core.chunking import Chunking
from app.core.runtime import RuntimeConfig, SessionCache
from app.distributed.cluster import Cluster
from app.estimates.service import EstimateService
from app.evaluation.service import EvaluationService
from app.gating.service import GateService
from app.jobs.service import JobService
from app.keys.service import KeyService
from app.metrics import Metrics
from app.models.runner import ModelRunner
from app.models.service import ModelService
from app.models.workers import WorkerLimits, WorkerPool
from app.ood.detectors import DetectorService
from app.ood.scores import OodService
from app.pipelines.export import ExportService
from app.pipelines.heads import HeadCheck
from app.pipelines.inference import InferenceService
from app.pipelines.predict import PredictService
from app.pipelines.service import PipelineService
from app.report.pages import ReportPages, Services
from app.sdm.service import SdmService
from app.sources.files import DataFiles
from app.sources.locations import Places
from app.storage.artifacts import ArtifactStore
from app.storage.db import make_engine, make_session_factory
from app.storage.evaluations import EvaluationRepository
from app.storage.idempotency import IdempotencyRepository
from app.storage.jobs import JobRepository
from app.storage.keys import ApiKeyRepository
from app.storage.models import CalibratorRecord, ConformalRecord, DetectorRecord, EstimateRecord, GateRecord
from app.storage.repository import (
    ArtifactReferences,
    ModelRepository,
    PipelineRepository,
    Repository,
    SdmRepository,
)


@dataclass
class Resources:
    settings: Settings
    engine: Engine
    database: sessionmaker[Session]  # database sessions (only repositories open them)
    runtime: SessionCache  # onnxruntime sessions and the chunking of every run
    evaluations: EvaluationService
    calibrators: CalibrationService
    conformal: ConformalService
    estimates: EstimateService
    detectors: DetectorService
    ood: OodService
    sdm: SdmService
    gates: GateService
    artifacts: ArtifactStore
    workers: WorkerPool  # uploaded models run only here, in worker processes
    models: ModelService
    predictions: PredictService  # a model with its heads
    exports: ExportService  # a model with its heads merged into one ONNX graph
    pipelines: PipelineService  # named, versioned exports, served on /v2
    inference: InferenceService  # the V2 protocol over pipelines
    metrics: Metrics  # Prometheus, served on /metrics
    idempotency: IdempotencyRepository  # first answers of POSTs with an Idempotency-Key
    api_keys: ApiKeyRepository  # who may call, in which project (read by the authentication middleware)
    keys: KeyService  # a project's keys, managed over /v1/keys
    jobs: JobService  # creating POSTs run in the background (Prefer: respond-async)
    cluster: Cluster | None  # the Dask cluster evaluations from files run on (CALIPER_DASK_SCHEDULER)

    @classmethod
    def create(cls, settings: Settings) -> Resources:
        engine = make_engine(settings.database_url, settings.db_statement_timeout_s, settings.db_pool_timeout_s)
        database = make_session_factory(engine)
        chunking = Chunking(rows=settings.chunk_size, bytes=settings.chunk_bytes)
        metrics = Metrics()
        runtime = SessionCache(
            RuntimeConfig(settings.provider, settings.intra_op_threads, chunking=chunking), metrics.observe_graph_run
        )
        evaluation_records = EvaluationRepository(database)
        artifacts = ArtifactStore(settings.artifact_dir, settings.max_model_bytes)
        limits = WorkerLimits(
            settings.model_memory_bytes, settings.model_timeout_s, tuple(runtime.providers), settings.intra_op_threads
        )
        workers = WorkerPool(settings.model_workers, limits, on_replace=metrics.worker_restarts.inc)
        model_records = ModelRepository(database)
        model_chunks = Chunking(rows=settings.model_batch_rows, bytes=settings.model_batch_bytes)
        runner = ModelRunner(model_records, artifacts, workers, model_chunks, metrics.observe_model_run)
        references = ArtifactReferences(database)
        models = ModelService(model_records, artifacts, references, workers, runner.recent)
        files = DataFiles(Places.of(settings.data_roots, settings.data_urls), chunking, settings.max_source_bytes)
        cluster = Cluster(settings.dask_scheduler) if settings.dask_scheduler else None
        calibrators = CalibrationService(Repository(database, CalibratorRecord, "calibrator"), runtime, runner, files)
        detectors = DetectorService(Repository(database, DetectorRecord, "detector"), runtime, runner, files, cluster)
        sdm = SdmService(SdmRepository(database), runtime, runner, files)
        conformal = ConformalService(
            Repository(database, ConformalRecord, "conformal predictor"), runtime, runner, calibrators, files
        )
        heads = HeadCheck(calibrators, detectors, sdm, conformal)
        exports = ExportService(runner, heads, settings.max_export_bytes)
        pipelines = PipelineService(PipelineRepository(database), exports, artifacts, references, workers)
        api_keys = ApiKeyRepository(database)
        return cls(
            settings,
            engine,
            database,
            runtime,
            evaluations=EvaluationService(evaluation_records, heads, runner, runtime, files, cluster),
            calibrators=calibrators,
            conformal=conformal,
            estimates=EstimateService(
                Repository(database, EstimateRecord, "estimate"), runtime, runner, calibrators, files
            ),
            detectors=detectors,
            ood=OodService(detectors, runtime),
            sdm=sdm,
            gates=GateService(evaluation_records, Repository(database, GateRecord, "gate")),
            artifacts=artifacts,
            workers=workers,
            models=models,
            predictions=PredictService(runner, heads, runtime),
            exports=exports,
            pipelines=pipelines,
            inference=InferenceService(pipelines, runner, workers),
            metrics=metrics,
            idempotency=IdempotencyRepository(database, settings.idempotency_ttl_s),
            api_keys=api_keys,
            keys=KeyService(api_keys),
            jobs=JobService(
                JobRepository(database), problem_of, settings.job_workers, settings.job_timeout_s, settings.job_stale_s
            ),
            cluster=cluster,
        )

    @cached_property
    def report(self) -> ReportPages:
        """The web report's pages, read through the services above."""
        services = Services(self.evaluations, self.gates, self.calibrators, self.detectors, self.models, self.pipelines)
        return ReportPages(services)

    def close(self) -> None:
        self.jobs.close()
        if self.cluster is not None:
            self.cluster.close()
        self.workers.close()
        self.engine.dispose()


class DatabaseNotReadyError(RuntimeError):
    """The CLI's in-process mode cannot use the configured database: it does not answer, or is not migrated."""


def local_resources() -> Resources:
    """The resources of the CLI's in-process mode: CALIPER_PROJECT's, on the configured database, which must
    answer and be migrated (else DatabaseNotReadyError naming the database and the fix, not SQL)."""
    from app.storage.db import display_url
    from app.storage.migrate import is_at_head
    from app.storage.tenancy import set_project

    settings = get_settings()
    set_project(settings.project)
    resources = Resources.create(settings)
    where = display_url(settings.database_url)
    try:
        ready = is_at_head(settings, resources.engine)
    except Exception as exc:  # the driver's own errors: the first line names the fault
        resources.close()
        raise DatabaseNotReadyError(f"cannot reach the database {where}: {str(exc).splitlines()[0]}") from exc
    if not ready:
        resources.close()
        raise DatabaseNotReadyError(f"the database {where} is not migrated: run `caliper db upgrade` first")
    return resources
