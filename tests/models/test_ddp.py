"""DDP training on two CPU processes (gloo, ``ddp_spawn``) against the single-process run.

Not identical weights: with ``devices=2`` every optimiser step averages the gradients of two
batches of ``batch_size`` windows (an effective batch twice as large, same learning rate and step
count, so twice the windows seen), and the windows come from a different seeded draw (one
(steps, ranks, batch) draw per epoch instead of the single-process sampler's stream).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from nightcast.models.baselines import seasonal_naive
from nightcast.models.network import LSTMForecaster
from nightcast.schemas.params import TrainConfig
from nightcast.tasks.data.prepare import prepare_training
from nightcast.tasks.forecast.predict import predict_scaled
from nightcast.tasks.forecast.train import train_model
from nightcast.tasks.data.validate import validate_observations
from tests.conftest import fast_params

pytestmark = pytest.mark.slow

# Seed-to-seed spread of the single-process run on this data, measured over seeds 1-3: test-span
# scaled MAE 0.197-0.222 (max/min 1.13); the DDP runs over the same seeds gave 0.204-0.216.
# A DDP model within 15% of the single-process one is within that noise, not a regression.
_TOLERANCE = 1.15


def _config(devices: int) -> TrainConfig:
    return TrainConfig(max_epochs=8, patience=3, batch_size=128, devices=devices)


@pytest.fixture(scope="module")
def runs(sample_raw):
    params = fast_params("-", train=_config(1))
    prepared = prepare_training(validate_observations(sample_raw), params)
    index = prepared.index
    one = train_model(index, params.model, _config(1), progress=False)
    two = train_model(index, params.model, _config(2), progress=False)
    again = train_model(index, params.model, _config(2), progress=False)
    return index, one, two, again


def _test_mae(index, predict) -> float:  # noqa: ANN001
    """Scaled MAE over the test span's observed targets."""
    starts = index.splits["test"]
    tidx = index.target_index(starts)
    err = np.abs(predict(starts) - index.past[tidx, 0])
    return float(err[index.observed[tidx]].mean())


def test_the_ddp_state_dict_loads_into_the_bundle_network(runs):
    index, one, two, _ = runs
    assert two.network_args == one.network_args  # the bundle's recipe does not depend on devices
    buf = io.BytesIO()
    torch.save(two.net.state_dict(), buf)  # what register writes as the bundle's weights
    clone = LSTMForecaster(**two.network_args)
    clone.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))  # strict
    starts = index.splits["test"][:50]
    np.testing.assert_array_equal(predict_scaled(two.net, index, starts), predict_scaled(clone, index, starts))


def test_ddp_returns_rank_zeros_history_budget_and_log(runs):
    _, one, two, _ = runs
    assert set(one.history.columns) == set(two.history.columns) == {"epoch", "train_loss", "val_loss"}
    assert two.history.height == two.epochs >= 2 and 0 < two.steps <= two.budget["max_steps"]
    assert (one.epochs, one.steps) == (one.history.height, min(one.epochs * 50, one.budget["max_steps"]))
    assert np.isfinite(two.best_val_loss) and two.best_val_loss == pytest.approx(two.history["val_loss"].min())
    assert two.budget["devices"] == 2 and two.budget["strategy"] == "ddp_spawn"
    assert "devices" not in one.budget  # the single-process manifest is unchanged
    assert list(two.tensorboard) == ["events.out.tfevents.nightcast"]  # rank 0's log only


def test_ddp_quality_matches_single_process(runs):
    index, one, two, _ = runs
    mae_one = _test_mae(index, lambda s: predict_scaled(one.net, index, s))
    mae_two = _test_mae(index, lambda s: predict_scaled(two.net, index, s))
    y = index.past[:, 0].astype(np.float64)
    first = index.offsets[index.series[index.origin(index.splits["test"])]]
    mae_seasonal = _test_mae(index, lambda s: seasonal_naive(y, index.origin(s), index.horizon, index.season, first))
    assert mae_two <= _TOLERANCE * mae_one, (mae_two, mae_one)
    assert mae_two < mae_seasonal, (mae_two, mae_seasonal)  # it learned, as the single-process model does


def test_same_seed_and_devices_give_identical_ddp_weights(runs):
    _, _, two, again = runs
    a, b = two.net.state_dict(), again.net.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert two.history.equals(again.history)
