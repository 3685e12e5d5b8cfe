"""Split-conformal intervals: calibrated on validation windows, measured on the test span."""

import datetime as dt

import numpy as np
import polars as pl
import pytest

from nightcast.schemas.params import TrainConfig
from nightcast.tasks.data.features import FeatureState
from nightcast.tasks.forecast.intervals import bounds, coverage, fit_conformal
from nightcast.tasks.data.prepare import prepare_training
from nightcast.tasks.forecast.predict import predict_scaled
from nightcast.tasks.forecast.train import train_model
from nightcast.tasks.data.validate import validate_observations
from nightcast.tasks.data.window import make_windows
from tests.conftest import fast_params


@pytest.fixture(scope="module")
def fitted(sample_raw):
    params = fast_params("-", train=TrainConfig(max_epochs=8, patience=3, batch_size=128))
    prepared = prepare_training(validate_observations(sample_raw), params)
    net = train_model(prepared.index, params.model, params.train, progress=False).net
    return prepared, net


@pytest.fixture(scope="module")
def walks():
    """Exchangeable residuals with a known shape: random walks forecast by their last value.

    60 series, each with its own level and scale (1 to 100 target units per scaled unit); the
    naive forecast's error at step h is a sum of h + 1 unit-normal increments, so it widens with
    the horizon. Every 10th step is a gap filled with garbage (observed = False) that calibration
    and coverage must ignore. No two calibration (validation) windows share a step, nor do two
    held-out (test) windows, so at each step the errors are independent: coverage is binomial.
    """
    n_series, steps, horizon, lookback = 60, 500, 4, 8
    rng = np.random.default_rng(7)
    walk = np.cumsum(rng.normal(size=(n_series, steps)), axis=1)  # scaled units
    observed = (np.arange(steps) % 10 != 5)[None, :].repeat(n_series, 0)
    filled = np.where(observed, walk, walk + 50.0)
    centers, scales = rng.normal(100, 30, n_series), np.logspace(0, 2, n_series)
    ids = [f"s{i:02d}" for i in range(n_series)]
    start = dt.datetime(2026, 1, 1)
    stamps = pl.datetime_range(start, start + dt.timedelta(hours=steps - 1), "1h", eager=True)
    frame = pl.DataFrame({"series_id": np.repeat(ids, steps), "timestamp": pl.concat([stamps] * n_series),
                          "y": filled.ravel(), "target": (filled * scales[:, None] + centers[:, None]).ravel(),
                          "observed": observed.ravel()})
    index = make_windows(frame, ["y"], [], lookback, horizon, train_end=start + dt.timedelta(hours=100),
                         val_end=start + dt.timedelta(hours=300))
    stats = {s: [float(c), float(k)] for s, c, k in zip(ids, centers, scales)}
    state = FeatureState(scaler="standard", target_stats=stats, numeric_stats={}, categories={}, past_covariates=[],
                         future_covariates=[])

    def apart(starts):  # every horizon-th window of each series: no two share a target step
        origin = index.origin(starts)
        return starts[(origin - index.offsets[index.series[origin]]) % horizon == 0]

    def naive(starts):  # the last clean value, in scaled units (a filled origin is not the forecast's fault)
        origin = index.origin(starts)
        return np.repeat(walk.ravel()[origin][:, None], horizon, axis=1)

    val, test = apart(index.splits["val"]), apart(index.splits["test"])
    return index, state, val, naive(val), test, naive(test)


@pytest.mark.parametrize("level", [0.5, 0.8, 0.95])
def test_held_out_windows_are_covered_at_the_level_at_every_step(walks, level):
    index, state, val, val_preds, test, test_preds = walks
    half = fit_conformal(index, state, val_preds, val, level)
    assert len(half) == index.horizon
    lo, hi = bounds(test_preds, half, index.series_of(test), state)
    tidx = index.target_index(test)
    y = index.truth[tidx]
    seen = np.isfinite(y)
    inside = (y >= lo) & (y <= hi)
    n_cal = np.isfinite(index.truth[index.target_index(val)]).sum(axis=0)
    for h in range(index.horizon):
        n = seen[:, h].sum()
        # binomial error of the held-out share plus that of the calibration quantile, 4 sigma
        tol = 4 * np.sqrt(level * (1 - level) * (1 / n + 1 / n_cal[h]))
        assert abs(inside[seen[:, h], h].mean() - level) < tol, (h, inside[seen[:, h], h].mean(), tol)
    pooled = coverage(index, state, test_preds, test, half)
    assert pooled["points"] == seen.sum() > 3000
    assert abs(pooled["coverage"] - level) < 4 * np.sqrt(level * (1 - level) * (1 / pooled["points"] + 1 / n_cal.min()))
    assert all(0 < a < b for a, b in zip(half, half[1:]))  # the error grows with the horizon, so do the widths


