"""A strict, zero-copy multipart/form-data reader for bodies already held in memory.

Starlette's form parser streams parts through python-multipart into spooled temporary files (on disk
above 1 MB) and reads them back; for tensor uploads of tens of MB that costs more than the
evaluation. Bodies here are bounded by CALIPER_MAX_BODY_BYTES and read whole, so parts are located
with bytes.find and returned as memoryview slices of the one body buffer (RFC 7578 framing).
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message

from app.api.problems import ProblemError
from app.core.errors import InputError

MAX_PARTS = 64


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None
    data: memoryview


def boundary_of(content_type: str) -> bytes:
    message = Message()
    message["content-type"] = content_type
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str) or not boundary or len(boundary) > 200:
        raise ProblemError(400, "multipart/form-data body without a valid boundary parameter")
    return boundary.encode("latin-1")


def _headers(raw: bytes) -> tuple[str, str | None]:
    message = Message()
    for line in raw.decode("latin-1").split("\r\n"):
        key, sep, value = line.partition(":")
        if not sep:
            raise ProblemError(400, f"malformed multipart part header {line[:80]!r}")
        message[key.strip()] = value.strip()
    if message.get_content_disposition() != "form-data":
        raise ProblemError(400, "multipart part without Content-Disposition: form-data")
    name = message.get_param("name", header="content-disposition")
    if not isinstance(name, str) or not name:
        raise ProblemError(400, "multipart part without a name")
    filename = message.get_param("filename", header="content-disposition")
    return name, filename if isinstance(filename, str) else None


def parse_multipart(body: bytes | bytearray, content_type: str) -> list[Part]:
    delimiter = b"--" + boundary_of(content_type)
    view = memoryview(body)
    start = body.find(delimiter)
    if start < 0:
        raise ProblemError(400, "multipart body does not contain its boundary")
    parts: list[Part] = []
    position = start + len(delimiter)
    while True:
        if body.startswith(b"--", position):  # closing delimiter
            return parts
        if not body.startswith(b"\r\n", position):
            raise ProblemError(400, "malformed multipart delimiter line")
        header_end = body.find(b"\r\n\r\n", position + 2)
        if header_end < 0:
            raise ProblemError(400, "multipart part headers are not terminated")
        name, filename = _headers(bytes(body[position + 2 : header_end]))
        content_start = header_end + 4
        next_delimiter = body.find(b"\r\n" + delimiter, content_start)
        if next_delimiter < 0:
            raise ProblemError(400, "multipart body is truncated (no closing boundary)")
        parts.append(Part(name, filename, view[content_start:next_delimiter]))
        if len(parts) > MAX_PARTS:
            raise ProblemError(400, f"multipart body has more than {MAX_PARTS} parts")
        position = next_delimiter + 2 + len(delimiter)


def form_parts(body: bytes | bytearray, content_type: str) -> tuple[bytes, list[Part]]:
    """A tensor body's `request` JSON part (`{}` when absent) and its other parts, in order."""
    document: bytes | None = None
    parts: list[Part] = []
    for part in parse_multipart(body, content_type):
        if part.name != "request":
            parts.append(part)
        elif document is not None:
            raise InputError("request", "given twice")
        else:
            document = part.data.tobytes()
    return document if document is not None else b"{}", parts
