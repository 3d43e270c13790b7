"""The request examples of the OpenAPI schema (Swagger's "Example Value"): the README's bodies, declared on
each request model with `examples(...)`. tests/test_openapi.py posts every one to a live app (with
`EXAMPLE_ID` replaced by real ids) and expects a 2xx, so an example that stops working fails a test."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict

EXAMPLE_ID = "8d3f6b2a9c4e4f1a8b7c6d5e4f3a2b1c"  # the id in the OpenAPI examples (tests swap in real ids)
DIGIT_ROW = [  # one row of models/digits_val.npz (label 2): the demo model's input in the OpenAPI examples
    0.0, 0.25, 0.9375, 1.0, 0.8125, 0.0625, 0.0, 0.0, 0.0, 0.5625, 0.875, 0.625, 1.0, 0.375, 0.0, 0.0,
    0.0, 0.0625, 0.0625, 0.375, 1.0, 0.125, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.875, 0.0625, 0.0, 0.0,
    0.0, 0.0, 0.3125, 1.0, 0.3125, 0.0, 0.0, 0.0, 0.0, 0.0, 0.8125, 0.875, 0.0, 0.0, 0.0, 0.0,
    0.0, 0.3125, 1.0, 0.5625, 0.5, 0.5, 0.625, 0.0, 0.0, 0.25, 0.9375, 1.0, 1.0, 1.0, 0.5625, 0.0,
]  # fmt: skip


def examples(*bodies: dict[str, Any], extra: Literal["forbid", "ignore"] = "forbid") -> ConfigDict:
    """A request model's configuration: unknown fields refused (or ignored), and its OpenAPI examples."""
    return ConfigDict(extra=extra, json_schema_extra={"examples": list(bodies)})
