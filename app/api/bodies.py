"""Request bodies with tensors: JSON (nested lists or tensor objects) or multipart/form-data with a
`request` JSON part and one .npy part per tensor field (api.md, "Tensors")."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import numpy as np
from fastapi import Request

from app.api.multipart import parse_multipart
from app.api.problems import ProblemError
from app.core.errors import InputError
from app.tensors import decode_json_tensor, decode_npy


async def read_tensor_body(
    request: Request, tensor_fields: Iterable[str], integer_fields: frozenset[str]
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Split a body into its JSON options and its decoded tensors (field name -> array)."""
    fields = set(tensor_fields)
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";")[0].strip().lower()
    if media_type == "application/json":
        body = _parse_json(await request.body())
        arrays = {
            name: decode_json_tensor(name, body.pop(name), name in integer_fields)
            for name in list(body)
            if name in fields and body[name] is not None
        }
        return body, arrays
    if media_type == "multipart/form-data":
        options: dict[str, Any] = {}
        arrays = {}
        for part in parse_multipart(await request.body(), content_type):
            if part.name == "request":
                options = _parse_json(part.data.tobytes())
            elif part.name in fields:
                if part.name in arrays:
                    raise InputError(part.name, "given twice")
                arrays[part.name] = decode_npy(part.name, part.data)
            else:
                raise InputError(part.name, f"unknown multipart part (expected 'request' or one of {sorted(fields)})")
        for name in fields & set(options):
            if name in arrays:
                raise InputError(name, "given both as a part and inside 'request'")
            if options[name] is not None:
                arrays[name] = decode_json_tensor(name, options.pop(name), name in integer_fields)
        return options, arrays
    raise ProblemError(
        415, f"unsupported content type {media_type or '(none)'!r}: send application/json or multipart/form-data"
    )


def _parse_json(raw: bytes | str) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProblemError(400, f"body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ProblemError(400, "body must be a JSON object")
    return body
