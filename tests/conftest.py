"""Shared fixtures: small data, fast configs, a Prefect harness and a real S3 endpoint."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import torch

from nightcast.schemas.params import ModelConfig, RetrainParams, ServeConfig, TrainConfig, WindowConfig
from nightcast.tasks.data.sample import make_sample

torch.set_num_threads(1)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

_PORT_BASE, _PORT_END = 10000, 32768  # below Linux's ephemeral range (32768-60999), which bind(0) and clients use
_worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
_PORT_BLOCK = (_PORT_END - _PORT_BASE) // max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
_ports = itertools.count(_PORT_BASE + _PORT_BLOCK * _worker)


def _free_port() -> int:
    """A port for a server a test starts, from this test process's own block (xdist worker gwN: the N-th of
    equal blocks of 10000-32767), never handed out twice in the process. Servers started as commands
    (moto_server, ``prefect server start``, s3rver, dask) bind the port they are given some time after the
    pick; a port picked by ``bind(0)`` was then sometimes taken in between by another worker's server, whose
    answer the test took for its own. Disjoint blocks make that impossible. (The CLI's own server gets a
    bound socket.)"""
    for port in _ports:
        if port >= _PORT_BASE + _PORT_BLOCK * (_worker + 1):
            break
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use (a service of this machine): the next one
            return port
    raise RuntimeError(f"no free port left in this test process's block (worker gw{_worker})")


@pytest.fixture(scope="session")
def sample_raw() -> pl.DataFrame:
    """A small version of the bundled sample: 3 series × 14 days hourly, with its defects."""
    return make_sample(n_series=3, days=14, seed=3)


@pytest.fixture()
def sample_csv(tmp_path: Path, sample_raw: pl.DataFrame) -> str:
    path = tmp_path / "obs.csv"
    sample_raw.write_csv(path)
    return str(path)


def fast_params(data: str, **overrides: object) -> RetrainParams:
    """Settings that train in about a second on the small sample and still beat seasonal naive."""
    base = dict(
        data=data,
        window=WindowConfig(lookback=24, horizon=6),
        model=ModelConfig(hidden_size=32, num_layers=1, dropout=0.0),
        train=TrainConfig(max_epochs=15, patience=4, batch_size=64, early_stopping=True),  # ES: a short run
        serve=ServeConfig(seeds=1, classical="theta"),  # 3 seeds and AutoETS cost time; the bench runs the defaults
    )
    base.update(overrides)
    return RetrainParams(**base)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for the whole session (flows need an API to report to). Like the CLI's
    temporary server (``nightcast.flows.embedded``), it serves flow runs that send no heartbeats."""
    from prefect.testing.utilities import prefect_test_harness

    from nightcast.flows.embedded import without_heartbeats

    with prefect_test_harness(server_startup_timeout=120), without_heartbeats():
        yield


def _wait_http(url: str, timeout: float = 30.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up in {timeout}s")


@pytest.fixture(scope="session")
def moto_endpoint():
    """A real S3 protocol endpoint: ``moto_server`` as a separate process over HTTP."""
    port = _free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url + "/moto-api/")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture()
def s3_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch):
    """AWS variables pointing at the moto endpoint, and a fresh bucket."""
    import uuid

    import boto3

    for k, v in {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing",
                 "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    bucket = f"nightcast-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    return bucket


def fork_child(target):
    """The body of a forked child process: run ``target``, flush its queues, then leave at once.

    A child forked from a process that has run Prefect flows exits with code 1 and no error while the
    interpreter shuts down (Prefect's at-fork hooks reset its threads); leaving with ``os._exit`` skips
    that teardown. An exception in ``target`` still ends the child with a non-zero code.
    """
    import multiprocessing.queues

    def body(*args):
        target(*args)
        for arg in args:
            if isinstance(arg, multiprocessing.queues.Queue):
                arg.close()
                arg.join_thread()
        os._exit(0)

    return body
