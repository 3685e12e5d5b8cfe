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


def _polars_threads() -> int:
    import polars as pl

    return pl.thread_pool_size()


def test_local_cluster_workers_split_the_cores_between_their_polars_pools(monkeypatch):
    """``NIGHTCAST_DASK_ADDRESS=local``: each worker process's polars pool is its share of the cores (as Dask
    gives OpenMP/MKL one thread a worker), not every core in every worker; a value the user set is kept."""
    from distributed import Client, LocalCluster

    from nightcast.flows.runtime import local_cluster_kwargs
    from nightcast.models.classical import usable_cores

    monkeypatch.delenv("POLARS_MAX_THREADS", raising=False)
    assert local_cluster_kwargs(2)["env"] == {"POLARS_MAX_THREADS": str(max(1, usable_cores() // 2))}
    assert local_cluster_kwargs(1)["env"] == {"POLARS_MAX_THREADS": str(usable_cores())}
    assert local_cluster_kwargs(64)["env"] == {"POLARS_MAX_THREADS": "1"}
    with LocalCluster(**local_cluster_kwargs(2)) as cluster, Client(cluster) as client:
        assert set(client.run(_polars_threads).values()) == {max(1, usable_cores() // 2)}
    monkeypatch.setenv("POLARS_MAX_THREADS", "3")
    assert "env" not in local_cluster_kwargs(2)
    assert DaskTaskRunner(cluster_kwargs=local_cluster_kwargs(2)).cluster_kwargs["n_workers"] == 2
