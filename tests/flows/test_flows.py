"""End to end: the real flows on a local store and on a real S3 endpoint (moto server)."""

import datetime as dt
import io
import json
import os

import numpy as np
import polars as pl

import pytest

from nightcast.flows.retrain import retrain_flow
from nightcast.flows.score import score_flow
from nightcast.schemas.frames import FORECASTS_LAYOUT, Forecasts
from nightcast.schemas.params import PromotionRule, ScoreParams, TrainConfig
from nightcast.tasks.ops.registry import RegistryError, load_champion
from nightcast.tasks.serving.score import ScoreError, read_forecasts
from nightcast.tasks.ops.storage import open_store
from nightcast.tasks.data.validate import DataValidationError
from tests.conftest import fast_params

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _last_date(sample_raw) -> dt.date:
    return sample_raw.select(pl.col("timestamp").str.to_datetime().max()).item().date()


@pytest.fixture(scope="module")
def trained_store(tmp_path_factory, sample_raw, prefect_harness):
    root = tmp_path_factory.mktemp("store")
    csv = root / "in.csv"
    sample_raw.write_csv(csv)
    out = retrain_flow(fast_params(str(csv)), store=str(root / "s"))
    return str(root / "s"), str(csv), out


def test_retrain_registers_bundle_and_champion(trained_store):
    store_url, csv, out = trained_store
    store = open_store(store_url)
    # a fresh store always promotes its first model; what can fail is whether it earns it on the test span
    assert out["comparison"]["new"] < out["comparison"]["seasonal_naive"], out["comparison"]
    assert out["decision"].startswith("promoted: first servable model") and "beats seasonal naive" in out["decision"]
    pointer = json.loads(store.read_bytes("models/lstm/champion.json"))
    assert pointer["version"] == out["version"]
    prefix = f"models/lstm/versions/{out['version']}"
    manifest = json.loads(store.read_bytes(f"{prefix}/manifest.json"))
    assert manifest["data"]["fingerprint"] == out["fingerprint"] and manifest["seed"] == 42
    assert {"torch", "lightning", "polars", "prefect"} <= set(manifest["libraries"])
    assert manifest["data"]["quarantined"] == 3  # the sample's inf and duplicated key
    assert store.list("quarantine/")
    q = pl.read_parquet(io.BytesIO(store.read_bytes(store.list("quarantine/")[0])))
    assert q.height == 3 and q["_rules"].str.contains("finite").any()
    # LSTM and both baselines were scored on exactly the same test points
    overall = out["metrics"].filter(pl.col("series_id") == "ALL")
    assert set(overall["model"]) == {"lstm", "served", "naive", "seasonal_naive", "theta"}
    assert overall["n"].n_unique() == 1
    config = json.loads(store.read_bytes(f"{prefix}/config.json"))
    assert config["calendar"]["frequency"] == "1h" and config["params"]["window"]["horizon"] == 6
    for plot in ("plots/learning_curve.png", "plots/forecast_vs_actual.png"):  # diagnostics, checksummed
        assert plot in manifest["files"] and store.read_bytes(f"{prefix}/{plot}")[:4] == b"\x89PNG"
    preprocessing = json.loads(store.read_bytes(f"{prefix}/preprocessing.json"))
    assert "target_stats" in preprocessing["features"]
    # 80% conformal intervals, calibrated on validation windows, coverage measured on the test span
    iv = out["intervals"]
    assert iv["level"] == 0.8 and len(iv["half_widths"]) == 6 and preprocessing["conformal"] == iv
    assert 0.5 < iv["test"]["coverage"] <= 1.0 and iv["test"]["points"] == overall["n"][0]


