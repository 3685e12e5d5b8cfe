"""Backtests judge raw truth, never let the test span set anything, and stay robust to one odd series."""

import datetime as dt

import numpy as np
import polars as pl

from nightcast.schemas.params import CleanConfig, ServeConfig
from nightcast.tasks.forecast.backtest import run_backtest
from nightcast.tasks.data.clean import Calendar, clean_observations
from nightcast.tasks.forecast.evaluate import mase_scales, score_forecasts
from nightcast.tasks.data.features import fit_features, transform_features
from nightcast.tasks.data.window import make_windows, observed_origins

T0 = dt.datetime(2024, 1, 1)


def _raw(series: dict[str, np.ndarray]) -> pl.DataFrame:
    parts = [pl.DataFrame({"series_id": sid, "timestamp": [T0 + dt.timedelta(days=i) for i in range(len(y))],
                           "target": y}, schema_overrides={"timestamp": pl.Datetime("us")})
             for sid, y in series.items()]
    return pl.concat(parts)


def _index(raw: pl.DataFrame, lookback: int = 14, horizon: int = 7, train_end: int = 60, val_end: int = 90):
    clean, _, _ = clean_observations(raw, CleanConfig(outlier_window=14), Calendar("1d"))
    te, ve = T0 + dt.timedelta(days=train_end), T0 + dt.timedelta(days=val_end)
    state = fit_features(clean, te, "standard", [], [], [], [])
    frame, _ = transform_features(clean, state)
    index = make_windows(frame, state.past_columns, state.future_columns, lookback, horizon, te, ve, season=7)
    return clean, state, index, np.datetime64(te, "us")


def _weekly(n: int, seed: int, level: float = 50.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return level + 5 * np.sin(2 * np.pi * np.arange(n) / 7) + rng.normal(0, 0.5, n)


def test_a_clipped_spike_is_scored_at_its_raw_value():
    y = _weekly(120, 0)
    y[100] = 500.0  # a real spike the Hampel filter clips for training
    clean, state, index, te = _index(_raw({"a": y}))
    row = clean.filter(pl.col("timestamp") == T0 + dt.timedelta(days=100)).row(0, named=True)
    assert row["is_outlier"] and row["target"] < 100 and row["raw"] == 500.0 and row["observed"]
    spike = int(np.flatnonzero(index.timestamps == np.datetime64(T0 + dt.timedelta(days=100), "us"))[0])
    assert index.truth[spike] == 500.0 and index.target[spike] < 100
    # a forecast equal to the clipped value still errs by the spike at that point
    starts = index.splits["test"]
    covering = starts[(index.target_index(starts) == spike).any(axis=1)][:1]
    pred = index.target[index.target_index(covering)]  # the cleaned values themselves
    table = score_forecasts(index, covering, {"clean": pred}, mase_scales(index, te, 7))
    assert table.filter(pl.col("series_id") == "ALL")["mae"][0] > (500 - 100) / 7


def test_a_filled_step_is_neither_a_target_nor_an_origin_of_an_evaluation_window():
    y = _weekly(120, 1)
    y[95] = np.nan  # a short gap, interpolated for training
    clean, state, index, te = _index(_raw({"a": y}))
    gap = int(np.flatnonzero(index.timestamps == np.datetime64(T0 + dt.timedelta(days=95), "us"))[0])
    assert np.isnan(index.truth[gap]) and np.isfinite(index.target[gap])
    starts = index.splits["test"]
    kept = observed_origins(index, starts)
    assert gap in index.origin(starts) and gap not in index.origin(kept)
    table = score_forecasts(index, starts, {"zero": np.zeros((len(starts), 7))}, mase_scales(index, te, 7))
    targets = index.target_index(starts)
    assert table.filter(pl.col("series_id") == "ALL")["n"][0] == int(np.isfinite(index.truth[targets]).sum())


def test_the_test_span_cannot_move_a_weight_or_a_width():
    raw = _raw({f"s{i}": _weekly(120, i, 20.0 + 10 * i) for i in range(4)})
    clean, state, index, te = _index(raw)
    val, test = index.splits["val"], index.splits["test"]
    rng = np.random.default_rng(0)
    net_val, net_test = [rng.normal(0, 0.3, (len(val), 7))], [rng.normal(0, 0.3, (len(test), 7))]
    cfg = ServeConfig(classical="theta")
    first = run_backtest(index, state, te, 7, net_val, net_test, cfg, 0.8)
    # change every test-span truth value and the network's test forecasts: nothing fitted may move
    after = index.timestamps > np.datetime64(T0 + dt.timedelta(days=90), "us")
    index.truth = np.where(after, index.truth * 3 + 7, index.truth)
    second = run_backtest(index, state, te, 7, net_val, [p * 5 for p in net_test], cfg, 0.8)
    np.testing.assert_array_equal(first.weights.per_series, second.weights.per_series)
    assert first.intervals["half_widths"] == second.intervals["half_widths"]
    assert first.metrics.filter(pl.col("model") == "served")["mae"].to_list() != \
        second.metrics.filter(pl.col("model") == "served")["mae"].to_list()  # the report did see the change


def test_one_near_flat_series_cannot_decide_the_pooled_mase():
    series = {f"s{i}": _weekly(120, i, 30.0 + 5 * i) for i in range(12)}
    _, _, index, te = _index(_raw(series))
    base = mase_scales(index, te, 7)
    flat = np.full(120, 1000.0)
    flat[110:] += np.linspace(0, 5, 10)  # flat in training, moving later: its raw MASE would be enormous
    flat[::9] += 1e-6
    _, _, index2, _ = _index(_raw({**series, "zz_flat": flat}))
    scales = mase_scales(index2, te, 7)
    np.testing.assert_allclose(scales[:12], base)  # the others keep their own scale
    ratio = scales[:12] / np.array([np.abs(v[:61]).mean() for v in series.values()])
    assert scales[12] >= 0.1 * np.median(ratio) * 1000.0 * 0.99  # floored against the panel
    test = index2.splits["test"]
    flat_rows = index2.series[index2.origin(test)] == 12
    pred = {"good": index2.truth[index2.target_index(test)] + 0.1, "bad": index2.truth[index2.target_index(test)] + 1.0}
    pred["good"][flat_rows] += 5.0  # "good" is worse on the flat series only
    table = score_forecasts(index2, test, pred, scales).filter(pl.col("series_id") == "ALL")
    overall = dict(zip(table["model"], table["mase"]))
    assert overall["good"] < overall["bad"]  # the flat series does not flip the panel's choice


def test_the_refit_trains_the_budget_the_backtest_model_kept():
    from nightcast.tasks.forecast.train import TrainResult, best_steps

    history = pl.DataFrame({"epoch": [0, 1, 2, 3], "train_loss": [1.0, 0.8, 0.7, 0.6], "val_loss": [0.9, 0.5, 0.6, 0.7]})
    stopped = TrainResult(None, {}, history, 0.5, 4, 200, {"steps_per_epoch": 50, "early_stopping": True})
    assert best_steps(stopped) == 100  # early stopping kept epoch 1: two epochs of 50 steps
    whole = TrainResult(None, {}, history, 0.5, 4, 200, {"steps_per_epoch": 50, "early_stopping": False})
    assert best_steps(whole) == 200  # the default: the whole budget, the last weights
