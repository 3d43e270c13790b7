"""/v1/keys: an admin key manages the keys of its own project (the CLI's `caliper keys` manages all)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from app.api.auth import role
from app.api.deps import ResourcesDep
from app.api.json_body import StrictJsonRoute
from app.api.problems import DELETION, JSON_WRITE, LISTING
from app.examples import examples
from app.records import RecordOut, Timestamp
from app.storage.keys import Principal
from app.storage.repository import NotFoundError

router = APIRouter(prefix="/v1/keys", tags=["keys"], route_class=StrictJsonRoute)
ADMIN = role("admin")


class KeyRequest(BaseModel):
    model_config = examples({"role": "read", "name": "dashboards"})

    role: Literal["read", "write", "admin"] = "write"
    name: str = Field("", max_length=256, description="A note to recognise the key by.")


class KeyOut(RecordOut):
    project: str
    role: str
    name: str
    revoked_at: Timestamp | None


class NewKey(KeyOut):
    key: str = Field(description="The key itself: shown in this answer only (the service keeps its digest).")


class KeyList(BaseModel):
    items: list[KeyOut]
    next_cursor: None = Field(None, description="Always null: a project's keys come in one page.")


def principal_of(request: Request) -> Principal:
    principal: Principal = request.scope["caliper.principal"]
    return principal


@router.post(
    "", operation_id="createKey", status_code=201, response_model=NewKey, summary="Make a key for this project",
    responses=JSON_WRITE, openapi_extra=ADMIN,
)  # fmt: skip
def create_key(body: KeyRequest, request: Request, response: Response, resources: ResourcesDep) -> NewKey:
    record, token = resources.keys.create(principal_of(request).project, body.role, body.name)
    response.headers["Cache-Control"] = "no-store"  # a secret: no cache keeps it, nor the Idempotency-Key replays
    return NewKey(**KeyOut.model_validate(record).model_dump(), key=token)


@router.get(
    "", operation_id="listKeys", response_model=KeyList, summary="This project's keys, newest first (no secrets)",
    responses=LISTING, openapi_extra=ADMIN,
)  # fmt: skip
def list_keys(request: Request, resources: ResourcesDep) -> KeyList:
    records = resources.keys.list(principal_of(request).project)
    return KeyList(items=[KeyOut.model_validate(r) for r in records])


@router.delete(
    "/{key_id}", operation_id="revokeKey", status_code=204, summary="Revoke a key of this project, at once",
    responses=DELETION, openapi_extra=ADMIN,
)  # fmt: skip
def revoke_key(key_id: str, request: Request, resources: ResourcesDep) -> Response:
    if not resources.keys.revoke(key_id, principal_of(request).project):
        raise NotFoundError.of("live key", key_id)
    return Response(status_code=204)
