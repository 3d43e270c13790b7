"""The report's assets, all shipped with the package (the service works offline): the stylesheet and page
script beside this module, and the Vega + Vega-Lite + vega-embed bundle that vl-convert-python carries
(`javascript_bundle()`: one self-contained script, no CDN and no npm step). The bundle is made once per
process on first use (about 2 s) and then served from memory."""

from __future__ import annotations

import re
import threading
from functools import cache
from pathlib import Path

import vl_convert

STATIC = Path(__file__).parent / "static"
_bundle_lock = threading.Lock()
_bundle: list[str] = []


def vega_version() -> str:
    """Names the bundle's URL, so that a browser may cache it for good."""
    return f"{vl_convert.get_vega_version()}-{vl_convert.get_vega_embed_version()}"


def vega_bundle() -> str:
    with _bundle_lock:
        if not _bundle:
            _bundle.append(vl_convert.javascript_bundle("window.vegaEmbed = vegaEmbed;"))
        return _bundle[0]


@cache
def static_text(name: str) -> str:
    """caliper.css or caliper.js (only names in this package's static folder)."""
    return (STATIC / name).read_text(encoding="utf-8")


def inline_script(source: str) -> str:
    """JavaScript safe to write inside an HTML <script> element: a `</script` (which would end the element)
    written `<\\/script`, the same text inside a string literal where it can occur; refused when the source
    holds `<!--` (which changes how HTML reads a script) rather than rewritten (inside a regular expression
    a rewrite could change its meaning). Other `</` are left alone: `/</g` is a regular expression."""
    if "<!--" in source:
        raise ValueError("the script holds `<!--`: it cannot be inlined safely")
    return re.sub(r"</(script)", r"<\\/\1", source, flags=re.IGNORECASE)
