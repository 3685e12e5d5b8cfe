"""What is served: chosen per series on validation only, never blank when the network loses."""

import datetime as dt
import io
import json

import numpy as np
import polars as pl
import pytest

from nightcast.flows.retrain import retrain_flow
from nightcast.flows.score import score_flow
from nightcast.schemas.frames import FORECASTS_LAYOUT
from nightcast.schemas.params import ColumnMap, ModelConfig, RetrainParams, ScoreParams, TrainConfig, WindowConfig
from nightcast.tasks.serving.score import forecasts_key, read_forecasts
from nightcast.tasks.ops.storage import open_store

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _panel(n: int = 240) -> pl.DataFrame:
    """Four clean daily series: strong weekly cycles at different levels, one with a trend."""
    t = np.arange(n)
    rng = np.random.default_rng(0)
    rows = []
    for k in range(4):
        y = 50 * (k + 1) + 10 * np.sin(2 * np.pi * t / 7 + k) + (0.3 * t if k == 3 else 0) + rng.normal(0, 0.5, n)
        rows.append(pl.DataFrame({"series_id": f"s{k}",
                                  "timestamp": [str(dt.date(2024, 1, 1) + dt.timedelta(days=int(i))) for i in t],
                                  "target": y.round(4).astype(str)}))
    return pl.concat(rows)


def _params(data: str, **kw) -> RetrainParams:
    base = dict(data=data, window=WindowConfig(horizon=7),
                model=ModelConfig(hidden_size=16, num_layers=1, dropout=0.0),
                train=TrainConfig(max_steps=150, steps_per_epoch=25, batch_size=64))
    base.update(kw)
    return RetrainParams(**base)


def _bundle_json(store, name: str, version: str, fname: str) -> dict:
    return json.loads(store.read_bytes(f"models/{name}/versions/{version}/{fname}"))


def test_the_choice_of_what_is_served_never_sees_the_test_span(tmp_path):
    panel = _panel()
    a = tmp_path / "a.csv"
    panel.write_csv(a)
    store = open_store(str(tmp_path / "s"))
    first = retrain_flow(_params(str(a), model_name="a"), store=store.url)
    manifest = _bundle_json(store, "a", first["version"], "manifest.json")
    val_end = dt.datetime.fromisoformat(manifest["spans"]["val_end"])
    # the same data, but the test span repeats the last validation week exactly: judged on the test
    # span, seasonal naive would be perfect and win every series
    b = tmp_path / "b.csv"
    frame = panel.with_columns(pl.col("timestamp").str.to_datetime())
    days = (pl.col("timestamp") - pl.lit(val_end)).dt.total_days()
    source = pl.when(days > 0).then(pl.lit(val_end) - pl.duration(days=6 - (days - 1) % 7)).otherwise("timestamp")
    changed = (frame.with_columns(source.alias("src"))
               .join(frame.select("series_id", pl.col("timestamp").alias("src"), pl.col("target").alias("copy")),
                     on=["series_id", "src"], how="left")
               .select("series_id", pl.col("timestamp").dt.strftime("%Y-%m-%d"), pl.col("copy").alias("target")))
    changed.write_csv(b)
    second = retrain_flow(_params(str(b), model_name="b"), store=store.url)
    pa = _bundle_json(store, "a", first["version"], "preprocessing.json")
    pb = _bundle_json(store, "b", second["version"], "preprocessing.json")
    assert pa["combination"] == pb["combination"] and len(pa["combination"]["per_series"]) == 4
    lstm = pa["combination"]["candidates"].index("lstm")
    assert max(w[lstm] for w in pa["combination"]["per_series"].values()) > 0.2  # the network carries weight
    assert pa["conformal"]["half_widths"] == pb["conformal"]["half_widths"]  # calibrated on the backtest too
    assert pa["features"] != pb["features"]  # the served network's scalers are refit on all history, by design
    ma = first["metrics"].filter(pl.col("series_id") == "ALL")
    mb = second["metrics"].filter(pl.col("series_id") == "ALL")
    assert not np.allclose(ma["mase"].to_numpy(), mb["mase"].to_numpy())  # the test span did change
    test_b = {r["model"]: r["mase"] for r in mb.iter_rows(named=True)}
    assert test_b["seasonal_naive"] < 1e-9 < test_b["lstm"]  # ... where the test span would have said otherwise


