"""The web report in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright) loads
every page kind against a service with real data, with every host but the server unreachable, and finds
no console error, no failed request, and each plot drawn as SVG with the marks its stored data implies; a
screenshot of each page kind goes to CALIPER_SCREENSHOTS (default var/screenshots, which `make test`
prints). The standalone report opened from file:// draws the same plots with the network blocked.
Without Chromium these tests skip, except in CI (.ci/run installs it), where they fail."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.test_ui import populate

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = Path(os.environ.get("CALIPER_SCREENSHOTS", Path(__file__).parent.parent / "var" / "screenshots"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()


class Watched:
    """A browser page whose console errors, uncaught exceptions and failed or off-host requests are kept."""

    def __init__(self, browser: Any, allowed: str) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.problems: list[str] = []
        self.context.route("**/*", lambda route: self._only(route, allowed))
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.problems.append(f"console: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.problems.append(f"exception: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(f"failed: {r.url}"))

    def _only(self, route: Any, allowed: str) -> None:
        if route.request.url.startswith(allowed):
            route.continue_()
        else:
            self.problems.append(f"off-host request: {route.request.url}")
            route.abort()

    def drawn(self, url: str, screenshot: str | None = None) -> Any:
        """Load `url`, wait until every figure's plot is drawn, and return the page."""
        self.page.goto(url)
        self.wait_drawn(self.page.locator("figure.chart").count() - self.page.locator("details figure.chart").count())
        if screenshot:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(SCREENSHOTS / f"{screenshot}.png"), full_page=True)
        return self.page

    def wait_drawn(self, figures: int) -> None:
        """Until `figures` plots are drawn as SVG (those in closed <details> draw when opened)."""
        url = self.page.url
        try:
            self.page.wait_for_function(
                f"document.querySelectorAll('.plot[data-drawn=true] svg').length === {figures}", timeout=60_000
            )
        except Exception as exc:  # Playwright's timeout: say what the page saw
            raise AssertionError(f"{url}: not every plot was drawn; {self.problems}") from exc


def marks(page: Any, figure: int, mark: str) -> int:
    """How many items of a mark type (rect, symbol, line, text, rule) figure `figure` drew as data (not as
    axes or legends)."""
    group = f"g.mark-{mark}.role-mark"
    return int(page.locator("figure.chart").nth(figure).locator(f"{group} > :is(path, text, line)").count())


def test_every_page_kind_draws_its_plots_in_chromium(browser: Any, client: TestClient, live_server: str) -> None:
    ids = populate(client)
    stored = client.get(f"/v1/evaluations/{ids['candidate']}").json()
    non_empty = sum(1 for b in stored["reliability"]["bins"] if b["count"] > 0)
    gate = client.get(f"/v1/gates/{ids['gate']}").json()
    watched = Watched(browser, live_server)
    page = watched.drawn(f"{live_server}/ui/evaluations/{ids['candidate']}", "evaluation")
    assert marks(page, 0, "rect") == 2 * non_empty  # accuracy bars above, counts below
    assert marks(page, 0, "symbol") == non_empty  # a mean-confidence point per bin
    described = page.locator("figure.chart").nth(0).locator("[aria-label^='Reliability diagram of']")
    assert described.count() == 1  # the plot's text alternative
    classes = stored["classes"]
    confusion = next(i for i in range(page.locator("figure.chart").count())
                     if "Confusion matrix" in page.locator("figure.chart").nth(i).inner_text())  # fmt: skip
    assert marks(page, confusion, "rect") == classes * classes
    drawn = page.locator(".plot[data-drawn=true]").count()
    group = page.locator("details").filter(has_text="north")
    group.locator("summary").click()  # a slice group's diagram draws when opened
    watched.wait_drawn(drawn + 1)
    north = client.get(f"/ui/evaluations/{ids['candidate']}").text  # its bins, as the page embeds them
    assert "north" in north and group.locator("g.mark-symbol.role-mark > path").count() >= 1
    watched.page.screenshot(path=str(SCREENSHOTS / "evaluation-slice-open.png"), full_page=True)
    page = watched.drawn(f"{live_server}/ui/gates/{ids['gate']}", "gate")
    compared = [r for r in gate["rules"] if r["delta"] is not None]
    assert marks(page, 0, "symbol") == len(compared) and marks(page, 0, "rule") >= len(compared)
    page = watched.drawn(f"{live_server}/ui/models/resnet?metric=accuracy&metric=ece", "model-history")
    assert marks(page, 0, "symbol") == 2 and marks(page, 1, "symbol") == 2
    page = watched.drawn(f"{live_server}/ui/calibrators/{ids['calibrator']}", "calibrator")
    assert page.locator("figure.chart").count() == 3  # fit data, validation split, weights
    watched.drawn(f"{live_server}/ui/compare?a={ids['baseline']}&b={ids['candidate']}", "compare")
    page = watched.drawn(f"{live_server}/ui/ood/{ids['ood']}", "ood")
    assert marks(page, 0, "rect") == 2 * 40  # the in and the out histogram over the same 40 bins
    assert marks(page, 1, "line") == 2 and marks(page, 1, "symbol") == 1  # diagonal, ROC; the FPR@95 point
    described = page.locator("figure.chart").nth(1).locator("[aria-label^='ROC curve of']")
    assert described.count() == 1
    for name, path in (("home", "/ui/"), ("evaluations", "/ui/evaluations"), ("models", "/ui/models"),
                       ("detector", f"/ui/detectors/{ids['detector']}")):  # fmt: skip
        watched.drawn(live_server + path, name)
    assert watched.problems == []
    watched.context.close()


def test_the_standalone_report_draws_offline_from_a_file(browser: Any, client: TestClient, tmp_path: Path) -> None:
    ids = populate(client)
    report = tmp_path / "report.html"
    report.write_bytes(client.get(f"/v1/evaluations/{ids['candidate']}/report.html").content)
    watched = Watched(browser, "file://")
    page = watched.drawn(report.as_uri(), "standalone-report")
    assert page.locator("figure.chart").count() >= 4
    assert watched.problems == []
    watched.context.close()
