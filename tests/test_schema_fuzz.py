"""schemathesis over every operation of the OpenAPI document: no input may produce a 5xx, and every
response must validate against the document (non-finite values included). Bounded: CALIPER_FUZZ_EXAMPLES
examples per operation (5 in `make test`; `make fuzz`, which CI runs, uses 50, on SQLite and, where
CALIPER_TEST_POSTGRES_URL is set, on PostgreSQL, whose refusals differ: NUL, non-finite JSON, integer
ranges)."""

from __future__ import annotations

import os
import tempfile

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from app.api.main import create_app
from app.config import Settings
from app.storage.migrate import upgrade

_settings = Settings(  # CALIPER_FUZZ_DATABASE_URL: another backend (`make fuzz` runs PostgreSQL too when it has one)
    database_url=os.environ.get("CALIPER_FUZZ_DATABASE_URL") or f"sqlite:///{tempfile.mkdtemp()}/fuzz.db",
    max_body_bytes=8 * 1024 * 1024,
    allowed_hosts="testserver",  # schemathesis's ASGI client names this Host
)
upgrade(_settings)
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(_settings))
EXAMPLES = int(os.environ.get("CALIPER_FUZZ_EXAMPLES", "5"))


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_error_and_every_response_matches_the_schema(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])
