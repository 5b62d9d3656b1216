"""The public performance page over HTTP and in a browser, both backends: no sign-in, one row per
provider with its headline figures and trend lines, a page per provider with a chart, a table and
the definition of each measure, small numbers shown as "<5"; axe-core finds nothing serious, and the
screenshots in docs/images come from here.

The figures are put straight into the monthly aggregate (what the page reads), with known answers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from gateway.kpi.definitions import DEFINITIONS, MeasureId
from gateway.kpi.performance import window
from gateway.store import kpi as store
from gateway.store.db import Database
from gateway.store.kpi import CellKey, Figures
from tests.support import RunningServer
from tests.web.test_browser import check_accessibility, chromium, new_page  # noqa: F401  (fixtures)

# The README's screenshots are taken again with UPDATE_SCREENSHOTS=1 (else into test-artifacts/).
ROOT = Path(__file__).resolve().parents[2]
DOCS_IMAGES = ROOT / ("docs/images" if os.environ.get("UPDATE_SCREENSHOTS") == "1" else "test-artifacts")
ON_TIME = MeasureId.ON_TIME_DELIVERY.value
CLIP = {"x": 0, "y": 0, "width": 1024, "height": 1300}


def put_figures(db: Database) -> list[str]:
    """Twelve months for VNCEL (a steady 90% on time) and one small month for VNFKT (3 of 4 on
    time: hidden); a trust's own cell that the public page must not add in."""
    months = list(window(datetime.now(UTC)))
    cells: dict[CellKey, Figures] = {}
    for index, month in enumerate(months):
        cells[CellKey(ON_TIME, "VNCEL", store.ALL_TRUSTS, month)] = Figures(numerator=90, denominator=100)
        cells[CellKey(MeasureId.FAILED_DELIVERIES.value, "VNCEL", store.ALL_TRUSTS, month)] = Figures(
            numerator=index + 5, denominator=200, strata={"cause": {"patient-not-home": index + 5}}
        )
        cells[CellKey(MeasureId.TIME_TO_ACCEPTANCE.value, "VNCEL", store.ALL_TRUSTS, month)] = Figures(
            numerator=10, distribution={30 + index: 5, 240: 5}
        )
    cells[CellKey(ON_TIME, "VNFKT", store.ALL_TRUSTS, months[-1])] = Figures(numerator=3, denominator=4)
    cells[CellKey(ON_TIME, "VNFKT", "RBA", months[-1])] = Figures(numerator=3, denominator=4)
    with db.transaction() as tx:
        store.add_to_cells(tx, cells, now=datetime.now(UTC))
    return months


def test_the_page_shows_every_provider_with_hidden_small_numbers_without_sign_in(
    db: Database, web: RunningServer
) -> None:
    put_figures(db)
    with httpx.Client(base_url=web.base_url) as http:
        listing = http.get("/performance")
        provider = http.get("/performance/VNCEL")
        small = http.get("/performance/VNFKT")
        unknown, bad = http.get("/performance/NOPE1"), http.get("/performance/no%20such")
    assert listing.status_code == 200 and "Sign in" not in listing.text
    rows = re.findall(r'data-testid="provider-row" data-provider="([A-Z0-9]+)"', listing.text)
    assert rows == ["VNCEL", "VNFKT"]  # by name: Test Homecare One, Two; Three has no figures
    figures = re.findall(r'data-measure="on-time-delivery"><span data-testid="figure">([^<]+)<', listing.text)
    assert figures == ["90%", "&lt;5"]
    assert ">52.5 per 1,000<" in listing.text  # 126 failed of 2,400 attempts
    assert listing.text.count('class="app-sparkline"') == 10 and 'role="img"' in listing.text
    assert "Failed deliveries per 1,000 delivery attempts by month" in listing.text
    assert provider.status_code == 200
    assert provider.text.count('class="app-chart"') == len(DEFINITIONS)
    for definition in DEFINITIONS:
        assert definition.rule.replace("'", "&#39;") in provider.text
    # 120 times: five each of 30 to 41 minutes, sixty of 240; the nearest-rank median is the 60th.
    assert re.search(r'data-testid="overall">41 min<', provider.text)
    assert small.status_code == 200 and "&lt;5" in small.text
    assert (unknown.status_code, bad.status_code) == (404, 404)
    assert "Page not found" in unknown.text


def test_the_pages_pass_axe_in_a_browser_and_make_the_readme_screenshots(
    db: Database,
    web: RunningServer,
    new_page: Callable[..., Any],  # noqa: F811  (the fixture imported above)
) -> None:
    put_figures(db)
    page = new_page()
    page.goto(f"{web.base_url}/performance")
    assert page.get_by_role("img", name=re.compile("^On-time delivery by month")).count() == 2
    check_accessibility(page, "performance")
    DOCS_IMAGES.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS_IMAGES / "performance.png"), full_page=True)
    page.get_by_role("link", name="Test Homecare One").click()
    page.wait_for_url(f"{web.base_url}/performance/VNCEL")
    page.screenshot(path=str(DOCS_IMAGES / "performance-provider.png"), full_page=True, clip=CLIP)
    page.get_by_text("On-time delivery as a table").click()
    assert page.get_by_role("cell", name="90%").count() == 12
    check_accessibility(page, "performance-provider")
