"""/v1/keys: an admin key manages the keys of its own project (the CLI's `caliper keys` manages all)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.auth import role
from app.api.deps import PrincipalDep, ResourcesDep
from app.api.json_body import StrictJsonRoute
from app.api.problems import DELETION, JSON_WRITE, LISTING
from app.keys.schemas import KeyList, KeyRequest, NewKey

router = APIRouter(prefix="/v1/keys", tags=["keys"], route_class=StrictJsonRoute)
ADMIN = role("admin")


@router.post(
    "", operation_id="createKey", status_code=201, response_model=NewKey, summary="Make a key for this project",
    responses=JSON_WRITE, openapi_extra=ADMIN,
)  # fmt: skip
def create_key(body: KeyRequest, principal: PrincipalDep, response: Response, resources: ResourcesDep) -> NewKey:
    response.headers["Cache-Control"] = "no-store"  # a secret: no cache keeps it, nor the Idempotency-Key replays
    return resources.keys.create(principal.project, body)


@router.get(
    "", operation_id="listKeys", response_model=KeyList, summary="This project's keys, newest first (no secrets)",
    responses=LISTING, openapi_extra=ADMIN,
)  # fmt: skip
def list_keys(principal: PrincipalDep, resources: ResourcesDep) -> KeyList:
    return resources.keys.list(principal.project)


@router.delete(
    "/{key_id}", operation_id="revokeKey", status_code=204, summary="Revoke a key of this project, at once",
    responses=DELETION, openapi_extra=ADMIN,
)  # fmt: skip
def revoke_key(key_id: str, principal: PrincipalDep, resources: ResourcesDep) -> Response:
    resources.keys.revoke(principal.project, key_id)
    return Response(status_code=204)
