import datetime as dt
import io

import numpy as np
import polars as pl
import pytest
import torch

from nightcast.models.baselines import naive, seasonal_naive
from nightcast.models.network import LSTMForecaster
from nightcast.schemas.params import ModelConfig, TrainConfig
from nightcast.tasks.data.prepare import prepare_training
from nightcast.tasks.forecast.predict import predict_scaled
from nightcast.tasks.forecast.train import train_model
from nightcast.tasks.data.validate import validate_observations
from nightcast.tasks.data.window import make_windows
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


# A learnable toy problem with a skewed target: a seasonal signal the network reads from its
# known-future covariates, plus Exp(1) noise (mean 1, median ln 2). The best forecast under MSE is
# signal + 1, under MAE signal + ln 2, under Huber (delta 1) a centre in between.
_TOY_MODEL = ModelConfig(hidden_size=8, num_layers=1, dropout=0.0, norm="none", skip="none")
_TOY_TRAIN = dict(max_steps=300, steps_per_epoch=50, batch_size=64, patience=6, learning_rate=1e-2)


@pytest.fixture(scope="module")
def toy():
    """The windows, the noise-free signal of every step, and a trainer that runs each configuration once."""
    n, period, start = 3600, 12, dt.datetime(2026, 1, 1)
    phase = 2 * np.pi * np.arange(n) / period
    signal = 1.5 * np.sin(phase)
    y = signal + np.random.default_rng(0).exponential(1.0, n)
    frame = pl.DataFrame({
        "series_id": "toy", "timestamp": pl.datetime_range(start, start + dt.timedelta(hours=n - 1), "1h", eager=True),
        "target": y, "observed": True, "y": y, "sin": np.sin(phase), "cos": np.cos(phase)})
    # one series from row 0: a window's target row is its time step; test = the last 1,600 steps, held out
    index = make_windows(frame, ["y"], ["sin", "cos"], lookback=12, horizon=1,
                         train_end=start + dt.timedelta(hours=1600), val_end=start + dt.timedelta(hours=2000))
    runs: dict[str, object] = {}

    def train(**overrides):
        cfg = TrainConfig(**{**_TOY_TRAIN, **overrides})
        key = cfg.model_dump_json()
        if key not in runs:
            runs[key] = train_model(index, _TOY_MODEL, cfg, progress=False)
        return runs[key]

    return index, signal, train


def _toy_fit(index, net, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Targets, forecasts and target rows of a split's windows (horizon 1)."""
    starts = index.splits[split]
    rows = index.target_index(starts)[:, 0]
    return index.past[rows, 0].astype(np.float64), predict_scaled(net, index, starts)[:, 0].astype(np.float64), rows


def _loss(name: str, err: np.ndarray) -> float:
    a = np.abs(err)
    return float({"mse": err ** 2, "mae": a, "huber": np.where(a <= 1.0, 0.5 * err ** 2, a - 0.5)}[name].mean())


def _progress(index, signal, out, loss: str) -> tuple[float, float, float]:
    """On the training windows: the untrained net's loss, the trained net's, and the best possible."""
    truth, after, rows = _toy_fit(index, out.net, "train")
    torch.manual_seed(TrainConfig().seed)  # as train_model seeds before it builds the net: its starting weights
    _, before, _ = _toy_fit(index, LSTMForecaster(**out.network_args), "train")
    noise = truth - signal[rows]
    best = min(_loss(loss, noise - c) for c in np.linspace(0.0, 2.0, 401))  # oracle: signal + best constant
    return _loss(loss, truth - before), _loss(loss, truth - after), best


@pytest.mark.parametrize("loss", ["mse", "mae", "huber"])
def test_each_loss_is_trained_down_towards_its_optimum(toy, loss):
    index, signal, train = toy
    initial, final, best = _progress(index, signal, train(loss=loss), loss)
    assert best < initial
    assert final < initial - 0.7 * (initial - best)  # closes most of the gap the signal leaves to learn


def test_losses_fit_their_own_statistic_of_a_skewed_target(toy):
    index, signal, train = toy
    fits = {}
    for loss in ("mse", "mae", "huber"):
        truth, pred, rows = _toy_fit(index, train(loss=loss).net, "test")
        fits[loss] = pred
    n = len(truth)
    noise = truth - signal[rows]
    # MAE forecasts the conditional median: half the held-out targets lie below it (binomial
    # error 0.5/sqrt(n), 4 sigma, plus 0.02 for the fit), where MSE's mean lies at P(Exp(1) < 1) = 0.63
    below_mae = float((truth < fits["mae"]).mean())
    assert abs(below_mae - 0.5) < 4 * 0.5 / np.sqrt(n) + 0.02
    # MSE forecasts the conditional mean: held-out residuals average 0 (noise sd 1: 4/sqrt(n), plus 0.02)
    assert abs(float((truth - fits["mse"]).mean())) < 4 / np.sqrt(n) + 0.02
    # so the two differ by mean - median = 1 - ln 2 = 0.31 on every step, and Huber lies between them
    gap = fits["mse"] - fits["mae"]
    assert abs(float(gap.mean()) - (1 - np.log(2))) < 0.1
    assert float(np.mean(gap > 0)) > 0.9
    assert fits["mae"].mean() + 0.05 < fits["huber"].mean() < fits["mse"].mean() - 0.05
    assert abs(float(noise.mean()) - 1) < 0.1  # the data are what the comments claim


@pytest.mark.parametrize("variant", [
    dict(optimizer="adam", lr_schedule="cosine", l1=1e-5),
    dict(optimizer="adamw", lr_schedule="none", gradient_clip=0.0),
    dict(optimizer="adamw", lr_schedule="plateau"),  # the defaults: the MAE run above
])
def test_optimiser_and_schedule_variants_each_reduce_the_training_loss(toy, variant):
    index, signal, train = toy
    out = train(loss="mae", **variant)
    initial, final, best = _progress(index, signal, out, "mae")
    assert final < initial - 0.7 * (initial - best)


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
    from nightcast.schemas.params import FeatureConfig, WindowConfig

    params = fast_params("-", window=WindowConfig(lookback=24, horizon=6, future_covariates=["promo"]),
                         train=TrainConfig(max_epochs=1),
                         features=FeatureConfig(calendar=[]))  # promo alone: no calendar inputs beside it
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