def test_score_writes_a_valid_partition_idempotently(trained_store, sample_raw):
    store_url, csv, _ = trained_store
    store = open_store(store_url)
    as_of = _last_date(sample_raw)
    other = dt.date(2000, 1, 1)  # a neighbouring partition that must survive
    store.write_bytes(f"forecasts/model=lstm/as_of={other}/forecasts.parquet", b"keep me")
    first = score_flow(ScoreParams(data=csv, as_of=as_of), store=store_url)
    key = f"forecasts/model=lstm/as_of={as_of}/forecasts.parquet"
    frame = pl.read_parquet(io.BytesIO(store.read_bytes(key)))
    Forecasts.validate(frame, lazy=True)
    assert frame["lower"].null_count() == 0 and (frame["lower"] < frame["upper"]).all()
    meta = pl.read_parquet_metadata(io.BytesIO(store.read_bytes(key)))
    assert meta["nightcast.forecasts_layout"] == FORECASTS_LAYOUT
    assert meta["nightcast.model_version"] == first["model_version"]
    # site-2's 20-hour outage lies inside its last 24-hour season: no forecast is honest, skipped with the reason
    assert first["skipped"] == {"site-2": "its last season contains a long gap"}
    assert frame.height == 2 * 6 and first["series"] == 2
    # every series carries what produced it: the combination its backtest weights make (or the one
    # candidate that carries them all)
    bundle = load_champion(store, "lstm")
    weights = bundle.preprocessing["combination"]
    chosen = frame.group_by("series_id").agg(pl.col("method").unique())
    for sid, methods in chosen.iter_rows():
        w = dict(zip(weights["candidates"], weights["per_series"][sid]))
        assert methods == ["combination" if max(w.values()) < 0.999 else max(w, key=w.get)]
        assert w["lstm"] > 0  # the network is in it
    assert frame["timestamp"].min() > dt.datetime.combine(as_of, dt.time(23))
    store.write_bytes(f"forecasts/model=lstm/as_of={as_of}/stale-part.parquet", b"old")
    score_flow(ScoreParams(data=csv, as_of=as_of), store=store_url)
    assert store.list(f"forecasts/model=lstm/as_of={as_of}/") == [key]  # replaced, nothing left over
    assert pl.read_parquet(io.BytesIO(store.read_bytes(key))).equals(frame)  # same inputs, same forecasts
    assert store.read_bytes(f"forecasts/model=lstm/as_of={other}/forecasts.parquet") == b"keep me"


def test_score_sees_only_data_up_to_as_of(trained_store, sample_raw):
    store_url, csv, _ = trained_store
    as_of = _last_date(sample_raw) - dt.timedelta(days=3)
    score_flow(ScoreParams(data=csv, as_of=as_of), store=store_url)
    frame = pl.read_parquet(io.BytesIO(open_store(store_url).read_bytes(
        f"forecasts/model=lstm/as_of={as_of}/forecasts.parquet")))
    assert frame.group_by("series_id").agg(pl.col("timestamp").min())["timestamp"].to_list() == \
        [dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time())] * 3


def test_unknown_as_of_fails_and_writes_nothing(trained_store):
    store_url, csv, _ = trained_store
    with pytest.raises(ScoreError, match="unknown as_of 2030-01-01"):
        score_flow(ScoreParams(data=csv, as_of=dt.date(2030, 1, 1)), store=store_url)
    assert not open_store(store_url).list("forecasts/model=lstm/as_of=2030-01-01")


def test_failed_or_worse_retrain_never_moves_the_champion(trained_store, tmp_path, sample_raw):
    store_url, csv, out = trained_store
    store = open_store(store_url)
    before = store.read_bytes("models/lstm/champion.json")
    bad = tmp_path / "bad.csv"
    sample_raw.with_columns(pl.lit("n/a").alias("target")).write_csv(bad)
    with pytest.raises(DataValidationError, match="column 'target', rule target_numeric"):
        retrain_flow(fast_params(str(bad)), store=store_url)
    worse = retrain_flow(fast_params(csv, promotion=PromotionRule(min_improvement=0.99)), store=store_url)
    assert not worse["promoted"] and "not promoted" in worse["decision"]
    assert worse["comparison"]["champion_version"] == out["version"]
    assert store.read_bytes("models/lstm/champion.json") == before
    assert store.exists(f"models/lstm/versions/{worse['version']}/manifest.json")  # kept for inspection


