"""Batched inference of trained networks: no Lightning here, so scoring (and every Dask worker that only
scores) never imports it (about 2.3 s of a scoring command's start, measured with ``python -X importtime``).
Training lives in ``nightcast.tasks.forecast.train``."""

from __future__ import annotations

import copy
import threading

import numpy as np
import torch

from nightcast.models.network import LSTMForecaster
from nightcast.tasks.data.window import WindowDataset, WindowIndex


def inference_device() -> torch.device:
    """Where batched inference runs: the GPU when there is one (as training), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def inference_threads(device: torch.device | None = None, configured: int | None = None) -> int:
    """Threads that run batches of inference side by side: ``Settings.inference_threads``, and with 0 (the
    default) one per usable core, except on a Dask worker (the worker process is the unit of parallelism),
    on a GPU, or when torch's own intra-op threads are more than 1 (they would compete)."""
    from nightcast.models.classical import on_dask_worker, usable_cores

    if configured is None:
        from nightcast.schemas.params import Settings

        configured = Settings().inference_threads
    if (device or inference_device()).type != "cpu" or torch.get_num_threads() > 1:
        return 1
    if configured == 0:
        return 1 if on_dask_worker() else usable_cores()
    return configured


def predict_scaled(net: LSTMForecaster, index: WindowIndex, starts: np.ndarray,
                   batch_size: int = 2048, device: torch.device | None = None) -> np.ndarray:
    """Scaled (n, H) predictions for windows starting at ``starts``, in batches on ``device``
    (``predict_seeds`` with one network)."""
    return predict_seeds([net], index, starts, batch_size, device)[0]


def predict_seeds(nets: list[LSTMForecaster], index: WindowIndex, starts: np.ndarray, batch_size: int = 2048,
                  device: torch.device | None = None, threads: int | None = None) -> list[np.ndarray]:
    """Scaled (n, H) predictions of each network for the windows starting at ``starts``.

    Batches are gathered from the stacked arrays by index (``WindowDataset.__getitems__``), once for all the
    networks; the loop runs over batches of ``batch_size`` windows, never over windows. On the CPU the
    batches run on ``threads`` threads (``inference_threads``; torch releases the GIL in its kernels, and
    each kernel runs on its calling thread): a batch's result does not depend on the thread count.
    """
    device = device or inference_device()
    models = [net.eval() if device.type == "cpu" else copy.deepcopy(net).to(device).eval() for net in nets]
    masks = sorted({bool(getattr(net, "mask", False)) for net in nets})
    sets = {m: WindowDataset(index, starts, mask=m) for m in masks}
    n = len(starts)
    if n == 0:
        return [np.zeros((0, index.horizon), np.float32) for _ in nets]

    def batch(i: int) -> list[np.ndarray]:
        items = torch.arange(i, min(i + batch_size, n))
        got = {m: ds.__getitems__(items) for m, ds in sets.items()}
        with torch.no_grad():  # here, not around the call: grad mode is per thread
            return [model(*(t.to(device) for t in got[bool(getattr(model, "mask", False))][:2])).cpu().numpy()
                    for model in models]

    firsts = range(0, n, batch_size)
    workers = min(threads or inference_threads(device), len(firsts))
    if workers <= 1 or not _INFERENCE_POOL.acquire(blocking=False):  # another thread's pool has the cores
        parts = [batch(i) for i in firsts]
    else:
        from concurrent.futures import ThreadPoolExecutor

        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="nightcast-inference") as pool:
                parts = list(pool.map(batch, firsts))
        finally:
            _INFERENCE_POOL.release()
    return [np.concatenate([p[k] for p in parts]) for k in range(len(nets))]


_INFERENCE_POOL = threading.Lock()
"""One thread's inference pool at a time: shards scored together on threads never multiply the pools (a
thread that finds it taken predicts in itself), as for the classical fits' process pool."""
