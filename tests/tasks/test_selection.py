"""Padded short-series windows, the network's baseline start, vectorised metrics."""

import datetime as dt

import numpy as np
import polars as pl
import pytest
import torch

from nightcast.models.network import LSTMForecaster
from nightcast.tasks.forecast.evaluate import baseline_forecasts, mase_scales, score_forecasts
from nightcast.tasks.data.features import fit_features, transform_features
from nightcast.tasks.data.window import WindowDataset, auto_lookback, make_windows, min_history


def _frame(lengths: dict[str, int], season: int = 4) -> pl.DataFrame:
    parts = []
    for k, (sid, n) in enumerate(lengths.items()):
        t = np.arange(n)
        parts.append(pl.DataFrame({
            "series_id": sid,
            "timestamp": pl.Series([dt.datetime(2024, 1, 1) + dt.timedelta(days=int(i)) for i in t - n + 60],
                                   dtype=pl.Datetime("us")),
            "target": 10.0 * (k + 1) + np.sin(2 * np.pi * t / season) + 0.05 * t,
            "observed": True, "is_outlier": False, "in_long_gap": False}))
    return pl.concat(parts)


def _index(lengths: dict[str, int], lookback: int = 16, horizon: int = 4, season: int = 4, **kw):
    clean = _frame(lengths, season)
    state = fit_features(clean, clean["timestamp"].max(), "standard", [], [], [], [])
    frame, _ = transform_features(clean, state)
    return make_windows(frame, state.past_columns, [], lookback, horizon, season=season, **kw), frame


def test_short_series_get_padded_windows_instead_of_being_dropped():
    idx, _ = _index({"long": 60, "short": 10}, min_input=min_history(16, 4))
    assert idx.short_series == [] and idx.pad
    starts = idx.splits["all"]
    short = starts[idx.series[idx.origin(starts)] == 1]
    assert len(short) == 10 - 4 - 4 + 1  # origins from the 4th step to the last with a full horizon after
    past, _, y = WindowDataset(idx, short).__getitems__(list(range(len(short))))
    assert past.shape == (len(short), 16, 2)  # target + mask channel
    first = past[0]
    assert first[:, 1].tolist() == [0.0] * 12 + [1.0] * 4  # 12 padded steps, 4 real ones
    assert (first[:12, 0] == 0).all()  # padding never reads the previous series' values
    a = idx.offsets[1]
    np.testing.assert_allclose(first[12:, 0].numpy(), idx.past[a:a + 4, 0])
    np.testing.assert_allclose(y[0].numpy(), idx.past[a + 4:a + 8, 0])


def test_without_min_input_a_short_series_is_reported_as_before():
    idx, _ = _index({"long": 60, "short": 10})
    assert idx.short_series == ["short"] and not idx.pad


def test_auto_lookback_follows_season_and_horizon():
    assert auto_lookback(12, 18) == 36  # monthly: 3 seasons = 2 horizons
    assert auto_lookback(24, 48) == 96  # hourly: 2 horizons
    assert auto_lookback(52, 13) == 52  # weekly: one season
    assert auto_lookback(1, 6) == 12  # yearly: 2 horizons


@pytest.mark.parametrize("skip, base", [("seasonal", "seasonal_naive"), ("last", "naive")])
def test_an_untrained_network_is_exactly_its_baseline(skip, base):
    idx, _ = _index({"a": 60, "b": 30}, min_input=4)
    net = LSTMForecaster(n_past=2, n_future=0, horizon=4, hidden_size=8, norm="window", skip=skip, season=4,
                         mask=True).eval()
    starts = idx.splits["all"]
    assert (starts < idx.offsets[idx.series[idx.origin(starts)]]).any()  # padded windows are included
    with torch.no_grad():
        past, fut, _ = WindowDataset(idx, starts).__getitems__(list(range(len(starts))))
        pred = net(past, fut).numpy()
    y = idx.past[:, 0].astype(np.float64)
    origins = idx.origin(starts)
    h = np.arange(1, 5)
    if base == "naive":
        expect = np.repeat(y[origins][:, None], 4, axis=1)
    else:
        expect = y[origins[:, None] + h - 4 * np.ceil(h / 4).astype(int)]
    np.testing.assert_allclose(pred, expect, rtol=0, atol=1e-5)


def test_window_normalisation_makes_the_network_level_free():
    net = LSTMForecaster(n_past=1, n_future=0, horizon=3, hidden_size=8, norm="window", skip="none").eval()
    torch.nn.init.normal_(net.head[-1].weight)
    x = torch.randn(2, 12, 1)
    with torch.no_grad():
        a, b = net(x, torch.zeros(2, 3, 0)), net(x * 3 + 50, torch.zeros(2, 3, 0))
    np.testing.assert_allclose(b.numpy(), a.numpy() * 3 + 50, rtol=1e-4, atol=1e-3)


def _val_setup():
    idx, _ = _index({"a": 60, "b": 60, "c": 60}, min_input=4)
    starts = idx.splits["all"]
    truth = idx.target[idx.target_index(starts)]
    base = baseline_forecasts(idx, starts, 4)
    return idx, starts, truth, base


def test_vectorised_metrics_match_a_direct_computation():
    idx, starts, truth, base = _val_setup()
    scales = mase_scales(idx, np.datetime64(idx.timestamps.max()), 4)
    table = score_forecasts(idx, starts, base, scales)
    sid = idx.series[idx.origin(starts)]
    for name, pred in base.items():
        for code, s in enumerate(idx.series_ids):
            err = (pred - truth)[sid == code]
            row = table.filter((pl.col("model") == name) & (pl.col("series_id") == s)).row(0, named=True)
            assert row["mae"] == pytest.approx(np.abs(err).mean())
            assert row["rmse"] == pytest.approx(np.sqrt((err ** 2).mean()))
            assert row["mase"] == pytest.approx(np.abs(err).mean() / scales[code])
        overall = table.filter((pl.col("model") == name) & (pl.col("series_id") == "ALL")).row(0, named=True)
        assert overall["mae"] == pytest.approx(np.abs(pred - truth).mean()) and overall["n"] == truth.size


def test_skip_auto_corrects_the_baseline_that_is_better_on_the_training_windows():
    from nightcast.tasks.forecast.train import choose_skip

    seasonal, _ = _index({"a": 60, "b": 60}, season=4, min_input=4)  # sine of period 4: seasonal naive wins
    assert choose_skip(seasonal) == "seasonal"
    rng = np.random.default_rng(0)
    walk = pl.DataFrame({"series_id": "w", "timestamp": pl.datetime_range(dt.datetime(2024, 1, 1), dt.datetime(2024, 3, 30),
                                                                       "1d", eager=True, time_unit="us"),
                         "target": np.cumsum(rng.normal(0, 1, 90)), "observed": True, "is_outlier": False,
                         "in_long_gap": False})
    state = fit_features(walk, walk["timestamp"].max(), "standard", [], [], [], [])
    frame, _ = transform_features(walk, state)
    idx = make_windows(frame, state.past_columns, [], 16, 4, season=7, min_input=7)
    assert choose_skip(idx) == "last"  # a random walk: the last value beats last week's
