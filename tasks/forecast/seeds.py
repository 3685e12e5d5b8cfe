"""The seeds of a retrain trained side by side, one process each, on every usable core.

A retrain trains each network seed twice (the backtest model, then the refit that is served), one
after another, on one core: torch's intra-op threads do not speed up an LSTM this small (the
``NIGHTCAST_TORCH_THREADS`` default is 1), so the other cores sat idle for most of a retrain. Here
each seed trains in its own worker process (``spawn``: no inherited locks or threads), by the same
``train_model`` / ``refit_model`` call with the same seed and thread count, so the weights are
identical to training them one after another in the flow's process.

The prepared windows are not copied into each worker: their arrays are written once to ``.npy``
files in a temporary folder and every worker maps them (copy-on-write), so the page cache holds one
copy whatever the worker count (the files need the windows' size on the temporary folder's disk: about
1.5 GB at 10,000 x 2,000). The workers start once per call (a few seconds: torch and
Lightning are imported) and are gone when it returns.

``NIGHTCAST_TRAIN_WORKERS`` sets the worker count: ``0`` (default) trains every seed at once when the
machine has more than one usable core and each seed's training is long enough to pay for starting
the workers (``MIN_WORK``), up to two per core (3 seeds on 2 cores: all 3 share the cores, so no
core idles while the last seed trains alone); ``1`` trains them in the flow's process, as before;
``N`` uses up to N workers whatever the size. GPU and multi-device (DDP) training always stay in
the flow's process.
"""

from __future__ import annotations

import logging
import pickle
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from nightcast.schemas.params import ModelConfig, Settings, TrainConfig
from nightcast.models.classical import usable_cores
from nightcast.tasks.data.window import WindowIndex
from nightcast.tasks.forecast.train import TrainResult, planned_steps, refit_model, train_model


class SeedWorkerError(RuntimeError):
    """A worker process training seeds side by side died (the seeds' own errors pass through unchanged)."""


_ARRAYS = ("past", "future", "target", "observed", "series", "timestamps", "offsets", "truth")
_INDEX: WindowIndex | None = None  # in a worker: the windows it trains on


MIN_WORK = 3_000_000
"""Window-steps (optimiser steps x batch size x lookback) a seed's training must read before the default
trains the seeds side by side: about 10 s of one core here (the 10,000-series panel's 2,000 steps x 128 x 48
took 44 s). Starting the workers (torch and Lightning imported in each) costs a few seconds of every core,
more than it saves below this."""


def seed_workers(seeds: int, train_cfg: TrainConfig, accelerator: str = "auto", work: int | None = None) -> int:
    """Worker processes for ``seeds`` trainings of ``work`` window-steps each: 1 means in the flow's process
    (see the module doc)."""
    if seeds <= 1 or train_cfg.devices != 1 or accelerator not in ("auto", "cpu") or torch.cuda.is_available():
        return 1
    wanted = Settings().train_workers
    if wanted == 0:
        cores = usable_cores()
        wanted = 1 if cores < 2 or (work is not None and work < MIN_WORK) else 2 * cores
    return max(1, min(wanted, seeds))


def _work(index: WindowIndex, cfg: TrainConfig, steps: int | None = None) -> int:
    """Window-steps one training reads: its step budget x batch size x lookback."""
    return int(planned_steps(index, cfg) if steps is None else steps) * cfg.batch_size * index.lookback


def _dump(index: WindowIndex, folder: Path) -> None:
    """``index`` as .npy files (one per array and split) and a pickle of the rest."""
    for name in _ARRAYS:
        np.save(folder / f"{name}.npy", getattr(index, name), allow_pickle=False)
    for split, starts in index.splits.items():
        np.save(folder / f"split-{split}.npy", starts, allow_pickle=False)
    rest = {f.name: getattr(index, f.name) for f in fields(index) if f.name not in (*_ARRAYS, "splits")}
    (folder / "index.pkl").write_bytes(pickle.dumps({**rest, "splits": list(index.splits)}))


def _load(folder: Path) -> WindowIndex:
    rest = pickle.loads((folder / "index.pkl").read_bytes())
    splits = {s: np.load(folder / f"split-{s}.npy", mmap_mode="c") for s in rest.pop("splits")}
    arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="c") for name in _ARRAYS}
    return WindowIndex(**arrays, **rest, splits=splits)


