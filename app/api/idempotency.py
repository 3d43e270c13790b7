"""`Idempotency-Key` on any POST (api.md, "Conventions"), as pure ASGI middleware inside the body limit:
a repeat with the same key and the same body answers the first answer again (same id, nothing stored
twice); the same key with another body or another route answers 422; a repeat while the first is still
running answers 409 (retry it). The key is claimed in the database before the request runs, so two
concurrent duplicates meet at its primary key instead of both running. A server error (5xx), a 408 (the
body arrived too slowly) and a 429 release the claim, so a retry runs again. An answer marked
`Cache-Control: no-store` (a new API key) is never stored: a repeat gets a 409 saying so. Answers over
MAX_STORED_BYTES are not kept (a repeat then runs again, said in the OpenAPI description); claims expire
after CALIPER_IDEMPOTENCY_TTL_S."""

from __future__ import annotations

import hashlib
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.problems import database_refusal, problem_response, refusal
from app.storage.errors import DATABASE_ERRORS
from app.storage.idempotency import IdempotencyRepository
from app.storage.models import IdempotencyRecord

HEADER = b"idempotency-key"
PLACEHOLDER = b"\x00boundary\x00"
MAX_KEY = 255
MAX_STORED_BYTES = 32 << 20
REPLAYED = (b"idempotent-replayed", b"true")
NOT_KEPT = frozenset({408, 429})  # besides 5xx: the request did not arrive whole, or was not let in; a retry runs


class BodyDigest:
    """sha256 of a body as it streams by, with a multipart boundary replaced by a placeholder: clients
    draw a new random boundary for every send, so a retried upload of the same parts must hash the same."""

    def __init__(self, scope: Scope) -> None:
        self.boundary = _boundary(scope)
        self.digest = hashlib.sha256()
        self.tail = b""

    def update(self, chunk: bytes) -> None:
        if not self.boundary:
            self.digest.update(chunk)
            return
        data = (self.tail + chunk).replace(self.boundary, PLACEHOLDER)
        keep = len(self.boundary) - 1  # a boundary cut by the chunk's end is completed by the next chunk
        self.digest.update(data[: len(data) - keep] if len(data) > keep else b"")
        self.tail = data[len(data) - keep :] if len(data) > keep else data

    def hexdigest(self) -> str:
        final = self.digest.copy()
        final.update(self.tail)
        return final.hexdigest()


def _boundary(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers") or []:
        if name == b"content-type" and value.lower().startswith(b"multipart/"):
            for parameter in value.split(b";")[1:]:
                key, _, given = parameter.strip().partition(b"=")
                if key.lower() == b"boundary" and given:
                    boundary: bytes = b"--" + given.strip(b'"')
                    return boundary
    return None


class Idempotency:
    def __init__(self, app: ASGIApp, repository: IdempotencyRepository) -> None:
        self.app, self.repository = app, repository

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = _key(scope) if scope["type"] == "http" and scope["method"] == "POST" else None
        if key is None:
            await self.app(scope, receive, send)
            return
        if not key or len(key) > MAX_KEY or not key.isprintable():
            await refusal(scope["path"], 400, f"Idempotency-Key must be 1–{MAX_KEY} printable characters", {})(
                scope, receive, send
            )
            return
        request = f"POST {scope['path']}"
        try:
            claimed = await run_in_threadpool(self.repository.claim, key, request)
        except DATABASE_ERRORS as exc:
            refused = database_refusal(exc)
            if refused is None:
                raise
            await refusal(scope["path"], *refused)(scope, receive, send)
            return
        if claimed is not None:
            await self._repeat(claimed, request, scope, receive, send)
            return
        await self._first(key, scope, receive, send)

    async def _first(self, key: str, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request, hashing its body as it streams in and keeping its answer as it goes out. The
        record is settled before the answer's last piece is sent, so a client that repeats the request as
        soon as it has the answer finds it done (not still running: a 409)."""
        digest = BodyDigest(scope)
        status = 500
        headers: list[list[str]] = []
        body = bytearray()
        too_large = settled = False

        async def hashing_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                digest.update(message.get("body", b""))
            return message

        async def settle() -> None:
            nonlocal settled
            settled = True
            if status >= 500 or status in NOT_KEPT or too_large:
                await run_in_threadpool(self.repository.release, key)
            elif any(k.lower() == "cache-control" and "no-store" in v.lower() for k, v in headers):
                await run_in_threadpool(self.repository.complete, key, digest.hexdigest(), *_secret_withheld())
            else:
                await run_in_threadpool(self.repository.complete, key, digest.hexdigest(), status, headers, bytes(body))

        async def keeping_send(message: Message) -> None:
            nonlocal status, headers, too_large
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in message.get("headers", [])]
            elif message["type"] == "http.response.body":
                if not too_large:
                    body.extend(message.get("body", b""))
                    too_large = len(body) > MAX_STORED_BYTES
                if not message.get("more_body", False) and not settled:
                    await settle()
            await send(message)

        try:
            await self.app(scope, hashing_receive, keeping_send)
        except BaseException:
            if not settled:
                await run_in_threadpool(self.repository.release, key)
            raise
        if not settled:
            await settle()

    async def _repeat(
        self, claimed: IdempotencyRecord, request: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """The stored answer when the body is the first one's; else 422, or 409 while it still runs."""
        digest = BodyDigest(scope)
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            digest.update(message.get("body", b""))
            if not message.get("more_body", False):
                break
        if claimed.state != "done":
            detail = "a request with this Idempotency-Key is still running: retry it later"
            await refusal(scope["path"], 409, detail, {"Retry-After": "1"})(scope, receive, send)
            return
        if claimed.request != request or claimed.body_sha256 != digest.hexdigest():
            detail = f"this Idempotency-Key was used for another request ({claimed.request}, another body)"
            await refusal(scope["path"], 422, detail, {})(scope, receive, send)
            return
        stored: list[Any] = claimed.headers or []
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in stored if k.lower() != "x-request-id"]
        await send({"type": "http.response.start", "status": claimed.status, "headers": [*raw, REPLAYED]})
        await send({"type": "http.response.body", "body": claimed.body or b""})


def _secret_withheld() -> tuple[int, list[list[str]], bytes]:
    """What a repeat gets in place of an answer marked `Cache-Control: no-store` (a new API key): the
    secret is never written to the replay table, so the repeat learns that it was made, and where to look."""
    detail = (
        "the first request with this Idempotency-Key succeeded, and its answer held a secret, which is never "
        "stored for replay: find what it made by listing (GET /v1/keys), or make another"
    )
    answer = problem_response(409, detail)
    return 409, [[k.decode("latin-1"), v.decode("latin-1")] for k, v in answer.raw_headers], bytes(answer.body)


def _key(scope: Scope) -> str | None:
    for name, value in scope.get("headers") or []:
        if name == HEADER:
            text: str = value.decode("latin-1").strip()
            return text
    return None
