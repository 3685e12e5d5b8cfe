"""Warm start: policy, compatibility checks, fine-tuning and transfer onto new series."""

import datetime as dt

import polars as pl
import pytest
import torch

from nightcast.flows.retrain import retrain_flow
from nightcast.schemas.params import ModelConfig, PromotionRule, TrainConfig, WarmStartConfig
from nightcast.tasks.ops.registry import load_bundle
from nightcast.tasks.ops.storage import open_store
from nightcast.tasks.forecast.warm import incompatibility, plan_warm_start
from tests.conftest import fast_params

NOW = dt.datetime(2026, 11, 23, tzinfo=dt.timezone.utc)


def _manifest(days_old: int, full_days_old: int | None = None) -> dict:
    m = {"created_at": (NOW - dt.timedelta(days=days_old)).isoformat()}
    if full_days_old is not None:
        m["warm_start"] = {"used": True, "full_trained_at": (NOW - dt.timedelta(days=full_days_old)).isoformat()}
    return m


@pytest.mark.parametrize("policy, manifest, warm, why", [
    ("never", _manifest(1), False, "policy never"),
    ("always", None, False, "no champion"),
    ("always", _manifest(1, full_days_old=30), True, "policy always"),
    ("periodic", _manifest(2), True, "policy periodic"),
    ("periodic", _manifest(1, full_days_old=9), False, "last full training 9 day(s) ago"),
])
def test_warm_start_policy(policy, manifest, warm, why):
    plan = plan_warm_start(WarmStartConfig(policy=policy, full_retrain_days=7), manifest, NOW)
    assert plan.warm is warm and why in plan.reason


def test_incompatible_layouts_are_explained():
    cfg = {"network_args": {"hidden_size": 32, "n_past": 3}, "calendar": {"frequency": "1h"}}
    feats = {"past_columns": ["y", "num__t"], "future_columns": [], "scaler": "standard"}
    assert incompatibility(cfg, feats, {"hidden_size": 32, "n_past": 3}, feats, "1h") is None
    assert "hidden_size 32 -> 64" in incompatibility(cfg, feats, {"hidden_size": 64, "n_past": 3}, feats, "1h")
    other = {**feats, "past_columns": ["y", "num__x"]}
    assert "feature layout differs" in incompatibility(cfg, feats, {"hidden_size": 32, "n_past": 3}, other, "1h")
    assert "frequency differs: 1h -> 1d" in incompatibility(cfg, feats, {"hidden_size": 32, "n_past": 3}, feats, "1d")


@pytest.mark.usefixtures("prefect_harness")
def test_fine_tuning_starts_from_the_champion_and_transfers_to_new_series(tmp_path, sample_raw):
    old, new = tmp_path / "old.csv", tmp_path / "new.csv"
    sample_raw.filter(pl.col("series_id") != "site-3").write_csv(old)
    sample_raw.filter(pl.col("series_id") == "site-3").write_csv(new)  # a series the champion never saw
    store = str(tmp_path / "s")
    champion = retrain_flow(fast_params(str(old)), store=store)
    assert champion["promoted"] and champion["warm_start"]["used"] is False
    st = open_store(store)
    start = load_bundle(st, "lstm", champion["version"]).state_dict

    # a learning rate of ~0 and one epoch: the fine-tuned weights are the champion's
    frozen = retrain_flow(fast_params(str(new), warm_start=WarmStartConfig(policy="always"),
                                      train=TrainConfig(max_epochs=1, learning_rate=1e-12, batch_size=64),
                                      promotion=PromotionRule(beat_champion=False)), store=store)
    assert frozen["warm_start"]["used"] and frozen["warm_start"]["from"] == champion["version"]
    tuned = load_bundle(st, "lstm", frozen["version"])
    assert tuned.manifest["warm_start"]["from"] == champion["version"]
    for name, tensor in start.items():
        torch.testing.assert_close(tuned.state_dict[name], tensor, rtol=0, atol=1e-6)

    # the same run from scratch does not start there
    cold = retrain_flow(fast_params(str(new), train=TrainConfig(max_epochs=1, learning_rate=1e-12, batch_size=64),
                                    promotion=PromotionRule(beat_champion=False)), store=store)
    cold_state = load_bundle(st, "lstm", cold["version"]).state_dict
    assert any(not torch.allclose(cold_state[k], start[k]) for k in start)

    # a different network cannot start from it: explained, trained from scratch
    other = retrain_flow(fast_params(str(new), warm_start=WarmStartConfig(policy="always"),
                                     model=ModelConfig(hidden_size=16, num_layers=1, dropout=0.0),
                                     promotion=PromotionRule(beat_champion=False)), store=store)
    assert other["warm_start"]["used"] is False and "hidden_size" in other["warm_start"]["reason"]
