"""Settings from the environment (prefix CALIPER_, plus plain DATABASE_URL), read once per process."""

from __future__ import annotations

import ipaddress
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from limits import parse_many
from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PACKAGED_MIGRATIONS = Path(__file__).resolve().parent / "migrations"  # where a wheel puts them


DEFAULT_PROJECT = "default"  # the project of every request while auth is disabled
PROJECT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_migrations_dir() -> Path:
    """The checkout's migrations/ (editable installs, the repository), else the installed package's."""
    checkout = PROJECT_ROOT / "migrations"
    return checkout if (checkout / "env.py").exists() else PACKAGED_MIGRATIONS


class Settings(BaseSettings):
    """Every setting of the service; the README's configuration table lists the same names."""

    model_config = SettingsConfigDict(env_prefix="CALIPER_", extra="ignore")

    database_url: str = Field(
        "sqlite:///./var/caliper.db",
        validation_alias=AliasChoices("DATABASE_URL", "CALIPER_DATABASE_URL"),
        description="SQLAlchemy URL; SQLite file by default, postgresql+psycopg://… for Postgres.",
    )
    provider: Literal["cpu", "cuda"] = Field("cpu", description="onnxruntime execution provider.")
    intra_op_threads: int = Field(0, ge=0, description="onnxruntime intra-op threads (0 = one per core).")
    max_body_bytes: int = Field(512 * 1024 * 1024, gt=0, description="Largest accepted request body (413 above).")
    max_json_bytes: int = Field(
        32 * 1024 * 1024,
        gt=0,
        description="Largest accepted JSON body or multipart `request` part (413 above): parsing nested lists costs "
        "~10–20x their text in memory, so large tensors go as base64 tensor objects or multipart .npy parts.",
    )
    chunk_size: int = Field(65_536, gt=0, description="Most rows per onnxruntime call; bounds working memory.")
    chunk_bytes: int = Field(
        8 * 1024 * 1024, gt=0, description="Most input bytes per onnxruntime call (keeps intermediates in cache)."
    )
    artifact_dir: Path = Field(
        Path("./var/artifacts"), description="Content-addressed store of uploaded model files (a volume in compose)."
    )
    max_model_bytes: int = Field(256 * 1024 * 1024, gt=0, description="Largest accepted ONNX model upload (413 above).")
    model_workers: int = Field(2, ge=1, le=64, description="Worker processes that run uploaded models.")
    model_memory_bytes: int = Field(
        4 * 1024**3, gt=0, description="Address-space limit of each model worker (RLIMIT_AS); beyond it a run is 422."
    )
    model_timeout_s: float = Field(60.0, gt=0, description="Time limit of one model call; beyond it the run is 422.")
    model_batch_rows: int = Field(65_536, gt=0, description="Most rows per model call: large inputs run in chunks.")
    model_batch_bytes: int = Field(
        32 * 1024 * 1024, gt=0, description="Most bytes of inputs and outputs per model call (wide rows get fewer)."
    )
    max_export_bytes: int = Field(
        1024**3,
        gt=0,
        lt=2**31,
        description="Largest composed export (model + heads, SDM support embedded); beyond it 422. ONNX's protobuf "
        "limit is 2 GiB.",
    )
    idempotency_ttl_s: float = Field(
        86_400.0, gt=0, description="How long the first answer to a POST with an Idempotency-Key is kept for repeats."
    )
    allowed_hosts: str = Field(
        "",
        description="Comma-separated host names the `Host` header may name (no port; `*`: any). Empty: any when "
        "API keys are required, else only the loopback names (localhost, 127.0.0.1, ::1) and CALIPER_HOST, so "
        "a page that rebinds its own DNS name to 127.0.0.1 cannot reach a keyless server.",
    )
    cors_origins: str = Field(
        "",
        description="Comma-separated origins browsers may call the API from (e.g. https://app.example.com); "
        "empty: none (no CORS headers, the default).",
    )
    auth: Literal["required", "disabled"] | None = Field(
        None,
        description="API keys (api.md): `required` or `disabled`; unset, disabled on a loopback address and "
        "required on any other (the Docker image sets `required`).",
    )
    project: str = Field(
        DEFAULT_PROJECT,
        pattern=PROJECT_NAME_PATTERN,
        description="The project of every request while auth is disabled, and of the CLI's in-process mode.",
    )
    request_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Time limit of a POST's work (fits, cv, bootstrap, evaluations, model runs), from its admission "
        "(so including reading its body, unless an Idempotency-Key made it read first); beyond it 422 (`type` "
        "ending in `time-limit`), nothing stored.",
    )
    data_roots: str = Field(
        "",
        description="Folders whose files a `source` may read, comma-separated (resolved, symbolic links "
        "included: nothing outside them is read). Empty: no local files.",
    )
    data_urls: str = Field(
        "",
        description="URL prefixes a `source` may read through fsspec with the server's credentials, "
        "comma-separated (e.g. s3://bucket/eval/). Empty: no URLs.",
    )
    max_source_bytes: int = Field(
        2 << 30,
        gt=0,
        description="Most bytes a fit that holds its rows (calibrators, SDM, knn and vim detectors) reads whole from "
        "`source` files (422 above). Evaluations and Mahalanobis detectors stream their files, whatever their size.",
    )
    dask_scheduler: str = Field(
        "",
        description="A Dask scheduler (tcp://host:8786), or local:<workers> for a LocalCluster of that many worker "
        "processes started by the server: evaluations and Mahalanobis fits from `source` files run on its workers. "
        "Empty: in process.",
    )
    job_workers: int = Field(
        1, ge=1, le=64, description="Jobs (`Prefer: respond-async`) run at once by this process; more are queued."
    )
    job_timeout_s: float = Field(
        86_400.0, gt=0, description="Time limit of a job's work (in place of CALIPER_REQUEST_TIMEOUT_S); beyond it "
        "the job fails with a `time-limit` problem, nothing stored.",
    )  # fmt: skip
    job_stale_s: float = Field(
        60.0,
        gt=0,
        description="A queued or running job whose process has not beaten for this long (the process died) is "
        "marked failed; processes beat every fifth of it.",
    )
    max_running_work: int = Field(
        default_factory=lambda: 2 * (os.cpu_count() or 1),
        ge=1,
        description="POSTs that run at once (default: twice the CPU count); more wait for a slot.",
    )
    max_waiting_work: int = Field(
        64, ge=0, description="POSTs that may wait for a slot; beyond them 503 with Retry-After (`overloaded`)."
    )
    max_reading_per_caller: int = Field(
        16,
        ge=1,
        description="POST bodies of one caller (API key, else address) read at once, before they wait for a slot; "
        "beyond them 503 with Retry-After.",
    )
    rate_limit: str = Field(
        "",
        description="Requests per API key (per client address with auth disabled), in `limits` notation "
        "(`N/second;M/minute`); beyond it 429 with Retry-After. Empty (the default, as Triton, MLServer and "
        "KServe have none): no limit, so one client may use all the server serves; admission control still "
        "answers 503 beyond the work limits. Counted per process.",
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="A connection must send its request's headers within this; else it is closed."
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="A request body must arrive within this plus 1 s per CALIPER_BODY_MIN_BYTES_PER_S; "
        "else 408 and the connection is closed.",
    )  # fmt: skip
    body_min_bytes_per_s: int = Field(65_536, gt=0, description="The slowest body upload rate accepted.")
    max_connections: int = Field(
        1000, ge=1, description="Open connections per server process; beyond it new requests answer 503."
    )
    max_connections_per_client: int = Field(
        100,
        ge=1,
        description="Open connections per client address and process; a connection beyond them answers 503 with "
        "Retry-After and closes. Behind a reverse proxy every client has the proxy's address: raise it there.",
    )
    keep_alive_s: float = Field(5.0, gt=0, description="An idle keep-alive connection is closed after this.")
    workers: int = Field(1, ge=1, le=256, description="Server processes (`caliper serve --workers`); the image: CPUs.")
    db_statement_timeout_s: float = Field(
        30.0, gt=0, description="PostgreSQL statement_timeout; a statement over it fails and the request answers 503."
    )
    db_pool_timeout_s: float = Field(
        10.0, gt=0, description="Wait for a free database connection; beyond it 503 (pool of 5 + 10 per process)."
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, gt=0, lt=65536)
    grpc_port: int | None = Field(
        None,
        ge=0,
        lt=65536,
        description="Port of the V2 gRPC service (Open Inference Protocol, on CALIPER_HOST); unset: off; 0: any free "
        "port (logged).",
    )
    access_log: bool = Field(
        True, description="One JSON log line per request: id, project, route, status, duration, rows."
    )
    migrations_dir: Path = Field(
        default_factory=default_migrations_dir,
        description="Alembic scripts (default: the checkout's migrations/, else the installed package's).",
    )

    def host_names(self) -> frozenset[str] | None:
        """The names a request's `Host` may carry, or None for any (see `allowed_hosts`)."""
        given = {h.strip().lower().strip("[]") for h in self.allowed_hosts.split(",") if h.strip()}
        if "*" in given or (not given and self.auth_required()):
            return None
        return frozenset(given or {"localhost", "127.0.0.1", "::1", self.host.lower().strip("[]")})

    def auth_required(self) -> bool:
        """`CALIPER_AUTH` when set; else keys are required unless the server binds a loopback address."""
        if self.auth is not None:
            return self.auth == "required"
        return not is_loopback(self.host)

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit_notation(cls, text: str) -> str:
        if text.strip():
            parse_many(text)  # raises ValueError on a malformed limit
        return text

    @field_validator("database_url")
    @classmethod
    def _psycopg3(cls, url: str) -> str:
        """Plain postgresql:// URLs use psycopg 3 (the driver we install), not psycopg2."""
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url[len(prefix) :]
        return url


@lru_cache
def get_settings() -> Settings:
    return Settings()
