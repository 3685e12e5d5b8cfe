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
    from nightcast.flows.retrain import retrain_flow

    monkeypatch.delenv("NIGHTCAST_DASK_ADDRESS", raising=False)
    for flow in (score_flow, backfill_flow, retrain_flow):
        assert type(flow.task_runner.duplicate()) is ThreadPoolTaskRunner
    monkeypatch.setenv("NIGHTCAST_DASK_ADDRESS", "tcp://10.0.0.7:8786")
    for flow in (score_flow, backfill_flow, retrain_flow):
        runner = flow.task_runner.duplicate()
        assert isinstance(runner, DaskTaskRunner) and runner.address == "tcp://10.0.0.7:8786"


_POOLS = """
import nightcast.flows.cli  # noqa: F401 - the main module imports nightcast, as the `nightcast` command's does
import polars as pl
from distributed import Client
from nightcast.flows.runtime import local_cluster

def size():
    import polars as pl
    return pl.thread_pool_size()

if __name__ == "__main__":
    pl.DataFrame({"a": [1, 2]}).sum()  # this process's own pool in use
    with local_cluster(n_workers=2) as cluster, Client(cluster) as client:
        print(sorted(set(client.run(size).values())), pl.thread_pool_size())
"""


def test_local_cluster_workers_split_the_cores_between_their_polars_pools(tmp_path, monkeypatch):
    """``NIGHTCAST_DASK_ADDRESS=local``: each worker process's polars pool is its share of the cores (as Dask
    gives OpenMP/MKL one thread a worker), not every core in every worker, even when the main module imports
    nightcast and polars (as the `nightcast` command's does) before the workers start; a value the user set
    is kept. Real worker processes, started from a script."""
    import os
    import subprocess
    import sys

    from nightcast.models.classical import usable_cores

    script = tmp_path / "pools.py"
    script.write_text(_POOLS)
    env = {k: v for k, v in os.environ.items() if k != "POLARS_MAX_THREADS"}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == [f"[{max(1, usable_cores() // 2)}]", str(usable_cores())], out.stdout
    out = subprocess.run([sys.executable, str(script)], env={**env, "POLARS_MAX_THREADS": "1"}, capture_output=True,
                         text=True, timeout=300)
    assert out.stdout.split()[-2:] == ["[1]", "1"], out.stdout + out.stderr[-2000:]
    local = task_runner(Settings(dask_address="local", dask_local_workers=2))
    assert local.cluster_kwargs == {"n_workers": 2}


def test_the_thread_pool_runs_one_mapped_task_per_core_at_a_time(monkeypatch, prefect_harness):
    """Prefect's own thread pool has no limit: 3 x cores mapped shards would all be read at once in the
    flow's process. The settings' pool runs as many as there are cores."""
    import threading
    import time

    from prefect import flow, task

    from nightcast.flows.runtime import SettingsTaskRunner
    from nightcast.models.classical import usable_cores

    monkeypatch.delenv("NIGHTCAST_DASK_ADDRESS", raising=False)
    lock, running, most = threading.Lock(), [0], [0]

    @task
    def shard(k: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return k

    @flow(task_runner=SettingsTaskRunner())
    def many() -> list[int]:
        return [f.result() for f in shard.map(range(3 * usable_cores()))]

    assert many() == list(range(3 * usable_cores()))
    assert most[0] == usable_cores()
