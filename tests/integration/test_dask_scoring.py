"""Sharded scoring on a real Dask cluster: a scheduler and two workers started here as processes.

The forecasts equal the single-process run's, and a worker killed (SIGKILL) mid-run only moves
its shard to the other worker: the run completes and the partition is whole.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys
import threading

import polars as pl
import pytest

from nightcast.flows.runtime import task_runner
from nightcast.flows.retrain import retrain_flow
from nightcast.flows.score import score_flow
from nightcast.schemas.params import ScoreParams, ServeConfig, Settings, TrainConfig
from nightcast.tasks.serving.score import read_forecasts
from nightcast.tasks.ops.storage import open_store
from tests.conftest import _free_port, fast_params
from tests.integration.conftest import BIN, REPO, Processes, wait_for

sys.path.insert(0, str(REPO / "bench"))
from panel import make_panel  # noqa: E402
from nightcast.tasks.serving.sharded import STAGING

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

N_SERIES = 2000


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prefect_harness):
    root = tmp_path_factory.mktemp("dask")
    data = root / "panel.parquet"
    make_panel(N_SERIES, 24 * 30, seed=7).sort("series_id", "timestamp").write_parquet(data, row_group_size=20_000)
    store = str(root / "s")
    # no classical candidate on 2,000 series (minutes of Theta fits); sharded = single with Theta is
    # tests/flows/test_sharded_score.py's subject
    retrain_flow(fast_params(str(data), train=TrainConfig(max_steps=60, batch_size=64, patience=2, early_stopping=True),
                             serve=ServeConfig(seeds=1, classical="none")), store=store)
    single = score_flow(ScoreParams(data=str(data)), store=store)
    return str(data), store, single


@pytest.fixture()
def cluster(tmp_path, prefect_harness):
    """``dask scheduler`` and two ``dask worker --nthreads 1 --no-nanny`` processes (a killed worker stays dead)."""
    from distributed import Client
    from prefect.settings import PREFECT_API_URL

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": PREFECT_API_URL.value(),
           "NIGHTCAST_PROGRESS": "false"}
    procs = Processes()
    try:
        procs.start("scheduler", [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                  "--no-dashboard"], env, tmp_path)
        workers = [procs.start(f"worker-{i}", [str(BIN / "dask"), "worker", address, "--nthreads", "1",
                                               "--no-nanny", "--no-dashboard", "--name", f"w{i}"], env, tmp_path)
                   for i in range(2)]

        def two_workers() -> bool:
            try:
                with Client(address, timeout=5) as client:
                    return len(client.scheduler_info()["workers"]) == 2
            except OSError:
                return False

        wait_for(two_workers, 90, "two Dask workers")
        yield address, workers, procs
    finally:
        procs.stop()


def _task_names(flow_run_id) -> list[str]:  # noqa: ANN001 - a UUID
    """The task runs of one flow run, as the Prefect API recorded them."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return [r.name for r in runs]


def _partition(store: str, as_of) -> pl.DataFrame:
    return read_forecasts(open_store(store), "lstm", as_of).sort("series_id", "horizon")


def test_sharded_on_dask_equals_single_process(trained, cluster, monkeypatch):
    """The flow as a deployment runs it: the worker's environment names the scheduler, nothing else."""
    data, store, single = trained
    address, _, _ = cluster
    expected = _partition(store, single["as_of"])
    monkeypatch.setenv("NIGHTCAST_DASK_ADDRESS", address)
    state = score_flow(ScoreParams(data=data, shards=4), store=store, return_state=True)
    out = state.result()
    assert _partition(store, single["as_of"]).equals(expected)
    # one task per worker thread (2), each reading its own 2 shards and forecasting them in one pass: no
    # input staged through the store
    names = _task_names(state.state_details.flow_run_id)
    tasks = sorted(n.rsplit("/", 1)[-1].removesuffix(".parquet").split("-") for n in names
                   if n.startswith("read-and-score-shards-"))
    assert len(tasks) == 2 and tasks[0][0] == "00000" and tasks[-1][1] == "00003", names
    assert int(tasks[1][0]) == int(tasks[0][1]) + 1, names  # two runs of consecutive shards, each shard once
    assert not any(n.startswith(("read-shard-", "score-shard-")) or "/input/" in n for n in names), names
    assert (out["series"], out["skipped"]) == (single["series"], single["skipped"])
    assert out["series"] > N_SERIES // 2
    assert open_store(store).list(STAGING) == []


def test_unsharded_backfill_under_dask_runs_its_dates_in_the_flow_process(s3_env, sample_raw, cluster, monkeypatch):
    """With the runner on Dask, a backfill without shards keeps its dates on a thread pool: their open
    S3 store (a boto3 client) does not pickle, and the whole frame would travel once per date."""
    import boto3

    from nightcast.flows.backfill import backfill_flow

    address, _, _ = cluster
    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).put_object(
        Bucket=s3_env, Key="raw/obs.csv", Body=sample_raw.write_csv().encode())
    data, store = f"s3://{s3_env}/raw/obs.csv", f"s3://{s3_env}/nightcast"
    retrain_flow(fast_params(data), store=store)
    end = sample_raw.select(pl.col("timestamp").str.to_datetime().max()).item().date()
    monkeypatch.setenv("NIGHTCAST_DASK_ADDRESS", address)
    out = backfill_flow(start=end - dt.timedelta(days=1), end=end, data=data, store=store, allow_look_ahead=True)
    assert (out["done"], out["failed"]) == (2, 0)
    assert len(open_store(store).list("forecasts/model=lstm/")) == 2


