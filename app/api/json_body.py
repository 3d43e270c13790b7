"""Strict JSON request bodies, for hand-parsed routes and FastAPI-parsed ones alike (`StrictJsonRoute`).

- size: bodies over CALIPER_MAX_JSON_BYTES answer 413 pointing to base64 tensor objects and multipart
  (parsed nested lists of numbers take ~3x their text in Python objects; bench/memory.py);
- duplicate keys (RFC 8259 leaves them open; the last would win silently) and NUL characters in keys or
  string values (PostgreSQL text cannot hold them) answer 400;
- nesting deeper than the parser's recursion limit answers 400 instead of a RecursionError;
- bodies above OFF_LOOP_BYTES are parsed in a worker thread, so one large upload does not stall the
  event loop (and /healthz) while it parses.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from app.api.problems import ProblemError

OFF_LOOP_BYTES = 256 * 1024


T = TypeVar("T")


def _same(value: Any) -> Any:
    return value


class RefusedJsonError(ValueError):
    """Valid JSON that this service refuses (a duplicate key, a NUL character): answered 400."""


def strict_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    body = dict(pairs)
    if len(body) != len(pairs):
        seen: set[str] = set()
        duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise RefusedJsonError(f"duplicate key {duplicate[:64]!r} in a JSON object")
    for key, value in pairs:
        if "\x00" in key or (isinstance(value, str) and "\x00" in value):
            raise RefusedJsonError(f"NUL character in JSON key or string {key[:64]!r}")
        if (
            isinstance(value, list)
            and value
            and isinstance(value[0], str)
            and any(isinstance(v, str) and "\x00" in v for v in value)
        ):
            raise RefusedJsonError(f"NUL character in a string of {key[:64]!r}")
    return body


def _decode(raw: bytes | bytearray) -> Any:
    """Parse; a bytearray is consumed (emptied once decoded to text): json.loads of bytes would hold the
    bytes, their text and the parsed objects at once, one copy of the body more at the peak
    (bench/memory.py)."""
    try:
        text = raw.decode("utf-8")
        if isinstance(raw, bytearray):
            raw.clear()
        return json.loads(text, object_pairs_hook=strict_pairs)
    except RefusedJsonError as exc:
        raise ProblemError(400, str(exc)) from exc
    except RecursionError as exc:
        raise ProblemError(400, "body is nested too deeply to parse") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProblemError(400, f"body is not valid JSON: {str(exc)[:200]}") from exc


def json_too_large(size: int | None, max_bytes: int) -> str:
    """The 413's detail for a JSON body over CALIPER_MAX_JSON_BYTES (`size` None: not known yet)."""
    of = f" of {size} bytes" if size is not None else ""
    return (
        f"JSON body{of} exceeds CALIPER_MAX_JSON_BYTES = {max_bytes}; send large tensors as base64 tensor objects "
        '({"dtype", "shape", "data_b64"}) or as .npy parts of a multipart/form-data body'
    )


async def parse_json(raw: bytes | bytearray, max_bytes: int, then: Callable[[Any], T] = _same) -> T:
    """`then(decoded body)` (a bytearray is consumed), both in a worker thread for bodies above
    OFF_LOOP_BYTES, so that turning nested lists into arrays does not stall the event loop either;
    ProblemError (400/413) for what the module docstring lists."""
    if len(raw) > max_bytes:
        raise ProblemError(413, json_too_large(len(raw), max_bytes))

    def parse() -> T:
        return then(_decode(raw))

    if len(raw) > OFF_LOOP_BYTES:
        return await run_in_threadpool(parse)
    return parse()


class StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            limit = self.app.state.resources.settings.max_json_bytes
            try:
                self._json = await parse_json(await self.body(), limit)
            except ProblemError as exc:  # FastAPI turns anything but an HTTPException into a bare 400
                raise HTTPException(exc.status, exc.detail) from exc
        return self._json


class StrictJsonRoute(APIRoute):
    """An APIRoute whose request body JSON goes through `parse_json`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJsonRequest(request.scope, request.receive))

        return strict
