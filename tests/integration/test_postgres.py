"""The Prefect server on PostgreSQL instead of SQLite (a private Debian PostgreSQL cluster)."""

from __future__ import annotations

import shutil
import subprocess

import httpx
import pytest

from tests.integration.conftest import BIN, REPO, start_stack

pytestmark = pytest.mark.slow


def test_prefect_server_on_postgres_runs_the_flows(tmp_path, moto_endpoint, sample_raw, postgres_url, aws_for_tests):
    stack = start_stack(tmp_path, moto_endpoint, sample_raw, db_url=postgres_url)
    try:
        run = subprocess.run([str(BIN / "nightcast"), "retrain", "--lookback", "24", "--horizon", "6",
                              "--hidden-size", "16", "--max-steps", "40", "--seeds", "1", "--classical", "theta"],
                             env=stack.env, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
        runs = httpx.post(f"{stack.api_url}/flow_runs/filter", json={}, timeout=10).json()
        assert [(r["flow_id"] is not None, r["state_type"]) for r in runs] == [(True, "COMPLETED")]
        assert stack.keys("models/lstm/versions/")  # the bundle went to S3
    finally:
        stack.procs.stop()
    # the run is in PostgreSQL, not in a SQLite file
    assert not list((tmp_path / "prefect-home").glob("*.db"))
    psql = shutil.which("psql")
    if psql:
        url = postgres_url.replace("postgresql+asyncpg://", "postgresql://")
        out = subprocess.run([psql, url, "-tAc", "select state_type from flow_run"], capture_output=True, text=True)
        assert out.stdout.split() == ["COMPLETED"], out.stderr