@pytest.mark.parametrize("task_series", ["0", "20000"])
def test_a_worker_killed_mid_run_still_ends_with_a_whole_partition(trained, cluster, monkeypatch, task_series):
    """One task per shard (``0``: 8 tasks on 2 workers, w0 killed in the middle of a shard once another is
    staged) and the default grouping (2 tasks of 4 shards, w0 killed in the middle of its task): the dead
    worker's task moves to the other worker and the partition is whole."""
    import time

    monkeypatch.setenv("NIGHTCAST_SHARD_TASK_SERIES", task_series)
    data, store, single = trained
    address, workers, procs = cluster
    expected = _partition(store, single["as_of"])
    st = open_store(store)
    st.delete(f"forecasts/model=lstm/as_of={single['as_of']}/forecasts.parquet")
    staged_at_kill: list[int] = []
    n_tasks = 8 if task_series == "0" else 2

    def parts() -> list[str]:
        return [k for k in st.list(STAGING) if "/parts/" in k]

    def kill_mid_task() -> None:
        from distributed import Client

        with Client(address, timeout=10) as client:
            w0 = next(a for a, w in client.scheduler_info()["workers"].items() if w["name"] == "w0")
            if n_tasks == 8:  # a shard's forecasts are staged and w0 is in the middle of scoring another one
                wait_for(lambda: parts() and client.processing(workers=[w0])[w0], 300,
                         "w0 scoring a shard after one is staged", interval=0.02)
            else:  # w0 has started its task (Prefect's own start alone takes longer than the pause)
                wait_for(lambda: client.processing(workers=[w0])[w0], 300, "w0 scoring its task", interval=0.02)
                time.sleep(0.2)
            os.kill(workers[0].pid, signal.SIGKILL)
        staged_at_kill.append(len(parts()))

    killer = threading.Thread(target=kill_mid_task, daemon=True)
    killer.start()
    flow = score_flow.with_options(task_runner=task_runner(Settings(dask_address=address)))
    out = flow(ScoreParams(data=data, shards=8), store=store)
    killer.join(timeout=5)
    assert staged_at_kill and staged_at_kill[0] < n_tasks and workers[0].wait(timeout=10) == -signal.SIGKILL
    assert "Remove worker" in procs.log("scheduler")
    assert _partition(store, single["as_of"]).equals(expected)
    assert out["series"] == single["series"]
    assert st.list(STAGING) == []


def test_sharded_backfill_on_dask_equals_single_process(trained, cluster, monkeypatch):
    from nightcast.flows.backfill import backfill_flow

    data, store, single = trained
    address, _, _ = cluster
    end = single["as_of"]
    start = end - dt.timedelta(days=2)
    backfill_flow(start=start, end=end, overwrite=True, data=data, store=store, allow_look_ahead=True)
    expected = {d: _partition(store, d) for d in (start, start + dt.timedelta(days=1), end)}
    monkeypatch.setenv("NIGHTCAST_DASK_ADDRESS", address)
    out = backfill_flow(start=start, end=end, overwrite=True, data=data, shards=4, store=store,
                        allow_look_ahead=True)
    assert (out["done"], out["failed"]) == (3, 0)
    for day, frame in expected.items():
        assert _partition(store, day).equals(frame), day
    assert open_store(store).list(STAGING) == []


def test_sharded_retrain_cleans_on_the_workers_and_its_bundle_scores_every_series(trained, cluster, monkeypatch,
                                                                                  tmp_path):
    """``retrain --shards 4 --sample 0.25`` on the layout `nightcast partition` wrote, with the scheduler named
    in the environment: every shard is validated and cleaned by a worker process (never the flow's), the
    network trains on a quarter of every shard's series, the bundle counts the whole catalogue, and scoring
    with it forecasts every series the single-process bundle forecasts."""
    import socket

    from nightcast.tasks.ops.registry import load_champion
    from nightcast.tasks.serving.shard import write_shard_layout

    data, _, single = trained
    address, workers, _ = cluster
    layout = str(tmp_path / "layout")
    write_shard_layout(data, layout, 4)
    store = str(tmp_path / "s")
    monkeypatch.setenv("NIGHTCAST_DASK_ADDRESS", address)
    state = retrain_flow(fast_params(layout, shards=4, sample=0.25,
                                     train=TrainConfig(max_steps=60, batch_size=64, patience=2, early_stopping=True),
                                     serve=ServeConfig(seeds=1, classical="none")), store=store, return_state=True)
    state.result()
    names = _task_names(state.state_details.flow_run_id)
    assert len([n for n in names if n.startswith("clean-shards-")]) == 4, names
    assert not any(n.startswith(("ingest", "validate")) for n in names), names  # the flow read no row itself
    bundle = load_champion(open_store(store), "lstm")
    data_section = bundle.manifest["data"]
    assert data_section["series"] == N_SERIES and N_SERIES * 0.2 < data_section["sample"]["series"] < N_SERIES * 0.3
    host = socket.gethostname()
    assert set(data_section["cleaned_by"]) <= {f"{host}/{w.pid}" for w in workers}, data_section["cleaned_by"]
    assert f"{host}/{os.getpid()}" not in data_section["cleaned_by"]
    assert len(bundle.preprocessing["features"]["target_stats"]) == data_section["sample"]["series"]
    scored = score_flow(ScoreParams(data=layout, shards=4), store=store)
    assert (scored["series"], scored["skipped"]) == (single["series"], single["skipped"])
