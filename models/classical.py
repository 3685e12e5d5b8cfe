"""Classical candidates fitted at every origin: the Theta family and ETS.

One call fits one model per history (a window's input, or a series' recent tail at
scoring) and returns its (n, H) forecasts. Histories are passed stacked (values + lengths),
as everywhere else.

Default ``theta`` (the standard Theta method: classical seasonal decomposition, SES with
drift) is fitted on every history at once in numpy (``nightcast.models.theta``: statsforecast's
``Theta`` step for step, about 0.05 ms per history of 144 steps against statsforecast's 3-4 ms,
which loops over series in Python). The others are statsforecast's: ``autotheta`` 0.2 ms per
step, ``autoets`` the strongest on some panels but 60-220 ms per history (10,000 series:
10-40 min), so both are chosen only while they fit the budget (``choose_classical``).

statsforecast's fits can be most of a run's time at catalogue scale, so a call with enough work
fits on several cores with statsforecast's own process pool (``n_jobs``): one process per usable core in an ordinary
process, one on a Dask worker (the worker process already is the unit of parallelism), and
one for every other thread of the process while one thread's pool runs. ``classical_jobs``
(``NIGHTCAST_CLASSICAL_JOBS``) overrides the count. On Linux the pool's workers die with the process
that started them (``PR_SET_PDEATHSIG``), so a killed run leaves none behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import warnings
from typing import Iterator

import numpy as np

CLASSICAL = ("theta", "optimized_theta", "autotheta", "autoets")
MIN_HISTORY = 6  # statsforecast refuses "tiny datasets" (a whole call fails); shorter histories get NaN


# statsforecast's fitting cost per history step on one core (docs/benchmarks.md): AutoETS about 1 ms,
# AutoTheta 0.2 ms, Theta 0.03 ms (the vectorised Theta that serves: about 0.0004 ms, never pooled).
# ``auto`` takes the strong pair while it fits the budget.
_MS_PER_STEP = {"autoets": 1.0, "autotheta": 0.2, "optimized_theta": 0.1, "theta": 0.03}


_PARALLEL_MIN_S = 2.0  # estimated seconds of fitting before a call is worth a process pool (~0.2 s to start)
_POOL = threading.Lock()  # one thread's pool at a time: threads that score shards together never multiply pools
_PR_SET_PDEATHSIG = 1
_pool_owner = 0  # while a pool starts: the pid of this process; the processes it forks are pool workers


def _pool_worker_dies_with_parent() -> None:
    """At fork, in the child: a pool worker (forked while ``_pool_owner`` is set) gets SIGKILL when the
    thread that started it ends (Linux ``PR_SET_PDEATHSIG``). Without it, a CLI killed mid-fit (SIGKILL,
    or a timeout) left its workers blocked for ever on a pipe nobody reads."""
    if not _pool_owner:
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != _pool_owner:  # the parent died before prctl took effect
        os._exit(1)


if sys.platform.startswith("linux"):
    os.register_at_fork(after_in_child=_pool_worker_dies_with_parent)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity mask)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def on_dask_worker() -> bool:
    """Whether this runs inside a Dask worker (whose process is already the unit of parallelism)."""
    try:
        from distributed import get_worker
    except ImportError:
        return False
    try:
        get_worker()
    except ValueError:
        return False
    return True


def fit_jobs(model: str, histories: int, steps: int, configured: int | None = None) -> int:
    """Processes for fitting ``histories`` histories of ``steps`` values in all: 1 when the estimated work
    (``_MS_PER_STEP``) is under ``_PARALLEL_MIN_S`` seconds or on a Dask worker, else ``configured``
    (``Settings.classical_jobs``; 0: the usable cores), never more than the histories; always 1 in a daemonic
    process (multiprocessing forbids it children)."""
    if configured is None:
        from nightcast.schemas.params import Settings

        configured = Settings().classical_jobs
    if configured == 1 or histories < 2 or multiprocessing.current_process().daemon:  # a daemon has no children
        return 1
    if configured == 0 and (on_dask_worker() or steps * _MS_PER_STEP.get(model, 1.0) / 1000 < _PARALLEL_MIN_S):
        return 1
    return max(1, min(configured or usable_cores(), histories))


@contextlib.contextmanager
def _pool_slot(jobs: int) -> Iterator[int]:
    """``jobs`` while no other thread of this process runs a pool, else 1 (fit in this thread)."""
    global _pool_owner
    if jobs <= 1 or not _POOL.acquire(blocking=False):
        yield 1
        return
    _pool_owner = os.getpid()
    try:
        yield jobs
    finally:
        _pool_owner = 0
        _POOL.release()


def choose_classical(choice: str, fits: int, tail: int, budget_s: float) -> list[str]:
    """The classical candidates for ``choice``: ``auto`` is AutoETS and AutoTheta when fitting them on
    ``fits`` histories of ``tail`` steps is estimated under ``budget_s`` seconds, else Theta (the
    10,000-series catalogue); ``none`` is none; any other name is that model."""
    if choice == "none":
        return []
    if choice != "auto":
        return [choice]
    strong = fits * tail * (_MS_PER_STEP["autoets"] + _MS_PER_STEP["autotheta"]) / 1000
    return ["autoets", "autotheta"] if strong <= budget_s else ["theta"]


def tail_length(season: int, horizon: int) -> int:
    """Steps of recent history each classical fit reads: enough seasons for the decomposition and
    the trend, bounded so the cost per series stays flat however long the history is."""
    return int(min(max(6 * season, 4 * horizon, 48), 400))


def _model(name: str, season: int):  # noqa: ANN202 - a statsforecast model
    from statsforecast.models import AutoETS, AutoTheta, OptimizedTheta, Theta

    makers = {"theta": Theta, "optimized_theta": OptimizedTheta, "autotheta": AutoTheta, "autoets": AutoETS}
    if name not in makers:
        raise ValueError(f"classical model must be one of {CLASSICAL}, not {name!r}")
    return makers[name](season_length=max(1, int(season)))


def classical_forecasts(values: np.ndarray, lengths: np.ndarray, horizon: int, season: int,
                        model: str = "theta") -> np.ndarray:
    """(n, H) forecasts, one fitted model per history; NaN rows where a history is too short or flat
    enough to break the fit. ``values`` holds the n histories back to back, ``lengths`` their sizes."""
    if model != "theta":
        return statsforecast_forecasts(values, lengths, horizon, season, model)
    from nightcast.models.theta import theta_forecasts

    lengths = np.asarray(lengths, dtype=np.int64)
    out = theta_forecasts(values, lengths, horizon, season)  # every history at once, in this thread
    out[lengths < MIN_HISTORY] = np.nan  # the same minimum as statsforecast's models here
    return out


def statsforecast_forecasts(values: np.ndarray, lengths: np.ndarray, horizon: int, season: int,
                            model: str) -> np.ndarray:
    """``classical_forecasts`` by statsforecast itself, one history at a time (``theta`` too: the reference
    the vectorised Theta is benchmarked and tested against), on its process pool when the work is large."""
    import pandas as pd
    from statsforecast import StatsForecast

    lengths = np.asarray(lengths, dtype=np.int64)
    out = np.full((len(lengths), horizon), np.nan)
    ok = lengths >= MIN_HISTORY
    if not ok.any():
        return out
    keep = np.repeat(ok, lengths)
    ids = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)[keep]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    pos = (np.arange(len(values)) - np.repeat(starts, lengths))[keep]
    frame = pd.DataFrame({"unique_id": ids, "ds": pos, "y": np.asarray(values, dtype=np.float64)[keep]})
    os.environ.setdefault("NIXTLA_ID_AS_COL", "1")
    logging.getLogger("statsforecast").setLevel(logging.ERROR)
    with warnings.catch_warnings(), np.errstate(all="ignore"), \
            _pool_slot(fit_jobs(model, int(ok.sum()), len(frame))) as jobs:
        warnings.simplefilter("ignore")
        sf = StatsForecast(models=[_model(model, season)], freq=1, n_jobs=jobs)
        got = sf.forecast(df=frame, h=horizon)
    col = [c for c in got.columns if c not in ("unique_id", "ds")][0]
    got = got.sort_values(["unique_id", "ds"])
    uid = got["unique_id"].to_numpy().reshape(-1, horizon)[:, 0].astype(np.int64)
    out[uid] = got[col].to_numpy(dtype=np.float64).reshape(-1, horizon)
    out[~np.isfinite(out).all(axis=1)] = np.nan
    return out