def _start_worker(folder: str, threads: int) -> None:
    global _INDEX
    torch.set_num_threads(threads)
    _INDEX = _load(Path(folder))


def _train_job(model_cfg: ModelConfig, cfg: TrainConfig, init_state: dict | None, accelerator: str) -> TrainResult:
    return train_model(_INDEX, model_cfg, cfg, progress=False, accelerator=accelerator, init_state=init_state)


def _refit_job(network_args: dict, cfg: TrainConfig, steps: int, init_state: dict | None,
               accelerator: str) -> TrainResult:
    return refit_model(_INDEX, network_args, cfg, steps, progress=False, accelerator=accelerator,
                       init_state=init_state)


def _in_workers(index: WindowIndex, workers: int, job, calls: list[tuple]) -> list[TrainResult]:  # noqa: ANN001
    import multiprocessing

    folder = Path(tempfile.mkdtemp(prefix="nightcast-seeds-"))
    try:
        _dump(index, folder)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_start_worker, initargs=(str(folder), torch.get_num_threads())) as pool:
            futures = [pool.submit(job, *args) for args in calls]
            return [f.result() for f in futures]
    except BrokenProcessPool as exc:  # a worker was killed (out of memory, a signal): say what to do about it
        raise SeedWorkerError(
            f"a worker process training {len(calls)} network seed(s) side by side ({workers} at once) died before "
            f"finishing ({exc}); the usual cause is memory: each worker holds torch and its batches (the windows "
            "are shared). Set NIGHTCAST_TRAIN_WORKERS=1 to train the seeds one after another in this process, "
            f"or a smaller count{_script_hint()}") from exc
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _script_hint() -> str:
    """When this process was started from a Python file (a script, or ``python -m``): the other usual
    cause. The workers start with ``spawn``, which imports that file again in each worker; without an
    ``if __name__ == "__main__":`` guard the worker runs the caller's script instead and stops before
    training."""
    import sys

    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or Path(path).name == "nightcast":  # interactive, or the CLI (whose entry point is guarded)
        return ""
    return (f". If {path} calls nightcast at import time, put that call under `if __name__ == \"__main__\":` "
            "(the workers start with spawn, which imports that file again in each worker)")


def _say(log: logging.Logger | None, what: str, n: int, workers: int) -> None:
    where = "in this process" if workers == 1 else f"side by side in {workers} worker processes"
    (log or logging.getLogger(__name__)).info("training %d %s %s", n, what, where)


def train_seeds(index: WindowIndex, model_cfg: ModelConfig, cfgs: list[TrainConfig], progress: bool = True,
                init_state: dict | None = None, accelerator: str = "auto",
                log: logging.Logger | None = None) -> list[TrainResult]:
    """``train_model`` for each of ``cfgs`` (one per seed), side by side when there are cores for it."""
    workers = seed_workers(len(cfgs), cfgs[0], accelerator, _work(index, cfgs[0]))
    _say(log, "network seed(s)", len(cfgs), workers)
    if workers == 1:
        return [train_model(index, model_cfg, cfg, progress, accelerator, init_state=init_state) for cfg in cfgs]
    return _in_workers(index, workers, _train_job, [(model_cfg, cfg, init_state, accelerator) for cfg in cfgs])


def refit_seeds_models(index: WindowIndex, network_args: list[dict], cfgs: list[TrainConfig], steps: list[int],
                       progress: bool = True, init_state: dict | None = None,
                       accelerator: str = "auto", log: logging.Logger | None = None) -> list[TrainResult]:
    """``refit_model`` for each seed (its network arguments, config and step count), side by side."""
    workers = seed_workers(len(cfgs), cfgs[0], accelerator, _work(index, cfgs[0], max(steps)))
    _say(log, "refit network(s)", len(cfgs), workers)
    if workers == 1:
        return [refit_model(index, a, cfg, n, progress, accelerator, init_state=init_state)
                for a, cfg, n in zip(network_args, cfgs, steps)]
    return _in_workers(index, workers, _refit_job,
                       [(a, cfg, n, init_state, accelerator) for a, cfg, n in zip(network_args, cfgs, steps)])
