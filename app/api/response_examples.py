"""The response examples of the OpenAPI schema: real answers to the request examples (and to GETs of what
they made), captured by tests/test_openapi_examples.py into `response_examples.json` (ids and times
normalised). That test fails when an answer no longer has the shape of its example, and rewrites the file
with `CALIPER_UPDATE_EXAMPLES=1`."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

EXAMPLES_FILE = "response_examples.json"
ACCEPTED = "(respond-async)"  # the 202 answer of every creating POST: a job, as just submitted


@cache
def response_examples() -> dict[str, dict[str, Any]]:
    """operationId -> {"status": the 2xx code, "body": the example answer}."""
    loaded: dict[str, dict[str, Any]] = json.loads(resources.files(__package__).joinpath(EXAMPLES_FILE).read_text())
    return loaded


def add_response_examples(schema: dict[str, Any]) -> None:
    """Put each captured answer on its operation's JSON 2xx response (Swagger's response "Example Value")."""
    examples = response_examples()
    for operations in schema["paths"].values():
        for operation in operations.values():
            found = [examples.get(operation.get("operationId", ""))]
            if "202" in operation.get("responses", {}):
                found.append(examples.get(ACCEPTED))
            for example in filter(None, found):
                media = operation["responses"][str(example["status"])]["content"]["application/json"]
                media["example"] = example["body"]
