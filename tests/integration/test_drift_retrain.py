"""Drift → retrain on a real ``prefect server`` with ``nightcast serve``: actuals degrade, the monitor
deployment emits ``nightcast.drift.detected``, and the retrain deployment's trigger starts a retrain."""

from __future__ import annotations

import datetime as dt
import io
import json

import boto3
import httpx
import polars as pl
import pytest

from nightcast.tasks.ops.monitor import DRIFT_EVENT
from tests.integration.conftest import BIN, FAST_RETRAIN, FINISHED, Stack, start_stack, wait_for

pytestmark = pytest.mark.slow

TS = pl.col("timestamp").str.to_datetime()


def _deployments(stack: Stack) -> dict[str, dict]:
    try:
        found = httpx.post(f"{stack.api_url}/deployments/filter", json={}, timeout=10).json()
        flows = {f["id"]: f["name"] for f in httpx.post(f"{stack.api_url}/flows/filter", json={}, timeout=10).json()}
    except httpx.HTTPError:
        return {}
    return {f"{flows[d['flow_id']]}/{d['name']}": d for d in found}


def _runs(stack: Stack, deployment_id: str) -> list[dict]:
    return httpx.post(f"{stack.api_url}/flow_runs/filter",
                      json={"deployments": {"id": {"any_": [deployment_id]}}}, timeout=10).json()


def _degraded(sample_raw: pl.DataFrame) -> pl.DataFrame:
    """The data up to 2026-09-12, then two days that repeat the 12th exactly: seasonal naive is perfect."""
    base = sample_raw.filter(TS.dt.date() == dt.date(2026, 9, 12)).with_columns(TS.alias("_t"))
    repeat = pl.concat([base.with_columns((pl.col("_t") + pl.duration(days=k)).dt.strftime("%Y-%m-%d %H:%M:%S")
                                          .alias("timestamp")) for k in (1, 2)]).drop("_t")
    return pl.concat([sample_raw.filter(TS < dt.datetime(2026, 9, 13)), repeat])


def test_degrading_actuals_start_a_retrain_through_the_drift_trigger(tmp_path, moto_endpoint, sample_raw,
                                                                     aws_for_tests):
    stack = start_stack(tmp_path, moto_endpoint, sample_raw.filter(TS < dt.datetime(2026, 9, 12)))
    try:
        stack.procs.start("serve", [str(BIN / "nightcast"), "serve"], stack.env, stack.logs)
        wait_for(lambda: len(_deployments(stack)) == 5, 180, "nightcast serve to register 5 deployments")
        found = _deployments(stack)
        nightly = found["retrain/nightly"]
        assert [(s["schedule"]["cron"], s["schedule"]["timezone"]) for s in found["monitor/accuracy"]["schedules"]] \
            == [("30 4 * * *", "UTC")]
        # the trigger became an automation owned by the retrain deployment
        automations = httpx.post(f"{stack.api_url}/automations/filter", json={}, timeout=10).json()
        (auto,) = [a for a in automations if a["name"] == "retrain-on-drift"]
        assert auto["trigger"]["expect"] == [DRIFT_EVENT] and auto["enabled"]
        assert auto["actions"][0]["type"] == "run-deployment" and auto["actions"][0]["deployment_id"] == nightly["id"]

        # the champion, trained on data up to the 11th; then forecasts as of the 12th
        run = stack.run_deployment("retrain/nightly", "--params", json.dumps(FAST_RETRAIN), timeout=400)
        assert run["state_type"] == "COMPLETED", run["state"]["message"] + stack.procs.log("serve")[-5000:]
        first = {r["id"] for r in _runs(stack, nightly["id"])}
        s3 = boto3.client("s3", endpoint_url=stack.env["AWS_ENDPOINT_URL"])
        s3.put_object(Bucket=stack.bucket, Key="in/obs.csv", Body=_degraded(sample_raw).write_csv().encode())
        run = stack.run_deployment("score/daily", "--param", "params={\"as_of\": \"2026-09-12\"}", timeout=300)
        assert run["state_type"] == "COMPLETED", run["state"]["message"] + stack.procs.log("serve")[-5000:]

        # the actuals of the 13th arrive and the model loses to seasonal naive on them: the monitor fires
        monitor = {"params": {"as_of": "2026-09-13",
                              "drift": {"origins": 1, "min_origins": 1, "min_points": 6, "vs_seasonal_naive": 0.1}}}
        run = stack.run_deployment("monitor/accuracy", "--params", json.dumps(monitor), timeout=300)
        assert run["state_type"] == "COMPLETED", run["state"]["message"] + stack.procs.log("serve")[-5000:]
        runs = stack.keys("monitoring/runs/model=lstm/")
        assert runs == ["monitoring/runs/model=lstm/date=2026-09-13/run.parquet"]
        row = pl.read_parquet(io.BytesIO(stack.read(runs[0]))).row(0, named=True)
        assert row["drift"] is True and row["drift_snaive_mase"] == 0.0, row["drift_reason"]

        # nobody asks for a retrain: the automation starts one, on the monitor's store and data
        def triggered() -> list[dict]:
            return [r for r in _runs(stack, nightly["id"]) if r["id"] not in first and r["parameters"]]

        started = wait_for(triggered, 120, "the drift trigger to start a retrain run")
        assert len(started) == 1
        params = started[0]["parameters"]
        assert params == {"store": stack.store, "params": {"model_name": "lstm", "data": stack.data}}

        def drift_events() -> list[dict]:
            # the server acts on an event before it stores it: wait for the stored copy to be readable
            return httpx.post(f"{stack.api_url}/events/filter", json={"filter": {"event": {"name": [DRIFT_EVENT]}},
                                                                      "limit": 50}, timeout=10).json()["events"]

        events = wait_for(drift_events, 60, "the drift event to be stored")
        assert [e["resource"]["prefect.resource.id"] for e in events] == ["nightcast.model.lstm"]

        def done() -> dict | None:
            r = next(r for r in _runs(stack, nightly["id"]) if r["id"] == started[0]["id"])
            return r if r["state_type"] in FINISHED else None

        finished = wait_for(done, 600, "the triggered retrain to finish", interval=3)
        assert finished["state_type"] == "COMPLETED", stack.procs.log("serve")[-5000:]
        versions = [k for k in stack.keys("models/lstm/versions/") if k.endswith("/manifest.json")]
        assert len(versions) == 2  # the first champion and the retrain the drift started
    finally:
        stack.procs.stop()
