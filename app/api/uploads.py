"""A model upload streamed to the artifact store: multipart/form-data parsed incrementally by
python-multipart as the body arrives, the `file` part written (and hashed) straight to a temporary file
and never held in memory, the small `request` part or plain form fields collected for the JSON options."""

from __future__ import annotations

import json
from email.message import Message
from typing import Any

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

from app.api.json_body import RefusedJsonError, strict_pairs
from app.api.multipart import boundary_of
from app.api.problems import ProblemError
from app.core.errors import InputError
from app.storage.artifacts import ArtifactStore, ArtifactTooLargeError, ArtifactWriter

FORM_FIELDS = frozenset({"request", "name", "logits_output", "embedding_output", "feature_outputs", "tags"})


class _Parts:
    """python-multipart callbacks: headers decide where a part's bytes go."""

    def __init__(self, writer: ArtifactWriter, max_field_bytes: int) -> None:
        self.writer, self.max_field_bytes = writer, max_field_bytes
        self.fields: list[tuple[str, str]] = []
        self.has_file = False
        self._header_field, self._header_value = bytearray(), bytearray()
        self._headers: Message = Message()
        self._name: str | None = None
        self._value = bytearray()

    def on_part_begin(self) -> None:
        self._headers, self._name, self._value = Message(), None, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.decode("latin-1")] = self._header_value.decode("latin-1")
        self._header_field, self._header_value = bytearray(), bytearray()

    def on_headers_finished(self) -> None:
        name = self._headers.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise ProblemError(400, "multipart part without a name")
        if name == "file":
            if self.has_file:
                raise InputError("file", "given twice")
            self.has_file = True
        elif name not in FORM_FIELDS:
            raise InputError(name, f"unknown multipart part (expected 'file' and 'request' or {sorted(FORM_FIELDS)})")
        self._name = name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._name == "file":
            self.writer.write(memoryview(data)[start:end])
            return
        self._value += data[start:end]
        if len(self._value) > self.max_field_bytes:
            raise ProblemError(413, f"multipart field {self._name!r} is larger than {self.max_field_bytes} bytes")

    def on_part_end(self) -> None:
        if self._name is not None and self._name != "file":
            self.fields.append((self._name, self._value.decode("utf-8", errors="strict")))


def _json(text: str, field: str) -> Any:
    """A form field's JSON, parsed as strictly as JSON bodies (duplicate keys and NUL characters: 400)."""
    try:
        return json.loads(text, object_pairs_hook=strict_pairs)
    except RefusedJsonError as exc:
        raise ProblemError(400, f"{field}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise InputError(field, f"is not valid JSON: {exc.msg}") from exc


def _options(fields: list[tuple[str, str]]) -> dict[str, Any]:
    """The `request` JSON, or the plain form fields (feature_outputs repeatable, tags as a JSON object)."""
    names = [name for name, _ in fields]
    if "request" in names:
        if len(fields) > 1:
            raise InputError("request", "give the options either as the `request` JSON part or as form fields")
        given = _json(fields[0][1], "request")
        if not isinstance(given, dict):
            raise InputError("request", "must be a JSON object")
        return dict(given)
    options: dict[str, Any] = {}
    for name, value in fields:
        if "\x00" in value:
            raise ProblemError(400, f"NUL character in the form field {name[:64]!r}")
        if name == "feature_outputs":
            options.setdefault(name, []).append(value)
        elif name in options:
            raise InputError(name, "given twice")
        elif name == "tags":
            options[name] = _json(value, "tags")
        else:
            options[name] = value
    return options


async def read_model_upload(
    request: Request, store: ArtifactStore, max_field_bytes: int
) -> tuple[dict[str, Any], ArtifactWriter]:
    """The options and the writer holding the uploaded file (uncommitted: the caller commits it once the
    model is accepted, and closes it either way)."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "multipart/form-data":
        raise ProblemError(415, "upload a model as multipart/form-data with a `file` part (and a `request` part)")
    writer = store.writer()
    try:
        parts = _Parts(writer, max_field_bytes)
        callbacks = {
            "on_part_begin": parts.on_part_begin,
            "on_part_data": parts.on_part_data,
            "on_part_end": parts.on_part_end,
            "on_header_field": parts.on_header_field,
            "on_header_value": parts.on_header_value,
            "on_header_end": parts.on_header_end,
            "on_headers_finished": parts.on_headers_finished,
        }
        parser = MultipartParser(boundary_of(content_type), callbacks)  # type: ignore[arg-type]
        try:
            async for chunk in request.stream():
                parser.write(chunk)
            parser.finalize()
        except MultipartParseError as exc:
            raise ProblemError(400, f"malformed multipart body: {exc}") from exc
        except ArtifactTooLargeError as exc:
            raise ProblemError(413, str(exc)) from exc
        if not parts.has_file:
            raise InputError("file", "required: the .onnx bytes as a multipart part named `file`")
        return _options(parts.fields), writer
    except BaseException:
        writer.__exit__(None, None, None)
        raise