def test_a_bundle_that_lost_a_file_while_written_is_never_promoted(tmp_path, sample_raw, monkeypatch):
    """A writer frozen for hours while the sweep of another run deletes its files: when it wakes and finishes,
    the bundle is read back and verified before the pointer may name it; the champion stays where it was."""
    import nightcast.tasks.ops.publish
    from nightcast.tasks.ops.registry import sweep_incomplete

    csv = tmp_path / "in.csv"
    sample_raw.write_csv(csv)
    store_url = str(tmp_path / "s")
    first = retrain_flow(fast_params(str(csv)), store=store_url)
    store = open_store(store_url)
    before = store.read_bytes("models/lstm/champion.json")
    real_save = nightcast.tasks.ops.publish.save_bundle

    def frozen_then_swept(st, name, version, **kw):
        manifest = kw["manifest"]
        # the writer writes everything but its manifest, then is frozen; 7 hours later another run sweeps
        for fname, data in {"config.json": b"{}", "weights.pt": b"partial"}.items():
            st.write_bytes(f"models/{name}/versions/{version}/{fname}", data)
        later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=7)
        assert sweep_incomplete(st, name, now=later) == [version]
        # the writer wakes: it writes the whole bundle again, but the sweep takes weights.pt meanwhile
        prefix = real_save(st, name, version, manifest=manifest, **{k: v for k, v in kw.items() if k != "manifest"})
        st.delete(f"{prefix}/weights.pt")
        return prefix

    monkeypatch.setattr(nightcast.tasks.ops.publish, "save_bundle", frozen_then_swept)
    with pytest.raises(RegistryError, match="lacks weights.pt"):
        retrain_flow(fast_params(str(csv), train=TrainConfig(max_epochs=15, patience=4, batch_size=64, seed=9,
                                                             early_stopping=True)), store=store_url)
    assert store.read_bytes("models/lstm/champion.json") == before
    assert json.loads(before)["version"] == first["version"]


