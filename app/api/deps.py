"""Request-scoped access to the composition root (`app.context.Resources`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, ParamSpec, TypeVar

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from app.context import Resources
from app.storage.keys import Principal

P = ParamSpec("P")
T = TypeVar("T")
INLINE_BYTES = 64 * 1024  # arrays this small are computed on the event loop: a thread hop costs more


def resources_of(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


async def get_resources(request: Request) -> Resources:
    """Async on purpose: FastAPI runs sync dependencies in its thread pool (a hop per request)."""
    return resources_of(request)


ResourcesDep = Annotated[Resources, Depends(get_resources)]  # a route's parameter: the composition root


async def get_principal(request: Request) -> Principal:
    """Who is calling, as the authentication middleware found (its role already checked against the
    route's `x-caliper-role`, `app.api.auth.role`)."""
    principal: Principal = request.scope["caliper.principal"]
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]  # a route's parameter: the caller and its project


async def off_loop(inline: bool, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a use case in the thread pool, or on the event loop when `inline` (small, no database)."""
    return call(*args, **kwargs) if inline else await run_in_threadpool(call, *args, **kwargs)
