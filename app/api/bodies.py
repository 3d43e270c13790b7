"""Request bodies with tensors: JSON (nested lists or tensor objects) or multipart/form-data with a
`request` JSON part and one .npy part per tensor field (api.md, "Tensors")."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
from fastapi import Request
from pydantic import BaseModel

from app.api.json_body import parse_json
from app.api.multipart import form_parts
from app.api.observability import count_rows
from app.api.problems import ProblemError
from app.core.errors import InputError
from app.tensors import decode_json_tensor, decode_npy

M = TypeVar("M", bound=BaseModel)
NPZ = "application/x-npz"  # the media type of .npz responses (Accept: application/x-npz)


def tensor_request_body(schema: str, tensor_fields: Iterable[str]) -> dict[str, Any]:
    """OpenAPI requestBody for a route that parses its body by hand: JSON per `schema`, or multipart with
    a `request` part (that JSON without its tensors) and one .npy part per tensor field; a field of named
    tensors (`features.*`) takes any part named `features.<name>`."""
    fields = list(tensor_fields)
    named = [f[:-2] for f in fields if f.endswith(".*")]
    npy = {"type": "string", "format": "binary"}
    multipart: dict[str, Any] = {
        "type": "object",
        "properties": {
            "request": {"$ref": f"#/components/schemas/{schema}"},
            **{name: {**npy, "description": f"`{name}` as .npy"} for name in fields if not name.endswith(".*")},
        },
        "required": ["request"],
    }
    if named:
        multipart["additionalProperties"] = {
            **npy,
            "description": "Named tensors as .npy, one part each: " + ", ".join(f"`{n}.<name>`" for n in named),
        }
    encoding = {"request": {"contentType": "application/json"}}
    encoding |= {name: {"contentType": "application/octet-stream"} for name in fields if not name.endswith(".*")}
    return {
        "requestBody": {
            # Not marked required (a missing body is a 415 anyway): openapi-python-client emits code that
            # does not import for a required body with several media types (its issue #1451).
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}},
                "multipart/form-data": {"schema": multipart, "encoding": encoding},
            },
        }
    }


@dataclass(frozen=True)
class TensorBody(Generic[M]):
    """A route's body of options (`model`) and tensors (`fields`, dotted; `name.*` for named tensors;
    `integer_fields` decoded as integers), as JSON or multipart: what every tensor-writing route reads.
    `parts_only` fields are tensors as multipart parts only: in JSON they are options (slices, whose
    JSON values may be strings)."""

    model: type[M]
    fields: tuple[str, ...]
    integer_fields: frozenset[str] = frozenset()
    parts_only: tuple[str, ...] = ()

    def openapi(self) -> dict[str, Any]:
        """The route's requestBody (the options' schema is named after `model`)."""
        return tensor_request_body(self.model.__name__, self.fields + self.parts_only)

    async def read(self, request: Request) -> tuple[M, dict[str, np.ndarray]]:
        """The options validated as `model`, and the decoded tensors by field name; 415 for another
        media type, 4xx naming the field for a bad part or tensor."""
        content_type = request.headers.get("content-type", "")
        media_type = content_type.split(";")[0].strip().lower()
        if media_type not in ("application/json", "multipart/form-data"):
            wanted = "send application/json or multipart/form-data"
            raise ProblemError(415, f"unsupported content type {media_type or '(none)'!r}: {wanted}")
        raw = await read_body(request)
        document, parts = (raw, []) if media_type == "application/json" else form_parts(raw, content_type)
        max_json = request.app.state.resources.settings.max_json_bytes
        options, arrays = await parse_json(document, max_json, self._split)  # consumes a bytearray
        accepted = self.fields + self.parts_only
        named = tuple(f[:-1] for f in accepted if f.endswith(".*"))  # "features.*" takes "features.<name>"
        inline = set(arrays)  # tensors inside the JSON options
        for part in parts:
            if not (part.name in accepted or (part.name.startswith(named) and part.name not in named)):
                raise InputError(part.name, f"unknown multipart part (expected 'request' or one of {sorted(accepted)})")
            if part.name in arrays:
                raise InputError(
                    part.name, "given both as a part and inside 'request'" if part.name in inline else "given twice"
                )
            arrays[part.name] = decode_npy(part.name, part.data)
        count_rows(max((len(a) for a in arrays.values() if a.ndim), default=0))
        return self.model.model_validate(options), arrays

    def _split(self, body: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """A decoded JSON body: its options, and its tensor fields taken out and decoded."""
        if not isinstance(body, dict):
            raise ProblemError(400, "body must be a JSON object")
        return body, _pop_tensors(body, set(self.fields), self.integer_fields)


async def read_body(request: Request) -> bytes | bytearray:
    """The whole body in one buffer sized from Content-Length (BodySizeLimit has checked it against the
    limit), held only by the caller: Starlette's `body()` keeps the chunks and their join on the request
    (twice the body at its peak, and alive until the response), which a JSON route can free once parsed."""
    declared = request.headers.get("content-length", "")
    if not declared.isdigit():
        return b"".join([chunk async for chunk in request.stream()])  # chunked: BodySizeLimit bounds it
    size = int(declared)
    buffer = bytearray(size)
    view = memoryview(buffer)
    filled = 0
    async for chunk in request.stream():
        end = filled + len(chunk)
        if end > size:
            raise ProblemError(400, f"body is longer than its Content-Length of {size} bytes")
        view[filled:end] = chunk
        filled = end
    if filled != size:
        raise ProblemError(400, f"body ended after {filled} of its Content-Length of {size} bytes")
    return buffer


def _pop_tensors(body: dict[str, Any], fields: set[str], integer_fields: frozenset[str]) -> dict[str, np.ndarray]:
    """Take the tensor fields out of a JSON body: dotted paths for nested ones (`validation.logits`), and
    `name.*` for a dict of named tensors (`features: {"layer1": …}` -> `features.layer1`)."""
    arrays = {}
    for path in fields:
        *parents, leaf = path.split(".")
        node: Any = body
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if leaf == "*":
            named = node
            if isinstance(named, dict) and named and "data_b64" not in named:
                base = path[:-2]
                for name in list(named):
                    arrays[f"{base}.{name}"] = decode_json_tensor(f"{base}.{name}", named.pop(name), False)
            continue
        if isinstance(node, dict) and node.get(leaf) is not None:
            value = node[leaf]
            if f"{path}.*" in fields and isinstance(value, dict) and "data_b64" not in value:
                continue  # a dict of named tensors, taken by the wildcard
            arrays[path] = decode_json_tensor(path, node.pop(leaf), path in integer_fields)
    return arrays
