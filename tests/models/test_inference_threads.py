"""Inference batches run on several threads with the same predictions, and the thread-count rule."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from nightcast.models.network import LSTMForecaster
from nightcast.tasks.data.window import WindowDataset, WindowIndex
from nightcast.tasks.forecast import predict as predict_mod
from nightcast.tasks.forecast.predict import inference_threads, predict_scaled, predict_seeds


def _index(series: int = 40, steps: int = 60, lookback: int = 12, horizon: int = 6) -> WindowIndex:
    rng = np.random.default_rng(0)
    n = series * steps
    offsets = np.arange(series + 1, dtype=np.int64) * steps
    starts = (offsets[:-1, None] + np.arange(steps - lookback - horizon + 1)).ravel()
    return WindowIndex(past=rng.normal(size=(n, 3)).astype(np.float32), future=rng.normal(size=(n, 2)).astype(np.float32),
                       target=rng.normal(size=n), observed=np.ones(n, bool),
                       series=np.repeat(np.arange(series, dtype=np.int32), steps),
                       timestamps=np.arange(n).astype("datetime64[h]").astype("datetime64[us]"),
                       series_ids=[f"s{i}" for i in range(series)], offsets=offsets, lookback=lookback,
                       horizon=horizon, splits={"all": starts}, short_series=[])


def _nets(k: int, mask: bool = False) -> list[LSTMForecaster]:
    out = []
    for seed in range(k):
        torch.manual_seed(seed)
        out.append(LSTMForecaster(n_past=3 + mask, n_future=2, horizon=6, hidden_size=16, mask=mask).eval())
    return out


@pytest.mark.parametrize("mask", [False, True])
def test_threads_give_the_predictions_of_one_thread(mask):
    index = _index()
    starts = index.splits["all"]
    nets = _nets(3, mask)
    cpu = torch.device("cpu")
    one = predict_seeds(nets, index, starts, batch_size=64, device=cpu, threads=1)
    many = predict_seeds(nets, index, starts, batch_size=64, device=cpu, threads=3)
    assert len(one) == 3 and one[0].shape == (len(starts), 6)
    for a, b in zip(one, many):
        np.testing.assert_array_equal(a, b)
    # each network's own predictions, batch for batch
    for net, got in zip(nets, one):  # each network's own forward, batch by batch, as predicting one at a time did
        for i in range(0, len(starts), 64):
            ds = WindowDataset(index, starts[i:i + 64], mask=mask)
            past, future, _ = ds.__getitems__(list(range(len(ds))))
            with torch.no_grad():
                np.testing.assert_array_equal(got[i:i + 64], net(past, future).numpy())
        np.testing.assert_array_equal(got, predict_scaled(net, index, starts, batch_size=64, device=cpu))
    assert not np.array_equal(one[0], one[1])  # the seeds differ: nothing was shared by mistake


def test_batches_really_run_on_several_threads(monkeypatch):
    index = _index()
    seen: set[str] = set()
    net = _nets(1)[0]
    real = net.forward

    def forward(*a, **k):  # noqa: ANN002, ANN003, ANN202
        seen.add(threading.current_thread().name)
        return real(*a, **k)

    monkeypatch.setattr(net, "forward", forward)
    cpu = torch.device("cpu")
    predict_seeds([net], index, index.splits["all"], batch_size=32, device=cpu, threads=2)
    assert len(seen) == 2 and all(name.startswith("nightcast-inference") for name in seen)
    seen.clear()
    predict_seeds([net], index, index.splits["all"], batch_size=32, device=cpu, threads=1)
    assert seen == {threading.current_thread().name}
    seen.clear()
    with predict_mod._INFERENCE_POOL:  # another thread's pool holds the cores: this call predicts in itself
        predict_seeds([net], index, index.splits["all"], batch_size=32, device=cpu, threads=2)
    assert seen == {threading.current_thread().name}


def test_no_windows_gives_empty_predictions():
    out = predict_seeds(_nets(2), _index(), np.zeros(0, np.int64), threads=2)
    assert [o.shape for o in out] == [(0, 6), (0, 6)]


def test_thread_count_rule(monkeypatch):
    monkeypatch.setattr("nightcast.models.classical.usable_cores", lambda: 4)
    monkeypatch.setattr("nightcast.models.classical.on_dask_worker", lambda: False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        cpu = torch.device("cpu")
        assert inference_threads(cpu, configured=0) == 4
        assert inference_threads(cpu, configured=3) == 3
        assert inference_threads(torch.device("cuda"), configured=0) == 1  # one device, one stream of batches
        monkeypatch.setenv("NIGHTCAST_INFERENCE_THREADS", "2")
        assert inference_threads(cpu) == 2  # the setting
        monkeypatch.setattr("nightcast.models.classical.on_dask_worker", lambda: True)
        assert inference_threads(cpu, configured=0) == 1  # a Dask worker process is the unit of parallelism
        torch.set_num_threads(2)
        monkeypatch.setattr("nightcast.models.classical.on_dask_worker", lambda: False)
        assert inference_threads(cpu, configured=0) == 1  # torch's own threads would compete
    finally:
        torch.set_num_threads(before)
    assert predict_mod.inference_device().type in ("cpu", "cuda")