def test_a_network_that_loses_everywhere_still_leaves_forecasts_to_serve(tmp_path):
    csv = tmp_path / "obs.csv"
    _panel().write_csv(csv)
    store = open_store(str(tmp_path / "s"))
    # one optimiser step, no baseline skip, no window normalisation: a network that cannot win
    bad = _params(str(csv), model=ModelConfig(hidden_size=4, num_layers=1, dropout=0.0, norm="none", skip="none"),
                  train=TrainConfig(max_steps=1, steps_per_epoch=1, learning_rate=1e-5))
    out = retrain_flow(bad, store=store.url)
    overall = {r["model"]: r["mase"] for r in out["metrics"].filter(pl.col("series_id") == "ALL").iter_rows(named=True)}
    assert overall["lstm"] > 2 * overall["seasonal_naive"]
    weights = _bundle_json(store, "lstm", out["version"], "preprocessing.json")["combination"]
    assert weights["pooled_weights"][weights["candidates"].index("lstm")] < 0.05  # the backtest all but drops it
    assert out["promoted"], out["decision"]  # the first model is always servable
    assert overall["served"] < overall["lstm"] / 2
    as_of = dt.date(2024, 1, 1) + dt.timedelta(days=239)
    scored = score_flow(ScoreParams(data=str(csv), as_of=as_of), store=store.url)
    assert scored["series"] == 4 and not scored["skipped"]
    frame = read_forecasts(store, "lstm", as_of)
    assert frame.height == 4 * 7 and frame["lower"].is_not_null().all() and frame["forecast"].is_finite().all()


def test_a_layout_2_partition_still_reads(tmp_path):
    store = open_store(str(tmp_path / "s"))
    as_of = dt.date(2024, 5, 1)
    old = pl.DataFrame({"series_id": ["a"], "timestamp": [dt.datetime(2024, 5, 2)], "horizon": [1],
                        "forecast": [1.0], "lower": [None], "upper": [None], "model": ["lstm"],
                        "model_version": ["v1"], "as_of": [as_of]},
                       schema_overrides={"horizon": pl.Int32, "lower": pl.Float64, "upper": pl.Float64,
                                         "timestamp": pl.Datetime("us")})
    buf = io.BytesIO()
    old.write_parquet(buf, metadata={"nightcast.forecasts_layout": "2"})
    store.write_bytes(forecasts_key("lstm", as_of), buf.getvalue())
    frame = read_forecasts(store, "lstm", as_of)
    assert frame["method"].to_list() == ["lstm"] and "method" in frame.columns
    assert FORECASTS_LAYOUT == "4"


def test_a_series_shorter_than_lookback_plus_horizon_is_trained_on_and_forecast(tmp_path):
    panel = _panel()
    short = (panel.filter(pl.col("series_id") == "s1").tail(90)  # 90 days; the lookback alone is 100
             .with_columns(pl.lit("short").alias("series_id")))
    csv = tmp_path / "obs.csv"
    pl.concat([panel, short]).write_csv(csv)
    store = open_store(str(tmp_path / "s"))
    out = retrain_flow(_params(str(csv), window=WindowConfig(horizon=7, lookback=100)), store=store.url)
    assert out["short_series"] == []  # padded windows: nothing dropped
    pre = _bundle_json(store, "lstm", out["version"], "preprocessing.json")
    assert "short" in pre["combination"]["per_series"] and "short" in pre["features"]["target_stats"]
    as_of = dt.date(2024, 1, 1) + dt.timedelta(days=239)
    scored = score_flow(ScoreParams(data=str(csv), as_of=as_of), store=store.url)
    frame = read_forecasts(store, "lstm", as_of).filter(pl.col("series_id") == "short")
    assert "short" not in scored["skipped"] and frame.height == 7
    assert frame["method"][0] == "combination"


def test_a_series_the_bundle_never_saw_is_forecast_by_the_network_and_changes_no_other(tmp_path):
    """A series that appears after training (or lies outside a retrain's sample) gets scalers from its own
    recent history at scoring, so the global network forecasts it and its interval has a width; the other
    series' forecasts are exactly what they are without it."""
    panel = _panel()
    csv = tmp_path / "obs.csv"
    panel.write_csv(csv)
    store = open_store(str(tmp_path / "s"))
    retrain_flow(_params(str(csv)), store=store.url)
    new = (panel.filter(pl.col("series_id") == "s2").tail(60)
           .with_columns(pl.lit("new").alias("series_id"),
                         (pl.col("target").cast(pl.Float64) * 3 + 500).round(4).cast(pl.String)))
    with_new = tmp_path / "with_new.csv"
    pl.concat([panel, new]).write_csv(with_new)
    as_of = dt.date(2024, 1, 1) + dt.timedelta(days=239)
    scored = score_flow(ScoreParams(data=str(with_new), as_of=as_of), store=store.url)
    assert scored["series"] == 5 and not scored["skipped"]
    both = read_forecasts(store, "lstm", as_of)
    fresh = both.filter(pl.col("series_id") == "new")
    assert fresh.height == 7 and fresh["forecast"].is_finite().all()
    assert fresh["lower"].is_not_null().all() and (fresh["upper"] > fresh["lower"]).all()  # scaled: has a width
    assert fresh["forecast"].mean() > 600  # on its own level (s2's ~150, times 3, plus 500), not another's
    score_flow(ScoreParams(data=str(csv), as_of=as_of), store=store.url)
    alone = read_forecasts(store, "lstm", as_of)
    assert both.filter(pl.col("series_id") != "new").drop("model_version").equals(alone.drop("model_version"))


