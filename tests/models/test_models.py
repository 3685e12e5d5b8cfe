import io

import numpy as np
import pytest
import torch

from models.baselines import naive, seasonal_naive
from models.network import LSTMForecaster
from schemas.params import ModelConfig, TrainConfig
from tasks.prepare import prepare_training
from tasks.train import predict_scaled, train_model
from tasks.validate import validate_observations
from tests.conftest import fast_params


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("init", ["xavier", "orthogonal", "kaiming"])
@pytest.mark.parametrize("pooling", ["last", "attention"])
def test_network_shapes(cell, bidirectional, init, pooling):
    net = LSTMForecaster(n_past=4, n_future=2, horizon=5, hidden_size=8, num_layers=2, dropout=0.1,
                         bidirectional=bidirectional, cell=cell, init=init, pooling=pooling)
    out = net(torch.randn(3, 10, 4), torch.randn(3, 5, 2))
    assert out.shape == (3, 5) and torch.isfinite(out).all()


def test_unknown_pooling_is_refused():
    with pytest.raises(ValueError, match="pooling must be"):
        LSTMForecaster(n_past=3, n_future=0, horizon=2, pooling="mean")


def test_baselines():
    y = np.arange(20, dtype=float)
    origins = np.array([9])
    assert naive(y, origins, 3).tolist() == [[9, 9, 9]]
    # season 4: forecast for t+1..t+6 repeats y[6..9], then y[6..7]
    assert seasonal_naive(y, origins, 6, 4, np.array([0])).tolist() == [[6, 7, 8, 9, 6, 7]]
    # not enough history: falls back to the last value
    assert seasonal_naive(y, np.array([1]), 2, 4, np.array([0])).tolist() == [[1, 1]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sample_raw):
    params = fast_params("-", train=TrainConfig(max_epochs=8, patience=3, batch_size=128))
    prepared = prepare_training(validate_observations(sample_raw), params)
    return prepared, train_model(prepared.index, params.model, params.train, progress=False), params


def test_training_learns_and_records_history(trained):
    prepared, result, params = trained
    assert result.history.height >= 1 and {"train_loss", "val_loss"} <= set(result.history.columns)
    assert np.isfinite(result.best_val_loss)
    assert result.best_val_loss < result.history["val_loss"][0]  # it learned something after epoch 0


def test_save_load_gives_identical_forecasts(trained):
    prepared, result, _ = trained
    starts = prepared.index.splits["test"][:50]
    before = predict_scaled(result.net, prepared.index, starts)
    buf = io.BytesIO()
    torch.save(result.net.state_dict(), buf)
    clone = LSTMForecaster(**result.network_args)
    clone.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    np.testing.assert_array_equal(before, predict_scaled(clone, prepared.index, starts))


def test_training_is_reproducible_with_a_seed(trained):
    prepared, result, params = trained
    again = train_model(prepared.index, params.model, params.train, progress=False)
    starts = prepared.index.splits["test"][:20]
    np.testing.assert_allclose(predict_scaled(result.net, prepared.index, starts),
                               predict_scaled(again.net, prepared.index, starts), rtol=0, atol=1e-6)


@pytest.mark.parametrize("train", [
    TrainConfig(max_epochs=1, loss="huber", optimizer="adam", l1=1e-5, lr_schedule="cosine"),
    TrainConfig(max_epochs=1, loss="mae", lr_schedule="none", gradient_clip=0.0),
])
def test_loss_optimiser_and_schedule_variants_train(trained, train):
    prepared, _, _ = trained
    out = train_model(prepared.index, ModelConfig(hidden_size=8, num_layers=1, cell="gru"), train, progress=False)
    assert np.isfinite(out.best_val_loss)


def test_attention_pooling_trains_and_round_trips(trained):
    prepared, _, _ = trained
    cfg = ModelConfig(hidden_size=16, num_layers=2, bidirectional=True, pooling="attention", init="kaiming")
    out = train_model(prepared.index, cfg, TrainConfig(max_epochs=3, batch_size=128), progress=False)
    assert out.network_args["pooling"] == "attention" and np.isfinite(out.best_val_loss)
    clone = LSTMForecaster(**out.network_args)
    clone.load_state_dict(out.net.state_dict())
    starts = prepared.index.splits["test"][:10]
    np.testing.assert_array_equal(predict_scaled(out.net, prepared.index, starts),
                                  predict_scaled(clone, prepared.index, starts))


def test_known_future_covariates_reach_the_network(sample_raw):
    from schemas.params import WindowConfig

    params = fast_params("-", window=WindowConfig(lookback=24, horizon=6, future_covariates=["promo"]),
                         train=TrainConfig(max_epochs=1))
    prepared = prepare_training(validate_observations(sample_raw), params)
    assert prepared.state.future_columns == ["cat__promo=off", "cat__promo=on"]
    assert prepared.state.past_covariates == ["temperature"]
    assert prepared.index.future.shape[1] == 2
    out = train_model(prepared.index, params.model, params.train, progress=False)
    assert out.network_args["n_future"] == 2
    # the forecast depends on the future covariates it is given
    starts = prepared.index.splits["test"][:8]
    base = predict_scaled(out.net, prepared.index, starts)
    prepared.index.future[:] = 1.0 - prepared.index.future
    assert not np.allclose(base, predict_scaled(out.net, prepared.index, starts))


def test_level_last_adds_the_last_observed_value_back():
    net = LSTMForecaster(n_past=2, n_future=0, horizon=3, hidden_size=4, num_layers=1, level="last")
    torch.nn.init.zeros_(net.head[-1].weight)
    torch.nn.init.zeros_(net.head[-1].bias)  # the head now predicts "no change"
    past = torch.randn(5, 7, 2)
    out = net(past, torch.zeros(5, 3, 0))
    torch.testing.assert_close(out, past[:, -1, :1].expand(5, 3))
    with pytest.raises(ValueError, match="level must be"):
        LSTMForecaster(n_past=2, n_future=0, horizon=3, level="mean")
