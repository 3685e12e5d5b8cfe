"""statsforecast's classical candidates fit on several cores when a call holds enough work, with the same
forecasts (the default ``theta`` is vectorised and needs no pool: tests/models/test_theta.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from nightcast.models import classical
from nightcast.models.classical import classical_forecasts, fit_jobs


def _histories(n: int, length: int = 96, season: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(length)
    values = 100 + 10 * np.sin(2 * np.pi * t / season)[None, :] + rng.normal(0, 2, (n, length))
    values += rng.uniform(0, 0.1, (n, 1)) * t
    return values.ravel(), np.full(n, length)


@pytest.fixture()
def pools(monkeypatch):
    """The ``n_jobs`` of every StatsForecast the fits build."""
    import statsforecast

    seen: list[int] = []
    real = statsforecast.StatsForecast.__init__

    def init(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen.append(kwargs.get("n_jobs", 1))
        real(self, *args, **kwargs)

    monkeypatch.setattr(statsforecast.StatsForecast, "__init__", init)
    return seen


def test_fits_on_two_processes_give_the_same_forecasts_as_one(monkeypatch, pools):
    values, lengths = _histories(300)
    monkeypatch.setenv("NIGHTCAST_CLASSICAL_JOBS", "1")
    one = classical_forecasts(values, lengths, 12, 24, "optimized_theta")
    monkeypatch.setenv("NIGHTCAST_CLASSICAL_JOBS", "2")
    two = classical_forecasts(values, lengths, 12, 24, "optimized_theta")
    assert pools == [1, 2]
    assert np.isfinite(one).all()
    np.testing.assert_array_equal(two, one)


def test_automatic_count_is_one_below_a_few_seconds_of_work_and_the_cores_above():
    cores = classical.usable_cores()
    assert fit_jobs("optimized_theta", 40, 40 * 144, configured=0) == 1  # ~0.6 s of estimated work
    assert fit_jobs("optimized_theta", 10_000, 10_000 * 144, configured=0) == min(cores, 10_000)  # ~144 s
    assert fit_jobs("autoets", 200, 200 * 48, configured=0) == min(cores, 200)  # ~10 s: AutoETS is slow
    assert fit_jobs("optimized_theta", 10_000, 10_000 * 144, configured=1) == 1
    assert fit_jobs("optimized_theta", 3, 3 * 10, configured=8) == 3  # never more processes than histories


def test_a_daemonic_process_fits_in_itself(monkeypatch):
    import multiprocessing

    monkeypatch.setattr(multiprocessing.current_process(), "daemon", True, raising=False)
    assert fit_jobs("optimized_theta", 10_000, 10_000 * 144, configured=0) == 1
    assert fit_jobs("optimized_theta", 10_000, 10_000 * 144, configured=4) == 1


def test_a_dask_worker_fits_in_its_own_process():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        on_worker = client.submit(fit_jobs, "optimized_theta", 10_000, 10_000 * 144, 0).result()
    assert on_worker == 1
    assert fit_jobs("optimized_theta", 10_000, 10_000 * 144, configured=0) == min(classical.usable_cores(), 10_000)


def test_while_one_thread_fits_on_a_pool_another_fits_in_its_own_thread(monkeypatch, pools):
    values, lengths = _histories(20)
    monkeypatch.setenv("NIGHTCAST_CLASSICAL_JOBS", "2")
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with classical._pool_slot(2) as jobs:
            assert jobs == 2
            holding.set()
            release.wait(30)

    other = threading.Thread(target=hold)
    other.start()
    try:
        assert holding.wait(30)
        classical_forecasts(values, lengths, 12, 24, "optimized_theta")
    finally:
        release.set()
        other.join(30)
    classical_forecasts(values, lengths, 12, 24, "optimized_theta")  # the pool is free again
    assert pools == [1, 2]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_pool_workers_end_when_the_process_that_started_them_is_killed():
    """Before: a CLI killed mid-fit left its pool workers blocked for ever on a pipe nobody reads."""
    import psutil

    script = ("import numpy as np; from nightcast.models.classical import classical_forecasts; "
              "n, L = 20000, 144; v = (100 + np.random.default_rng(0).normal(0, 2, (n, L))).ravel(); "
              "classical_forecasts(v, np.full(n, L), 24, 24, 'optimized_theta')")
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "NIGHTCAST_CLASSICAL_JOBS": "2"})
    workers: list = []
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 120
        while len(parent.children()) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        workers = parent.children()
        assert len(workers) == 2, "the pool never started"
        proc.kill()
        proc.wait(10)
        _, alive = psutil.wait_procs(workers, timeout=20)
        assert alive == []
    finally:
        for p in [proc, *workers]:  # never leave one behind, whatever the test found
            try:
                p.kill()
            except (psutil.NoSuchProcess, ProcessLookupError):
                pass