def test_same_inputs_give_the_same_model(trained_store):
    store_url, csv, out = trained_store
    again = retrain_flow(fast_params(csv, model_name="lstm-repro"), store=store_url)
    store = open_store(store_url)
    w1 = store.read_bytes(f"models/lstm/versions/{out['version']}/weights.pt")
    w2 = store.read_bytes(f"models/lstm-repro/versions/{again['version']}/weights.pt")
    import torch
    a, b = (torch.load(io.BytesIO(w), weights_only=True) for w in (w1, w2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert again["fingerprint"] == out["fingerprint"]


def test_corrupt_or_missing_champion_is_a_clear_score_error(tmp_path, sample_raw, sample_csv):
    store_url = str(tmp_path / "empty")
    with pytest.raises(RegistryError, match="no champion"):
        score_flow(ScoreParams(data=sample_csv, as_of=_last_date(sample_raw)), store=store_url)
    open_store(store_url).write_bytes("models/lstm/champion.json", b"\x00garbage")
    with pytest.raises(RegistryError, match="corrupt"):
        score_flow(ScoreParams(data=sample_csv, as_of=_last_date(sample_raw)), store=store_url)


def test_a_series_born_after_the_backtest_training_span_is_forecast_by_the_refit_network(tmp_path, sample_raw,
                                                                                        monkeypatch):
    import nightcast.tasks.serving.score as score_module

    short = sample_raw.filter(pl.col("series_id") == "site-1").sort("timestamp").tail(30).with_columns(pl.lit("tiny").alias("series_id"))
    csv = tmp_path / "with-short.csv"
    pl.concat([sample_raw, short]).write_csv(csv)
    out = retrain_flow(fast_params(str(csv)), store=str(tmp_path / "s"))
    # the backtest network never saw it (no data in its training span); the refit one trained on it
    assert out["short_series"] == []
    bundle = load_champion(open_store(str(tmp_path / "s")), "lstm")
    assert "tiny" in bundle.preprocessing["features"]["target_stats"]
    seen = {}
    serve = score_module._serve

    def spy(bundle, candidates, ids):  # noqa: ANN001, ANN202 - what scoring combined, per series
        seen.update({m: dict(zip(ids, f)) for m, f in candidates.items()})
        return serve(bundle, candidates, ids)

    monkeypatch.setattr(score_module, "_serve", spy)
    as_of = _last_date(sample_raw)
    scored = score_flow(ScoreParams(data=str(csv), as_of=as_of), store=str(tmp_path / "s"))
    assert "tiny" not in scored["skipped"] and scored["series"] == 3
    assert np.isfinite(seen["lstm"]["tiny"]).all()  # the network forecast it
    tiny = read_forecasts(open_store(str(tmp_path / "s")), "lstm", as_of).filter(pl.col("series_id") == "tiny")
    assert tiny.height == 6 and tiny["method"].unique().to_list() == ["combination"]
    np.testing.assert_allclose(  # seasonal naive, one of the candidates: the same hours of the last day
        seen["seasonal_naive"]["tiny"],
        short.with_columns(pl.col("target").cast(pl.Float64, strict=False))["target"].to_numpy()[-24:-18])


def test_retrain_then_score_on_s3(s3_env, sample_raw):
    """Data, bundle, champion and forecasts all in a real S3 endpoint (moto server over HTTP)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    s3.put_object(Bucket=s3_env, Key="raw/obs.csv", Body=sample_raw.write_csv().encode())
    data, store_url = f"s3://{s3_env}/raw/obs.csv", f"s3://{s3_env}/nightcast"
    out = retrain_flow(fast_params(data), store=store_url)
    as_of = _last_date(sample_raw)
    score_flow(ScoreParams(data=data, as_of=as_of), store=store_url)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_env, Prefix="nightcast/")["Contents"]}
    assert f"nightcast/models/lstm/versions/{out['version']}/weights.pt" in keys
    pointer = json.loads(s3.get_object(Bucket=s3_env, Key="nightcast/models/lstm/champion.json")["Body"].read())
    assert pointer["version"] == out["version"]
    body = s3.get_object(Bucket=s3_env, Key=f"nightcast/forecasts/model=lstm/as_of={as_of}/forecasts.parquet")["Body"].read()
    frame = pl.read_parquet(io.BytesIO(body))
    Forecasts.validate(frame, lazy=True)
    assert frame["series_id"].n_unique() == 2 and frame["model_version"].unique().to_list() == [out["version"]]
    # polars reads the partition straight from S3 too
    from nightcast.tasks.data.ingest import storage_options
    lazy = pl.scan_parquet(f"s3://{s3_env}/nightcast/forecasts/model=lstm/as_of={as_of}/forecasts.parquet",
                           storage_options=storage_options())
    assert lazy.collect().height == frame.height


def test_derived_features_train_and_score_end_to_end(tmp_path, sample_raw, sample_csv):
    from nightcast.schemas.params import FeatureConfig

    store = str(tmp_path / "s")
    params = fast_params(sample_csv, features=FeatureConfig(calendar=["hour", "dow"], seasonal_lags=[24]),
                         promotion=PromotionRule(beat_seasonal_naive=False))
    out = retrain_flow(params, store=store)
    state = json.loads(open_store(store).read_bytes(
        f"models/lstm/versions/{out['version']}/preprocessing.json"))["features"]
    assert "lag__24" in state["past_columns"] and "cal__hour_sin" in state["future_columns"]
    scored = score_flow(ScoreParams(data=sample_csv, as_of=_last_date(sample_raw)), store=store)
    frame = pl.read_parquet(io.BytesIO(open_store(store).read_bytes(
        f"forecasts/model=lstm/as_of={_last_date(sample_raw)}/forecasts.parquet")))
    Forecasts.validate(frame)
    assert scored["rows"] == frame.height > 0  # calendar inputs for the horizon came from the timestamps alone


def test_scoring_cleans_only_the_tail_it_needs_and_forecasts_the_same(trained_store, sample_raw, monkeypatch):
    import nightcast.tasks.serving.score as score_mod
    from nightcast.tasks.data.validate import validate_observations

    store_url, _, _ = trained_store
    bundle = load_champion(open_store(store_url), "lstm")
    observations = validate_observations(sample_raw).valid
    as_of = _last_date(sample_raw)
    tail, _ = score_mod.forecast_from_bundle(bundle, observations, as_of)
    cut = score_mod._steps_before(dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time()),
                                  score_mod.Calendar.from_json(bundle.config["calendar"]), 10)
    assert observations.filter(pl.col("timestamp") < cut).height > 0  # the sample is longer than the tail
    monkeypatch.setattr(score_mod, "_steps_before", lambda *a: dt.datetime(1900, 1, 1))
    full, _ = score_mod.forecast_from_bundle(bundle, observations, as_of)
    assert tail.equals(full)


def test_yearly_data_with_a_cycle_is_trained_and_scored_on_that_season(tmp_path):
    """Yearly data has no calendar season: the cycle in the data becomes the season of the bundle, and
    scoring, its cleaning and its seasonal naive use the bundle's season, not the calendar's 1."""
    from nightcast.schemas.params import WindowConfig
    from tests.tasks.test_clean import _yearly_panel

    path = tmp_path / "yearly.csv"
    _yearly_panel(11, n_series=4, years=150).write_csv(path)
    store = str(tmp_path / "s")
    out = retrain_flow(fast_params(str(path), window=WindowConfig(lookback=22, horizon=6)), store=store)
    bundle = load_champion(open_store(store), "lstm")
    assert bundle.config["season_length"] == 11 and bundle.config["network_args"]["season"] == 11, out["decision"]
    as_of = dt.date(1949, 1, 1)
    score_flow(ScoreParams(data=str(path), as_of=as_of), store=store)
    frame = read_forecasts(open_store(store), "lstm", as_of)
    assert frame.height == 4 * 6 and frame["forecast"].is_finite().all()
