"""The list / get / delete routes of a stored resource, built once from its service (`app.stored`): each
resource module names its service, its answer model, its filters and its words, and gets the three
routes with the operation ids, summaries and error answers the OpenAPI document has always had."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from app.api.deps import ResourcesDep
from app.api.problems import DELETION, LISTING, READ
from app.context import Resources
from app.records import Page, tag_pairs
from app.stored import StoredResource

Service = Callable[[Resources], StoredResource[Any, Any]]
TAG_QUERY = Annotated[
    list[str] | None,
    Query(description="key:value, or a bare key for any value (as in gate baselines); repeat to require several."),
]
KEYWORD = inspect.Parameter.KEYWORD_ONLY


def _endpoint(name: str, call: Callable[..., Any], parameters: list[inspect.Parameter], answer: Any) -> Any:
    """`call` as a FastAPI endpoint whose parameters are `parameters` (FastAPI reads `__signature__`)."""
    call.__name__ = name
    call.__signature__ = inspect.Signature(parameters, return_annotation=answer)  # type: ignore[attr-defined]
    return call


def add_stored_routes(
    router: APIRouter,
    service: Service,
    answer: type[Any],
    *,
    name: str,
    plural: str | None = None,
    thing: str,
    things: str,
    id_param: str,
    filters: Mapping[str, str],
    delete: str | None = None,
    delete_responses: dict[int | str, dict[str, Any]] = DELETION,
    tagged: bool = False,
) -> None:
    """GET "" (list, newest first, `filters` = {query parameter: column}, and `tag` filters when `tagged`),
    GET "/{id_param}" and, with a `delete` summary, DELETE "/{id_param}"; operation ids get{name},
    delete{name} and list{plural} (`name` + "s" unless given)."""
    plural = plural or f"{name}s"

    def list_(
        resources: Resources, limit: int, cursor: str | None, tag: list[str] | None = None, **given: str | None
    ) -> Page[Any]:
        tags = tag_pairs(tag or [])
        return service(resources).page(limit, cursor, tags, **{filters[k]: v for k, v in given.items()})

    listing = [
        inspect.Parameter("resources", KEYWORD, annotation=ResourcesDep),
        *(inspect.Parameter(q, KEYWORD, default=None, annotation=str | None) for q in filters),
        *([inspect.Parameter("tag", KEYWORD, default=None, annotation=TAG_QUERY)] if tagged else []),
        inspect.Parameter("limit", KEYWORD, default=50, annotation=Annotated[int, Query(ge=1, le=500)]),
        inspect.Parameter("cursor", KEYWORD, default=None, annotation=str | None),
    ]
    page = Page.__class_getitem__(answer)  # Page[answer], its schema named as before (Page_CalibratorOut_)
    router.get(
        "", operation_id=f"list{plural}", response_model=page, summary=f"List {things}, newest first",
        responses=LISTING,
    )(_endpoint("list_", list_, listing, page))  # fmt: skip

    by_id = [
        inspect.Parameter(id_param, KEYWORD, annotation=str),
        inspect.Parameter("resources", KEYWORD, annotation=ResourcesDep),
    ]

    def get(resources: Resources, **path: str) -> Any:
        return service(resources).get(path[id_param])

    router.get(
        f"/{{{id_param}}}", operation_id=f"get{name}", response_model=answer, summary=f"One {thing}", responses=READ
    )(_endpoint("get", get, by_id, answer))
    if delete is None:
        return

    def remove(resources: Resources, **path: str) -> Response:
        service(resources).delete(path[id_param])
        return Response(status_code=204)

    router.delete(
        f"/{{{id_param}}}", operation_id=f"delete{name}", status_code=204, summary=delete, responses=delete_responses
    )(_endpoint("delete", remove, by_id, Response))
