"""The production shape: ``prefect deploy`` from deployments/prefect.yaml onto a process work pool + a worker."""

from __future__ import annotations

import io
import json

import httpx
import polars as pl
import pytest

from nightcast.schemas.frames import Forecasts
from tests.integration.conftest import BIN, FAST_RETRAIN, start_stack, wait_for

pytestmark = pytest.mark.slow


def test_deploy_to_a_process_pool_and_run_through_a_worker(tmp_path, moto_endpoint, sample_raw, aws_for_tests):
    stack = start_stack(tmp_path, moto_endpoint, sample_raw)
    try:
        made = stack.prefect("work-pool", "create", "nightcast", "--type", "process")
        assert made.returncode == 0, made.stdout + made.stderr
        deployed = stack.prefect("--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]

        found = httpx.post(f"{stack.api_url}/deployments/filter", json={}, timeout=10).json()
        assert {d["name"]: d["work_pool_name"] for d in found} == {
            "nightly": "nightcast", "daily": "nightcast", "backfill": "nightcast", "weekly": "nightcast",
            "accuracy": "nightcast"}
        nightly = next(d for d in found if d["name"] == "nightly")
        assert [(s["schedule"]["cron"], s["schedule"]["timezone"]) for s in nightly["schedules"]] == [
            ("0 2 * * *", "UTC")]
        # the scheduler creates the upcoming nightly runs, queued for the pool
        wait_for(lambda: httpx.post(f"{stack.api_url}/flow_runs/filter", json={
            "deployments": {"id": {"any_": [nightly["id"]]}}, "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
        }, timeout=10).json(), 120, "scheduled nightly runs")

        stack.procs.start("worker", [str(BIN / "prefect"), "worker", "start", "--pool", "nightcast"],
                          stack.env, stack.logs)
        run = stack.run_deployment("retrain/nightly", "--params", json.dumps(FAST_RETRAIN), timeout=400)
        assert run["state_type"] == "COMPLETED", run["state"]["message"] + stack.procs.log("worker")[-5000:]
        # the champion saw the whole sample (to 2026-09-14): scoring earlier dates with it is accepted look-ahead
        run = stack.run_deployment("backfill/backfill", "--param", "start=2026-09-08", "--param", "end=2026-09-09",
                                   "--param", "allow_look_ahead=true", timeout=300)
        assert run["state_type"] == "COMPLETED", run["state"]["message"] + stack.procs.log("worker")[-5000:]
        keys = stack.keys("forecasts/model=lstm/")
        assert keys == ["forecasts/model=lstm/as_of=2026-09-08/forecasts.parquet",
                        "forecasts/model=lstm/as_of=2026-09-09/forecasts.parquet"]
        for key in keys:
            Forecasts.validate(pl.read_parquet(io.BytesIO(stack.read(key))))
    finally:
        stack.procs.stop()  # the worker first, then the server
