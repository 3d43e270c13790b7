"""Who may call (api.md, "Conventions"), as pure ASGI middleware outside the body limit and the
idempotency keys: every /v1, /v2 and /ui request names its API key (`Authorization: Bearer <key>` or
`X-API-Key`), is answered 401 without a valid live key and 403 when its role is too low, and otherwise
runs in its key's project (`app.storage.tenancy`), which every query then filters by. With auth disabled
every request runs as the configured project with every role. The web report's pages may present the key
as the HTTP-only cookie that /ui/login sets, for reads only; a page asked for without a key redirects to
that form.

A route's role: `read` for GET and HEAD, `write` for other methods, unless the route says otherwise with
`openapi_extra=role("read")` (a POST that computes and stores nothing) or `role("admin")`. The roles are
read from the app's OpenAPI schema (`x-caliper-role` on every protected operation, so clients see them
too); a path the schema lacks needs its method's default, so a new route needs no code to be protected.

Browsers: a state-changing request with an `Origin` that is neither the server's own nor one of
CALIPER_CORS_ORIGINS is refused (403) before anything runs, so a cross-site form cannot write, even
with auth disabled on a developer's loopback.
"""

from __future__ import annotations

import re
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.problems import Refusal, database_refusal, document_error, refusal
from app.storage.errors import DATABASE_ERRORS
from app.storage.keys import ApiKeyRepository, Principal, Role
from app.storage.tenancy import project_scope

PROTECTED = ("/v1/", "/v2", "/ui")
PUBLIC = ("/ui/static/", "/ui/login", "/ui/logout")  # the sign-in form, what it loads, and signing out
KEY_COOKIE = "caliper_key"  # set by /ui/login: HTTP-only, same-site; it authorises reads (GET, HEAD) only
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
ROLE_KEY = "x-caliper-role"


def role(needed: Role) -> dict[str, Any]:
    """`openapi_extra` of a route whose role is not its method's default (documented in the schema)."""
    return {ROLE_KEY: needed}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or []:
        if key == name:
            text: str = value.decode("latin-1")
            return text
    return None


def presented_key(scope: Scope) -> str | None:
    """The header's key; for a read, else the web report's cookie (a cookie never authorises a write, so a
    page cannot be made to change anything)."""
    bearer = _header(scope, b"authorization")
    if bearer is not None:
        scheme, _, token = bearer.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    header = _header(scope, b"x-api-key")
    if header is not None or scope["method"] not in ("GET", "HEAD"):
        return header
    return _cookie(scope, KEY_COOKIE)


def _cookie(scope: Scope, name: str) -> str | None:
    cookies = SimpleCookie()
    try:
        cookies.load(_header(scope, b"cookie") or "")
    except CookieError:
        return None
    morsel = cookies.get(name)
    return morsel.value if morsel is not None and morsel.value else None


def role_table(schema: dict[str, Any]) -> list[tuple[re.Pattern[str], dict[str, Role]]]:
    """Each protected path of the OpenAPI schema as a regex, with the role of each of its methods."""
    table = []
    for path, operations in schema.get("paths", {}).items():
        if path.startswith(PROTECTED):
            regex, _, _ = compile_path(path)
            table.append((regex, {m.upper(): op[ROLE_KEY] for m, op in operations.items() if ROLE_KEY in op}))
    return table


def needed_role(table: list[tuple[re.Pattern[str], dict[str, Role]]], method: str, path: str) -> Role:
    for regex, roles in table:
        if regex.match(path) and method in roles:
            return roles[method]
    return "read" if method in SAFE_METHODS else "write"


class Authentication:
    def __init__(
        self, app: ASGIApp, keys: ApiKeyRepository, required: bool, project: str, origins: tuple[str, ...]
    ) -> None:
        self.app, self.keys, self.required, self.project, self.origins = app, keys, required, project, origins
        self._roles: list[tuple[re.Pattern[str], dict[str, Role]]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if not path.startswith(PROTECTED) or path.startswith(PUBLIC):
            await self.app(scope, receive, send)
            return
        refused = self._cross_site(scope)
        if refused is None:
            principal, refused = await self._principal(scope)
        if refused is not None and refused.status == 401 and path.startswith("/ui") and scope["method"] == "GET":
            await _to_login(scope, receive, send)  # a browser on a page: the sign-in form, then back here
            return
        if refused is not None:
            await refusal(path, *refused)(scope, receive, send)
            return
        assert principal is not None
        if self._roles is None:  # the schema is complete once the app serves
            self._roles = role_table(scope["app"].openapi())
        needed = needed_role(self._roles, scope["method"], scope["path"])
        if not principal.may(needed):
            detail = f"this key's role ({principal.role}) may not {scope['method']} here: it needs {needed}"
            await refusal(scope["path"], 403, detail, {})(scope, receive, send)
            return
        scope["caliper.principal"] = principal
        with project_scope(principal.project):
            await self.app(scope, receive, send)

    def _cross_site(self, scope: Scope) -> Refusal | None:
        origin = _header(scope, b"origin")
        if scope["method"] in SAFE_METHODS or origin is None or origin in self.origins:
            return None
        host = _header(scope, b"host")
        if host is not None and origin.partition("://")[2] == host:
            return None  # the server's own pages
        return Refusal(
            403, f"cross-origin {scope['method']} from {origin} refused (allow it with CALIPER_CORS_ORIGINS)", {}
        )

    async def _principal(self, scope: Scope) -> tuple[Principal | None, Refusal | None]:
        if not self.required:
            return Principal(self.project, "admin"), None
        challenge = {"WWW-Authenticate": 'Bearer realm="caliper"'}
        token = presented_key(scope)
        if token is None:
            return None, Refusal(401, "an API key is required: `Authorization: Bearer <key>` or `X-API-Key`", challenge)
        try:
            principal = self.keys.recent(token) or await run_in_threadpool(self.keys.authenticate, token)
        except DATABASE_ERRORS as exc:
            refused = database_refusal(exc)
            if refused is None:
                raise
            return None, refused
        if principal is None:
            return None, Refusal(401, "unknown or revoked API key", challenge)
        return principal, None


async def _to_login(scope: Scope, receive: Receive, send: Send) -> None:
    query = scope.get("query_string", b"").decode("latin-1")
    here = scope["path"] + ("?" + query if query else "")
    failed = "&failed=1" if _cookie(scope, KEY_COOKIE) else ""
    await RedirectResponse(f"/ui/login?next={quote(here, safe='')}{failed}", status_code=303)(scope, receive, send)


def document_auth(schema: dict[str, Any]) -> None:
    """The OpenAPI schema says how to authenticate, which role each protected operation needs
    (`x-caliper-role`) and that it may answer 401 and 403."""
    schema.setdefault("components", {})["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "An API key: `caliper keys create`."},
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "The same key."},
    }
    for path, operations in schema.get("paths", {}).items():
        if not path.startswith(PROTECTED):
            continue
        for method, operation in operations.items():
            operation.setdefault(ROLE_KEY, "read" if method.upper() in SAFE_METHODS else "write")
            operation["security"] = [{"bearer": []}, {"apiKey": []}]
            document_error(path, operation, 401, "No API key, or an unknown or revoked one (CALIPER_AUTH=required).")
            document_error(
                path, operation, 403, f"The key's role is below `{operation[ROLE_KEY]}`, or a cross-site write."
            )
            document_error(
                path, operation, 429, "Over the key's rate limit (CALIPER_RATE_LIMIT); retry after Retry-After."
            )
            if "requestBody" in operation:
                document_error(path, operation, 408, "The body arrived too slowly (CALIPER_BODY_TIMEOUT_S); closed.")
