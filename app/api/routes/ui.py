"""/ui: the web report's pages (server-rendered HTML; tables work without JavaScript, plots are drawn by
the vendored vega-embed), its assets, the sign-in form that keeps an API key in an HTTP-only cookie, and
`GET /v1/evaluations/{id}/report.html` (one standalone file). Each page reads through the services, as the
API does (`app.report.pages`); an unknown id is a 404 page, a bad filter a 422 page."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from app.api.auth import KEY_COOKIE
from app.api.deps import resources_of
from app.api.problems import READ
from app.core.errors import InputError
from app.records import NotFoundError
from app.report import assets, render
from app.report.pages import HIGHLIGHT, ReportPages

router = APIRouter(include_in_schema=False)
IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable"}
HTML = "text/html; charset=utf-8"


async def _page(request: Request, template: str, build: Callable[[ReportPages], dict[str, Any]]) -> HTMLResponse:
    """The page, or an HTML page saying what was not found (404) or what was wrong with the query (422)."""
    pages = resources_of(request).report
    try:
        context = await run_in_threadpool(build, pages)
    except NotFoundError as exc:
        return _error(404, "Not found", str(exc))
    except InputError as exc:
        return _error(422, "Invalid query", f"{exc.field}: {exc.message}")
    return HTMLResponse(render.page(template, context))


def _error(status: int, title: str, message: str) -> HTMLResponse:
    body = render.page("error.html", {"title": title, "message": message})
    return HTMLResponse(body, status_code=status)


@router.get("/")
@router.get("/ui")
def to_home() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui/")
async def home(request: Request) -> HTMLResponse:
    return await _page(request, "home.html", lambda p: p.home())


@router.get("/ui/evaluations")
async def evaluations(
    request: Request,
    model: str | None = None,
    dataset: str | None = None,
    tag: str | None = None,
    since: str | None = None,
    until: str | None = None,
    cursor: str | None = None,
) -> HTMLResponse:
    return await _page(request, "evaluations.html", lambda p: p.evaluations(model, dataset, tag, since, until, cursor))


@router.get("/ui/evaluations/{evaluation_id}")
async def evaluation(request: Request, evaluation_id: str) -> HTMLResponse:
    return await _page(request, "evaluation.html", lambda p: p.evaluation(evaluation_id))


@router.get("/ui/models")
async def models(request: Request) -> HTMLResponse:
    return await _page(request, "models.html", lambda p: p.models())


@router.get("/ui/models/{name}")
async def model_history(
    request: Request, name: str, metric: Annotated[list[str] | None, Query()] = None, highlight: str = HIGHLIGHT
) -> HTMLResponse:
    return await _page(request, "model.html", lambda p: p.model_history(name, metric or [], highlight))


def _listing(kind: str) -> Callable[..., Awaitable[HTMLResponse]]:
    """The page listing one kind of stored resource, newest first."""

    async def listing(request: Request, cursor: str | None = None) -> HTMLResponse:
        return await _page(request, "listing.html", lambda p: p.listing(kind, cursor))

    return listing


def _one(page: str) -> Callable[..., Awaitable[HTMLResponse]]:
    """The page of one stored resource: `ReportPages.<page>(id)` drawn by `<page>.html`."""

    async def one(request: Request, record_id: str) -> HTMLResponse:
        return await _page(request, f"{page}.html", lambda p: getattr(p, page)(record_id))

    return one


for _kind, _page_name in (("gates", "gate"), ("calibrators", "calibrator"), ("detectors", "detector")):
    router.get(f"/ui/{_kind}")(_listing(_kind))
    router.get(f"/ui/{_kind}/{{record_id}}")(_one(_page_name))
router.get("/ui/ood/{record_id}")(_one("ood"))  # a model evaluation's OOD separation


@router.get("/ui/compare")
async def compare(request: Request, a: str = "", b: str = "", bootstrap: bool = False) -> HTMLResponse:
    if not a or not b:
        return _error(422, "Invalid query", "compare needs two evaluation ids: /ui/compare?a=ID&b=ID")
    return await _page(request, "compare.html", lambda p: p.compare(a, b, bootstrap))


@router.get("/ui/static/caliper.css")
def stylesheet() -> Response:
    return Response(assets.static_text("caliper.css"), media_type="text/css")


@router.get("/ui/static/caliper.js")
def script() -> Response:
    return Response(assets.static_text("caliper.js"), media_type="text/javascript")


@router.get("/ui/static/vega-{version}.js")
async def vega(version: str) -> Response:
    if version != assets.vega_version():
        return Response("unknown version", status_code=404, media_type="text/plain")
    bundle = await run_in_threadpool(assets.vega_bundle)  # made once per process (about 2 s)
    return Response(bundle, media_type="text/javascript", headers=IMMUTABLE)


@router.get("/ui/login")
def login_form(next: str = "/ui/", failed: bool = False) -> HTMLResponse:
    message = "That key was not accepted." if failed else "This server asks for an API key (CALIPER_AUTH=required)."
    status = 401 if failed else 200
    return HTMLResponse(render.page("login.html", {"next": _local(next), "message": message}), status_code=status)


@router.post("/ui/login")
def login(key: Annotated[str, Form()], next: Annotated[str, Form()] = "/ui/") -> RedirectResponse:
    """Keep the key in an HTTP-only, same-site cookie; the authentication middleware checks it on each page
    (and lets it authorise reads only, so a page can never be made to write)."""
    redirect = RedirectResponse(_local(next), status_code=303)
    redirect.set_cookie(KEY_COOKIE, key, httponly=True, samesite="strict", max_age=8 * 3600)
    return redirect


@router.post("/ui/logout")
def logout() -> RedirectResponse:
    redirect = RedirectResponse("/ui/", status_code=303)
    redirect.delete_cookie(KEY_COOKIE)
    return redirect


def _local(path: str) -> str:
    """Only this server's own pages as a redirect target (no open redirect)."""
    return path if path.startswith("/") and not path.startswith("//") else "/ui/"


report_router = APIRouter()


async def _standalone(request: Request, template: str, build: Callable[[], dict[str, Any]], name: str) -> Response:
    context = await run_in_threadpool(build)  # NotFoundError: the API's 404 problem
    html = await run_in_threadpool(render.standalone, template, context, str(request.base_url))
    return Response(html, media_type=HTML, headers={"Content-Disposition": f'inline; filename="{quote(name)}.html"'})


@report_router.get(
    "/v1/evaluations/{evaluation_id}/report.html",
    operation_id="getEvaluationReport",
    tags=["evaluations"],
    summary="The evaluation's report as one standalone HTML file (assets inlined: it opens offline)",
    response_class=HTMLResponse,
    responses={**READ, 200: {"content": {"text/html": {}}, "description": "The report page."}},
)
async def evaluation_report(request: Request, evaluation_id: str) -> Response:
    pages = resources_of(request).report
    build = lambda: pages.evaluation(evaluation_id)  # noqa: E731
    return await _standalone(request, "evaluation.html", build, f"caliper-evaluation-{evaluation_id}")


@report_router.get(
    "/v1/gates/{gate_id}/report.html",
    operation_id="getGateReport",
    tags=["gates"],
    summary="The gate's report as one standalone HTML file (the CI artifact of `caliper gate --html`)",
    response_class=HTMLResponse,
    responses={**READ, 200: {"content": {"text/html": {}}, "description": "The report page."}},
)
async def gate_report(request: Request, gate_id: str) -> Response:
    pages = resources_of(request).report
    return await _standalone(request, "gate.html", lambda: pages.gate(gate_id), f"caliper-gate-{gate_id}")
