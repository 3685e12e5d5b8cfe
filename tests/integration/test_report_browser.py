"""The HTML report in a real browser: headless Debian chromium renders every section and every plot.

The store comes from the real flows: a retrain, five days of scores, five days of monitoring as the
actuals arrive, then the report flow. Saves the screenshot the README shows (docs/report.png).
"""

from __future__ import annotations

import datetime as dt
import shutil

import polars as pl
import pytest

from nightcast.flows.monitor import monitor_flow
from nightcast.flows.report import report_flow
from nightcast.flows.retrain import retrain_flow
from nightcast.flows.score import score_flow
from nightcast.schemas.monitoring import MonitorParams
from nightcast.schemas.params import ScoreParams
from nightcast.tasks.ops.report import SECTIONS
from tests.conftest import fast_params
from tests.integration.conftest import REPO

pytestmark = pytest.mark.slow

SCREENSHOT = REPO / "docs" / "report.png"


@pytest.fixture(scope="module")
def report_page(tmp_path_factory, sample_raw, prefect_harness):
    """Champion trained on data up to 2026-09-09; forecasts as of the 8th to the 12th; monitoring on the
    10th to the 14th; the report written last."""
    root = tmp_path_factory.mktemp("report-browser")
    train, full, store = root / "train.csv", root / "full.csv", str(root / "store")
    sample_raw.filter(pl.col("timestamp").str.to_datetime() < dt.datetime(2026, 9, 10)).write_csv(train)
    sample_raw.write_csv(full)
    retrain_flow(fast_params(str(train)), store=store)
    for d in range(8, 13):
        score_flow(ScoreParams(data=str(full), as_of=dt.date(2026, 9, d)), store=store)
    for d in range(10, 15):
        monitor_flow(MonitorParams(data=str(full), as_of=dt.date(2026, 9, d)), store=store)
    return report_flow("lstm", store=store)["latest"]


def test_the_report_renders_in_chromium_with_every_section_and_plot(report_page):
    from playwright.sync_api import expect, sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("Debian's chromium is required (apt-get install chromium); .ci/run installs it")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu",
                                                                     "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        try:
            page.goto(f"file://{report_page}", wait_until="load")
            for title in SECTIONS.values():
                expect(page.get_by_role("heading", level=2, name=title, exact=True)).to_be_visible()
            widths = page.eval_on_selector_all("img", "els => els.map(e => e.complete ? e.naturalWidth : 0)")
            assert len(widths) == 5 and all(w > 0 for w in widths), widths
            assert page.locator(".empty").count() == 0  # monitoring data is there: no placeholder
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert requests == [f"file://{report_page}"]  # the page itself, nothing else: plots are inline
    assert errors == []
    assert SCREENSHOT.stat().st_size > 50_000
