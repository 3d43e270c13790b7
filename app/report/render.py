"""HTML from the report's Jinja2 templates: pages served under /ui/ (assets linked) and standalone files
(stylesheet, Vega bundle and page script inlined: one file that opens offline, the CI artifact)."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from app.report import assets

ENVIRONMENT = Environment(
    loader=PackageLoader("app.report", "templates"), autoescape=select_autoescape(["html"]), trim_blocks=True
)


def page(template: str, context: dict[str, Any]) -> str:
    """A page of the served report: its assets are /ui/static URLs."""
    return ENVIRONMENT.get_template(template).render(
        context | {"standalone": False, "root": "", "assets": {"version": assets.vega_version()}}
    )


def standalone(template: str, context: dict[str, Any], root: str = "") -> str:
    """The same page as one self-contained file; `root` (a server URL) makes its home link absolute."""
    inlined = {
        "css": Markup(assets.static_text("caliper.css")),  # ours: no `</style`
        "vega": Markup(assets.inline_script(assets.vega_bundle())),
        "js": Markup(assets.inline_script(assets.static_text("caliper.js"))),
    }
    return ENVIRONMENT.get_template(template).render(
        context | {"standalone": True, "root": root.rstrip("/"), "assets": inlined}
    )