def test_wider_level_gives_wider_intervals_and_more_test_coverage(fitted):
    prepared, net = fitted
    index = prepared.index
    val, test = index.splits["val"], index.splits["test"]
    vp, tp = predict_scaled(net, index, val), predict_scaled(net, index, test)
    state = prepared.state
    narrow, wide = fit_conformal(index, state, vp, val, 0.5), fit_conformal(index, state, vp, val, 0.95)
    assert all(w >= n for n, w in zip(narrow, wide))
    c_narrow = coverage(index, prepared.state, tp, test, narrow)
    c_wide = coverage(index, prepared.state, tp, test, wide)
    assert c_wide["coverage"] >= c_narrow["coverage"] and c_wide["mean_width"] > c_narrow["mean_width"]
    assert 0.0 < c_narrow["coverage"] <= 1.0 and c_narrow["points"] > 0


def test_bounds_are_in_target_units_and_contain_the_forecast(fitted):
    prepared, net = fitted
    index, test = prepared.index, prepared.index.splits["test"][:10]
    preds = predict_scaled(net, index, test)
    sids = index.series_of(test)
    lo, hi = bounds(preds, [0.5] * index.horizon, sids, prepared.state)
    scale = np.array([prepared.state.target_stats[s][1] for s in sids])[:, None]
    np.testing.assert_allclose(hi - lo, np.broadcast_to(2 * 0.5 * scale, hi.shape))  # 0.5 scaled units a side
    assert (lo < hi).all()


def test_no_validation_windows_is_a_clear_error(fitted):
    prepared, _ = fitted
    with pytest.raises(ValueError, match="no validation windows"):
        fit_conformal(prepared.index, prepared.state, np.zeros((0, prepared.index.horizon)),
                      np.array([], dtype=np.int64), 0.8)


def _state(scales: dict[str, float]) -> FeatureState:
    return FeatureState("standard", {s: [100.0, v] for s, v in scales.items()}, {}, {}, [], [])


def _points(errors: np.ndarray, scales: dict[str, float], horizon: int) -> pl.DataFrame:
    """Monitored points whose errors, in each series' scaled units, are ``errors`` (n per step)."""
    ids = list(scales)
    n = errors.shape[0]
    sid = np.array([ids[i % len(ids)] for i in range(n)])
    scale = np.array([scales[s] for s in sid])
    rows = [pl.DataFrame({"series_id": sid, "horizon": np.full(n, h, np.int32), "forecast": 100.0 + scale,
                          "actual": 100.0 + scale + errors[:, h - 1] * scale}) for h in range(1, horizon + 1)]
    return pl.concat(rows)


def test_widths_follow_the_monitored_actuals_shrunk_by_their_number():
    """Errors twice the bundle's width at step 1 and half of it at step 2, in every series' own units:
    the multipliers move toward 2 and 0.5 (shrunk by n / (n + 50)); too few points leave a step at 1."""
    from nightcast.tasks.forecast.intervals import PRIOR_POINTS, conformal_quantile, recalibrate

    scales = {"a": 1.0, "b": 40.0, "c": 0.01}
    rng = np.random.default_rng(3)
    n, level, half = 600, 0.9, [1.0, 1.0, 1.0]
    errors = np.abs(rng.normal(size=(n, 3)))
    errors[:, 0] *= 2.0 / conformal_quantile(errors[:, 0], level)  # covered 90 % at exactly 2 widths
    errors[:, 1] *= 0.5 / conformal_quantile(errors[:, 1], level)
    points = _points(errors, scales, 3).filter((pl.col("horizon") < 3) | (pl.int_range(pl.len()) % 100 == 0))
    got = recalibrate(points, half, _state(scales), level)
    shrink = n / (n + PRIOR_POINTS)
    assert got["points"] == [n, n, 6]
    assert got["factors"][0] == pytest.approx(2.0 ** shrink, rel=1e-4)
    assert got["factors"][1] == pytest.approx(0.5 ** shrink, rel=1e-4)
    assert got["factors"][2] == 1.0


def test_widen_scales_each_bound_about_the_forecast_by_its_step():
    from nightcast.tasks.forecast.intervals import widen

    frame = pl.DataFrame({"horizon": pl.Series([1, 2, 1], dtype=pl.Int32), "forecast": [10.0, 10.0, 0.0],
                          "lower": [9.0, 8.0, -1.0], "upper": [12.0, 11.0, None]})
    out = widen(frame, [2.0, 0.5])
    assert out["lower"].to_list() == [8.0, 9.0, -2.0]
    assert out["upper"].to_list() == [14.0, 10.5, None]
    assert out.columns == frame.columns
    assert widen(frame.lazy(), [2.0, 0.5]).collect().equals(out)  # the sharded assemble widens lazily