def test_new_series_scalers_follow_the_training_rule_on_observed_values_only():
    from nightcast.tasks.data.features import FeatureState, with_new_series

    state = FeatureState("robust", {"a": [1.0, 2.0]}, {}, {}, [], [])
    clean = pl.DataFrame({"series_id": ["a"] * 3 + ["b"] * 5 + ["c"] * 2,
                          "target": [9.0, 9.0, 9.0, 1.0, 2.0, 3.0, 4.0, 100.0, 5.0, 5.0],
                          "observed": [True] * 7 + [True, False, True]})
    got = with_new_series(state, clean)
    assert got.target_stats["a"] == [1.0, 2.0]  # known series keep their fitted scalers
    b = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    assert got.target_stats["b"] == pytest.approx([np.median(b), np.quantile(b, 0.75) - np.quantile(b, 0.25)])
    assert got.target_stats["c"] == [5.0, 1.0]  # the filled step is not a value; a flat series gets scale 1
    assert state.target_stats == {"a": [1.0, 2.0]}  # the bundle's own state is not changed
    assert with_new_series(got, clean) is got  # nothing new: the same state


def test_a_retrain_on_a_sample_of_the_series_still_forecasts_every_series(tmp_path):
    """``sample``: training, the backtest and the bundle's scalers see only the sampled series (the stable
    hash); scoring forecasts all of them, the others through the network with their own scalers."""
    from nightcast.tasks.data.ingest import sample_of

    panel = pl.concat([_panel().with_columns((pl.col("series_id") + f"-{k}").alias("series_id"),
                                             (pl.col("target").cast(pl.Float64) + 10 * k).round(4).cast(pl.String))
                       for k in range(3)])  # 12 series
    csv = tmp_path / "obs.csv"
    panel.write_csv(csv)
    sampled, _, _ = sample_of(str(csv), ColumnMap(), 0.5)
    assert 0 < len(sampled) < 12
    store = open_store(str(tmp_path / "s"))
    out = retrain_flow(_params(str(csv), sample=0.5), store=store.url)
    assert out["promoted"], out["decision"]
    features = _bundle_json(store, "lstm", out["version"], "preprocessing.json")["features"]
    assert sorted(features["target_stats"]) == sampled  # trained and scaled on the sample alone
    as_of = dt.date(2024, 1, 1) + dt.timedelta(days=239)
    scored = score_flow(ScoreParams(data=str(csv), as_of=as_of), store=store.url)
    assert scored["series"] == 12 and not scored["skipped"]
    frame = read_forecasts(store, "lstm", as_of)
    assert frame.height == 12 * 7 and frame["forecast"].is_finite().all() and frame["lower"].is_not_null().all()


def test_the_network_windows_only_the_rows_its_last_window_and_lags_read(tmp_path, monkeypatch):
    """Scoring transforms and windows each series' last ``lookback + max(lags)`` cleaned rows only: the
    forecasts are exactly those made from the whole cleaned tail (a lag must still find its row)."""
    from nightcast.schemas.params import FeatureConfig
    from nightcast.tasks.data.ingest import load_observations
    from nightcast.tasks.data.validate import validate_observations
    from nightcast.tasks.ops.registry import load_champion
    import nightcast.tasks.serving.score as score_mod

    csv = tmp_path / "obs.csv"
    _panel().write_csv(csv)
    store = open_store(str(tmp_path / "s"))
    retrain_flow(_params(str(csv), features=FeatureConfig(seasonal_lags=[7, 14])), store=store.url)
    bundle = load_champion(store, "lstm")
    assert bundle.preprocessing["features"]["lags"] == [7, 14]
    valid = validate_observations(load_observations(str(csv))).valid
    as_of = valid["timestamp"].max().date()
    cut, _ = score_mod.forecast_from_bundle(bundle, valid, as_of)
    real = score_mod.series_tails
    kept = []

    def everything(frame, n):  # noqa: ANN001, ANN202 - every cleaned row scoring has
        kept.append(n)
        return real(frame, n + 10_000)

    monkeypatch.setattr(score_mod, "series_tails", everything)
    whole, _ = score_mod.forecast_from_bundle(bundle, valid, as_of)
    lookback = bundle.config["params"]["window"]["lookback"]
    assert lookback + 14 in kept  # the network's cut was taken (and undone here)
    assert cut["method"].unique().to_list() == ["combination"]
    assert cut.equals(whole)
