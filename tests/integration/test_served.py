"""The embedded shape: ``prefect server start`` + ``nightcast serve``, driven by the CLI and a browser."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import httpx
import polars as pl
import pytest

from nightcast.schemas.frames import Forecasts
from tests.integration.conftest import BIN, FAST_RETRAIN, REPO, Stack, start_stack, wait_for

pytestmark = pytest.mark.slow

SCREENSHOT_DIR = REPO / "build" / "screenshots"


@pytest.fixture(scope="module")
def served(tmp_path_factory, moto_endpoint, sample_raw, aws_for_tests):
    stack = start_stack(tmp_path_factory.mktemp("served"), moto_endpoint, sample_raw)
    try:
        stack.procs.start("serve", [str(BIN / "nightcast"), "serve"], stack.env, stack.logs)
        wait_for(lambda: len(deployments(stack)) == 5, 180, "nightcast serve to register 5 deployments")
        # the first run trains the champion that every later test scores with
        run = stack.run_deployment("retrain/nightly", "--params", json.dumps(FAST_RETRAIN), timeout=400)
        assert run["state_type"] == "COMPLETED", run["state"]["message"] + stack.procs.log("serve")[-5000:]
        yield stack
    finally:
        stack.procs.stop()


def deployments(stack: Stack) -> dict[str, dict]:
    try:
        found = httpx.post(f"{stack.api_url}/deployments/filter", json={}, timeout=10).json()
    except httpx.HTTPError:
        return {}
    flows = {f["id"]: f["name"] for f in httpx.post(f"{stack.api_url}/flows/filter", json={}, timeout=10).json()}
    return {f"{flows[d['flow_id']]}/{d['name']}": d for d in found}


def partitions(stack: Stack) -> list[str]:
    return sorted({k.split("/")[2] for k in stack.keys("forecasts/model=lstm/")})


def test_serve_registers_every_declared_schedule(served):
    found = deployments(served)
    assert set(found) == {"retrain/nightly", "score/daily", "backfill/backfill", "tune/weekly", "monitor/accuracy"}
    crons = {name: [(s["schedule"]["cron"], s["schedule"]["timezone"]) for s in d["schedules"]]
             for name, d in found.items()}
    assert crons == {"retrain/nightly": [("0 2 * * *", "UTC")], "score/daily": [("30 3 * * *", "UTC")],
                     "backfill/backfill": [], "tune/weekly": [("0 4 * * 0", "UTC")],
                     "monitor/accuracy": [("30 4 * * *", "UTC")]}
    # the parameter form: dates are dates, so the UI renders date pickers and rejects other values
    schema = found["backfill/backfill"]["parameter_openapi_schema"]
    assert schema["properties"]["start"]["format"] == "date" and schema["required"] == ["start", "end"]


def test_retrain_run_left_a_champion_and_artifacts(served):
    champion = json.loads(served.read("models/lstm/champion.json"))
    manifest = json.loads(served.read(f"models/lstm/versions/{champion['version']}/manifest.json"))
    assert manifest["data"]["uri"] == served.data
    arts = httpx.post(f"{served.api_url}/artifacts/filter", json={}, timeout=10).json()
    assert {"retrain-lstm", "bundle-lstm"} <= {a["key"] for a in arts}


def test_backfill_from_the_cli_writes_one_partition_per_date(served):
    # the champion was trained on the whole sample (to 2026-09-14): these dates need the look-ahead accepted
    run = served.run_deployment("backfill/backfill", "--param", "start=2026-09-05", "--param", "end=2026-09-07",
                                "--param", "allow_look_ahead=true", timeout=300)
    assert run["state_type"] == "COMPLETED", run["state"]["message"] + served.procs.log("serve")[-5000:]
    assert {"as_of=2026-09-05", "as_of=2026-09-06", "as_of=2026-09-07"} <= set(partitions(served))
    frame = pl.read_parquet(io.BytesIO(served.read("forecasts/model=lstm/as_of=2026-09-06/forecasts.parquet")))
    Forecasts.validate(frame)
    # a scheduled-style score run with no parameters: newest date of the data
    run = served.run_deployment("score/daily", timeout=300)
    assert run["state_type"] == "COMPLETED", run["state"]["message"] + served.procs.log("serve")[-5000:]
    assert "as_of=2026-09-14" in partitions(served)


def test_bad_parameters_fail_the_run_before_any_work(served):
    before = partitions(served)
    bad = served.run_deployment("backfill/backfill", "--param", "start=yesterday", "--param", "end=2026-09-07",
                                timeout=120)
    assert bad["parameters"]["start"] == "yesterday"
    message = bad["state"]["message"]
    assert bad["state_type"] == "FAILED" and "start" in message and "valid date" in message, message
    assert partitions(served) == before


def test_backfill_from_the_prefect_ui(served):
    """A person's path: deployment page → Run → Custom run → fill the dates → Submit."""
    from playwright.sync_api import expect, sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("Debian's chromium is required (apt-get install chromium); .ci/run installs it")
    dep_id = deployments(served)["backfill/backfill"]["id"]
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu",
                                                                     "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{served.ui_url}/v2/deployments/deployment/{dep_id}", wait_until="networkidle")
            page.get_by_role("button", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Custom run").click()
            submit = page.get_by_role("button", name="Submit")
            submit.wait_for(timeout=30_000)
            # the newest date of the data: the only one the champion (trained on all of it) has not seen past
            for name, value, shown in (("start", "2026-09-14", "September 14th, 2026"),
                                       ("end", "2026-09-14", "September 14th, 2026")):
                picker = page.get_by_role("button", name=name).first  # the date picker, labelled by the parameter
                picker.click()
                box = page.get_by_placeholder("yyyy-MM-dd")
                box.fill(value)
                box.press("Enter")
                page.keyboard.press("Escape")
                expect(picker).to_contain_text(shown)
            page.screenshot(path=str(SCREENSHOT_DIR / "backfill-custom-run.png"), full_page=True)
            submit.click()
            # the UI goes back to the deployment, whose run list now holds the new run
            page.wait_for_url(re.compile(r"/deployments/deployment/[0-9a-f-]+(\?|$)"), timeout=30_000)
        except Exception:
            page.screenshot(path=str(SCREENSHOT_DIR / "backfill-custom-run-failure.png"), full_page=True)
            raise
        finally:
            browser.close()

    def finished():
        runs = httpx.post(f"{served.api_url}/flow_runs/filter",
                          json={"deployments": {"id": {"any_": [dep_id]}}}, timeout=10).json()
        mine = [r for r in runs if r["parameters"].get("start") == "2026-09-14"]
        return mine and mine[0]["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") and mine[0]

    run = wait_for(finished, 300, "the backfill submitted from the UI to finish")
    assert run["state_type"] == "COMPLETED", served.procs.log("serve")[-5000:]
    assert run["parameters"]["end"] == "2026-09-14"
    assert "as_of=2026-09-14" in set(partitions(served))
    assert Path(SCREENSHOT_DIR / "backfill-custom-run.png").stat().st_size > 10_000


def test_runs_from_the_api_cannot_steer_the_worker_elsewhere(served, tmp_path):
    """Whoever can reach the API can set any parameter; store and data must stay in the worker's locations."""
    outside = tmp_path / "elsewhere"
    for params in ({"store": str(outside)}, {"params": {"data": "/etc/passwd"}}):
        run = served.run_deployment("score/daily", "--params", json.dumps(params), timeout=180)
        assert run["state_type"] == "FAILED", run["state"]["message"]
    runs = httpx.post(f"{served.api_url}/flow_runs/filter", json={}, timeout=10).json()
    refused = [r for r in runs if r["parameters"].get("store") == str(outside)
               or r["parameters"].get("params", {}).get("data") == "/etc/passwd"]
    assert len(refused) == 2
    for r in refused:
        assert r["state_type"] == "FAILED" and "outside the locations this worker may use" in r["state"]["message"]
    assert not outside.exists()


def test_the_retrain_deployment_runs_one_at_a_time(served):
    limit = deployments(served)["retrain/nightly"]
    assert limit["concurrency_limit"] == 1 or (limit.get("global_concurrency_limit") or {}).get("limit") == 1
    assert (limit.get("concurrency_options") or {}).get("collision_strategy") == "ENQUEUE"
