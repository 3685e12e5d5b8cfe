"""Split-conformal intervals: calibrated on validation windows, measured on the test span."""

import numpy as np
import pytest

from schemas.params import TrainConfig
from tasks.intervals import bounds, coverage, fit_conformal
from tasks.prepare import prepare_training
from tasks.train import predict_scaled, train_model
from tasks.validate import validate_observations
from tests.conftest import fast_params


@pytest.fixture(scope="module")
def fitted(sample_raw):
    params = fast_params("-", train=TrainConfig(max_epochs=8, patience=3, batch_size=128))
    prepared = prepare_training(validate_observations(sample_raw), params)
    net = train_model(prepared.index, params.model, params.train, progress=False).net
    return prepared, net


@pytest.mark.parametrize("level", [0.5, 0.8, 0.95])
def test_calibration_windows_are_covered_at_the_level(fitted, level):
    prepared, net = fitted
    index, val = prepared.index, prepared.index.splits["val"]
    preds = predict_scaled(net, index, val)
    half = fit_conformal(index, preds, val, level)
    assert len(half) == index.horizon and all(h > 0 for h in half)
    # the finite-sample quantile covers at least `level` of its own calibration points, at every step
    assert coverage(index, prepared.state, preds, val, half)["coverage"] >= level


def test_wider_level_gives_wider_intervals_and_more_test_coverage(fitted):
    prepared, net = fitted
    index = prepared.index
    val, test = index.splits["val"], index.splits["test"]
    vp, tp = predict_scaled(net, index, val), predict_scaled(net, index, test)
    narrow, wide = fit_conformal(index, vp, val, 0.5), fit_conformal(index, vp, val, 0.95)
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
        fit_conformal(prepared.index, np.zeros((0, prepared.index.horizon)), np.array([], dtype=np.int64), 0.8)
