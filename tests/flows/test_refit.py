"""Backtest to decide, refit to serve: the bundle serves networks refit on all history, several seeds."""

import numpy as np
import polars as pl
import pytest
import torch

from nightcast.flows.retrain import retrain_flow
from nightcast.schemas.params import ServeConfig, WindowConfig
from nightcast.tasks.forecast.evaluate import NETWORK
from nightcast.tasks.data.ingest import load_observations
from nightcast.tasks.data.prepare import prepare_training
from nightcast.tasks.ops.registry import load_champion
from nightcast.tasks.ops.storage import open_store
from nightcast.tasks.forecast.predict import predict_scaled
from nightcast.tasks.forecast.train import best_steps, train_model
from nightcast.tasks.data.validate import validate_observations
from tests.conftest import fast_params

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_the_served_networks_are_refit_on_all_history_and_are_not_the_backtest_models(tmp_path, sample_csv):
    params = fast_params(sample_csv, serve=ServeConfig(seeds=2, classical="none"))
    out = retrain_flow(params, store=str(tmp_path / "s"))
    bundle = load_champion(open_store(str(tmp_path / "s")), "lstm")
    assert bundle.config["ensemble"] == 2 and len(bundle.networks()) == 2
    a, b = (n.state_dict() for n in bundle.networks())
    assert any(not torch.equal(a[k], b[k]) for k in a)  # two seeds, two networks

    # the backtest model of the first seed, rebuilt the way the flow built it (deterministic training)
    checked = validate_observations(load_observations(params.data, params.columns), params.clean.max_bad_share)
    run = params.model_copy(update={"window": WindowConfig(lookback=24, horizon=6)})
    prepared = prepare_training(checked, run)
    backtest = train_model(prepared.index, run.model, run.train, progress=False)
    # it is the model that was judged: its own test-span figure is the one recorded ...
    from nightcast.tasks.forecast.backtest import candidate_forecasts
    from nightcast.tasks.data.window import space_windows

    test = space_windows(prepared.index, prepared.index.splits["test"], run.window.horizon // 2)
    from nightcast.tasks.forecast.evaluate import mase_scales, score_forecasts

    both = [predict_scaled(backtest.net, prepared.index, test)]
    b2 = train_model(prepared.index, run.model, run.train.model_copy(update={"seed": run.train.seed + 1}),
                     progress=False)
    both.append(predict_scaled(b2.net, prepared.index, test))
    cands = candidate_forecasts(prepared.index, prepared.state, test, both, prepared.season_length, run.serve, [])
    table = score_forecasts(prepared.index, test, {NETWORK: cands[NETWORK]},
                            mase_scales(prepared.index, np.datetime64(prepared.train_end, "us"), prepared.season_length))
    recorded = out["metrics"].filter((pl.col("model") == NETWORK) & (pl.col("series_id") == "ALL"))["mase"][0]
    assert table.filter(pl.col("series_id") == "ALL")["mase"][0] == pytest.approx(recorded, rel=1e-9)
    # ... but what is served was refit: other weights, trained on every window up to the origin
    assert any(not torch.allclose(backtest.net.state_dict()[k], a[k]) for k in a)
    refit = bundle.manifest["refit"]
    assert refit["refit"] and refit["steps"][0] == best_steps(backtest)
    assert refit["windows"] > len(prepared.index.splits["train"]) + len(prepared.index.splits["val"])
    assert refit["end"] == str(prepared.clean["timestamp"].max())
    # scalers refreshed: the served standard scaler is fitted on every observed value, not the training span
    stats = bundle.preprocessing["features"]["target_stats"]
    for sid, (center, _) in stats.items():
        allv = prepared.clean.filter((pl.col("series_id") == sid) & pl.col("observed"))["target"].mean()
        span = prepared.state.target_stats[sid][0]
        assert center == pytest.approx(allv) and center != pytest.approx(span)


def test_no_refit_serves_the_backtest_model(tmp_path, sample_csv):
    params = fast_params(sample_csv, serve=ServeConfig(refit=False, classical="none"))
    out = retrain_flow(params, store=str(tmp_path / "s"))
    bundle = load_champion(open_store(str(tmp_path / "s")), "lstm")
    assert bundle.manifest["refit"] == {"refit": False} and out["promoted"]
    checked = validate_observations(load_observations(params.data, params.columns), params.clean.max_bad_share)
    prepared = prepare_training(checked, params.model_copy(update={"window": WindowConfig(lookback=24, horizon=6)}))
    backtest = train_model(prepared.index, params.model, params.train, progress=False)
    served = bundle.network().state_dict()
    for k, v in backtest.net.state_dict().items():
        torch.testing.assert_close(served[k], v)
