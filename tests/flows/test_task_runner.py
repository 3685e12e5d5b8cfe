"""The task runner a flow gets from the settings: thread pool by default, Dask when asked."""

from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from nightcast.flows.runtime import task_runner
from nightcast.flows.score import score_flow
from nightcast.schemas.params import Settings


def test_thread_pool_by_default_and_dask_by_setting(monkeypatch):
    monkeypatch.delenv("NIGHTCAST_DASK_ADDRESS", raising=False)
    assert isinstance(task_runner(Settings()), ThreadPoolTaskRunner)
    remote = task_runner(Settings(dask_address="tcp://10.0.0.5:8786"))
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://10.0.0.5:8786"
    local = task_runner(Settings(dask_address="local", dask_local_workers=3))
    assert isinstance(local, DaskTaskRunner) and local.address is None
    assert local.cluster_kwargs["n_workers"] == 3
    monkeypatch.setenv("NIGHTCAST_DASK_ADDRESS", "tcp://127.0.0.1:9")
    flow = score_flow.with_options(task_runner=task_runner(Settings()))
    assert isinstance(flow.task_runner, DaskTaskRunner) and flow.fn is score_flow.fn
    assert isinstance(score_flow.task_runner, ThreadPoolTaskRunner)  # the module's flow is unchanged


def test_flows_pick_their_runner_when_a_run_starts_not_at_import(monkeypatch):
    """A deployment's runs reach Dask by setting NIGHTCAST_DASK_ADDRESS on the worker: Prefect starts
    every run with ``task_runner.duplicate()``, which reads the settings then."""
    from nightcast.flows.backfill import backfill_flow

    monkeypatch.delenv("NIGHTCAST_DASK_ADDRESS", raising=False)
    for flow in (score_flow, backfill_flow):
        assert type(flow.task_runner.duplicate()) is ThreadPoolTaskRunner
    monkeypatch.setenv("NIGHTCAST_DASK_ADDRESS", "tcp://10.0.0.7:8786")
    for flow in (score_flow, backfill_flow):
        runner = flow.task_runner.duplicate()
        assert isinstance(runner, DaskTaskRunner) and runner.address == "tcp://10.0.0.7:8786"
