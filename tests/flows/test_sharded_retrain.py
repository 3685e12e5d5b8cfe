"""A retrain that validates and cleans the catalogue shard by shard (``--shards``) trains on what the plain
run trains on when the sample is every series, and otherwise on a hash sample drawn from every shard."""

from __future__ import annotations

import datetime as dt
import json

import polars as pl
import pytest

from nightcast.flows.retrain import retrain_flow
from nightcast.schemas.params import CleanConfig, RetrainParams
from nightcast.tasks.data.clean import CleanReport
from nightcast.tasks.data.sample import make_sample
from nightcast.tasks.data.sharded import ShardedCleaningError, agreed_kinds, decide_on_shard, in_sample
from nightcast.tasks.ops.registry import load_champion
from nightcast.tasks.ops.storage import open_store
from nightcast.tasks.serving.shard import shard_of, write_shard_layout
from tests.conftest import fast_params

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _panel(root, n_series: int = 8, seed: int = 5, no_id: bool = True) -> tuple[str, pl.DataFrame]:
    """The sample panel with one unreadable target (quarantined), two rows with no series id (``no_id``:
    quarantined too; a shard layout cannot hold them) and promo codes that are digits everywhere but in one
    series: most shards read the column as numbers, the catalogue as text."""
    raw = make_sample(n_series=n_series, days=14, seed=seed)
    ids = sorted(raw["series_id"].unique().to_list())
    raw = raw.with_columns(pl.when((pl.col("series_id") == ids[0]) & (pl.col("promo") == "on")).then(pl.lit("BOGO"))
                           .when(pl.col("promo") == "on").then(pl.lit("1")).otherwise(pl.lit("0")).alias("promo"))
    raw = raw.with_row_index().with_columns(
        pl.when(pl.col("index") == 40).then(pl.lit("oops")).otherwise(pl.col("target")).alias("target")).drop("index")
    if no_id:
        raw = pl.concat([raw, raw.head(2).with_columns(pl.lit(None, pl.String).alias("series_id"))])
    data = root / "obs.parquet"
    raw.sort("series_id").write_parquet(data)
    return str(data), raw


def _quarantined(store, out: dict) -> pl.DataFrame:
    """Every quarantined row the run wrote (one file, or a folder of one file per shard), without the row
    number (a shard numbers the rows it read)."""
    st = open_store(store)
    keys = [k for k in st.list("quarantine/") if k.endswith(".parquet")]
    frames = [pl.read_parquet(st.read_bytes(k)) for k in keys]
    return pl.concat(frames).drop("_row").sort(pl.all()) if frames else pl.DataFrame()


def test_every_series_sampled_trains_what_the_plain_run_trains(tmp_path, caplog):
    """shards=3, sample 1: the same clean rows, so the same windows, network, backtest, served choice and
    cleaning report as the run that reads everything in one process; the quarantined rows are the same; the
    covariate some shards read as numbers is text, as in the whole catalogue (those shards cleaned again)."""
    data, _ = _panel(tmp_path)
    plain = retrain_flow(fast_params(data), store=str(tmp_path / "plain"))
    sharded = retrain_flow(fast_params(data, shards=3), store=str(tmp_path / "sharded"))
    assert "cleaning shard(s) [" in caplog.text and "again with these kinds" in caplog.text
    assert sharded["metrics"].equals(plain["metrics"])
    assert sharded["served"] == plain["served"] and sharded["weights"] == plain["weights"]
    assert sharded["cleaning"] == plain["cleaning"]
    assert sharded["rows"] == plain["rows"] and sharded["quarantined_rows"] == plain["quarantined_rows"] >= 2
    assert sharded["quarantine"].endswith("/")  # a folder: a file per shard that had bad rows
    assert _quarantined(str(tmp_path / "sharded"), sharded).equals(_quarantined(str(tmp_path / "plain"), plain))
    bundles = [load_champion(open_store(str(tmp_path / s)), "lstm") for s in ("plain", "sharded")]
    assert [b.preprocessing["features"]["categories"].keys() for b in bundles] == [{"promo"}, {"promo"}]
    data_p, data_s = (b.manifest["data"] for b in bundles)
    assert {k: data_s[k] for k in ("rows", "series", "quarantined", "start", "end")} == {
        k: data_p[k] for k in ("rows", "series", "quarantined", "start", "end")}
    assert data_s["sample"] == {"rows": data_p["rows"], "series": data_p["series"]}
    assert data_s["fingerprint"] != data_p["fingerprint"]  # the shards' fingerprints, hashed: its own definition
    again = retrain_flow(fast_params(data, shards=3), store=str(tmp_path / "again"))
    assert again["fingerprint"] == sharded["fingerprint"]


def test_a_sample_draws_series_from_every_shard_and_the_bundle_counts_the_catalogue(tmp_path):
    """On the layout `nightcast partition` wrote: 24 series in 3 shards, half of each shard's series trained on
    (the same ones every run); the bundle's data counts every series read, and its own sample."""
    data, raw = _panel(tmp_path, n_series=24, seed=2, no_id=False)
    layout = str(tmp_path / "layout")
    write_shard_layout(data, layout, 3)
    out = retrain_flow(fast_params(layout, shards=3, sample=0.5), store=str(tmp_path / "s"))
    bundle = load_champion(open_store(str(tmp_path / "s")), "lstm")
    trained_on = set(bundle.preprocessing["features"]["target_stats"])
    ids = raw["series_id"].unique()
    expected = set(ids.filter(in_sample(ids, 0.5)).to_list())
    assert trained_on == expected and 6 <= len(expected) <= 18
    assert set(shard_of(pl.Series(sorted(expected)), 3).to_list()) == {0, 1, 2}  # every shard gives series
    d = bundle.manifest["data"]
    assert d["series"] == 24 and d["sample"]["series"] == len(expected) and d["quarantined"] >= 1
    assert out["rows"] == raw.height


def test_in_sample_takes_a_share_of_every_shard_and_is_stable():
    """10 %: series from every shard, for 3, 8 or 200 shards (the hash's low bits that pick a shard, read as
    the sample's bucket too, would put the whole sample in shards 0-99 of 200), and the same series whatever
    the shard count."""
    ids = pl.Series([f"item-{i}" for i in range(40_000)])
    picked = in_sample(ids, 0.1)
    assert picked.equals(in_sample(ids.reverse(), 0.1).reverse())  # by id, not by position
    for n in (3, 8, 200):  # 13,333, 5,000 and 200 series a shard
        per_shard = (pl.DataFrame({"shard": shard_of(ids, n), "picked": picked})
                     .group_by("shard").agg(pl.col("picked").sum().alias("n"), pl.col("picked").mean().alias("share")))
        assert per_shard.height == n, n
        assert (per_shard["n"] >= 5).all() if n == 200 else per_shard["share"].is_between(0.09, 0.11).all(), n
    assert 0.09 < picked.mean() < 0.11
    assert in_sample(ids, 1.0).all() and 0 < in_sample(ids, 0.001).sum() < 100


def test_a_sharded_retrain_samples_the_series_a_plain_sample_reads(tmp_path):
    """The same share picks the same series with --shards 2 or 5 and with a plain --sample (input not in the
    shard layout): the training sample does not move with the shard count."""
    from nightcast.schemas.params import ColumnMap
    from nightcast.tasks.data.ingest import sample_of

    data, raw = _panel(tmp_path, n_series=30, seed=2, no_id=False)
    plain, _, _ = sample_of(data, ColumnMap(), 0.4)
    trained = []
    for shards in (2, 5):
        retrain_flow(fast_params(data, shards=shards, sample=0.4), store=str(tmp_path / f"s{shards}"))
        bundle = load_champion(open_store(str(tmp_path / f"s{shards}")), "lstm")
        trained.append(sorted(bundle.preprocessing["features"]["target_stats"]))
    assert trained[0] == trained[1] == sorted(plain) and 5 <= len(plain) <= 25


def test_kinds_text_wins():
    assert agreed_kinds([{"a": "numeric", "b": "numeric"}, {"a": "categorical"}, {"c": "numeric"}]) == {
        "a": "categorical", "b": "numeric", "c": "numeric"}


def test_a_business_day_calendar_is_refused_with_the_way_out(tmp_path):
    days = pl.date_range(dt.date(2024, 1, 1), dt.date(2024, 3, 1), "1d", eager=True)
    days = days.filter(days.dt.weekday() <= 5)
    frame = pl.DataFrame({"series_id": ["a"] * len(days) + ["b"] * len(days),
                          "timestamp": pl.concat([days, days]).cast(pl.Datetime("us")),
                          "target": [float(i) for i in range(2 * len(days))]})
    path = tmp_path / "d.parquet"
    frame.write_parquet(path)
    with pytest.raises(ShardedCleaningError, match="regular calendar.*without --shards"):
        decide_on_shard(str(path), RetrainParams().columns, None, (0, 1), CleanConfig(), 0.7)


def test_iqr_outliers_cannot_be_sharded():
    with pytest.raises(ValueError, match="IQR"):
        RetrainParams(shards=2, clean=CleanConfig(outliers="iqr"))


def test_odd_shards_train_what_the_plain_run_trains(tmp_path):
    """One shard whose every temperature is blank (validation alone would type it as text there; the catalogue
    reads numbers) and one whose every target is blank (nothing to clean: its series are listed empty), with
    every series sampled: the same run as one process, and the decide step's shard named when it is bad."""
    data, raw = _panel(tmp_path, n_series=12, seed=3)
    raw = raw.filter(pl.col("series_id").is_not_null())
    shard = shard_of(raw["series_id"], 3)
    raw = raw.with_columns(pl.when(shard == 0).then(None).otherwise(pl.col("temperature")).alias("temperature"),
                           pl.when(shard == 1).then(None).otherwise(pl.col("target")).alias("target"))
    raw.write_parquet(data)
    plain = retrain_flow(fast_params(data), store=str(tmp_path / "plain"))
    sharded = retrain_flow(fast_params(data, shards=3), store=str(tmp_path / "sharded"))
    assert sharded["metrics"].equals(plain["metrics"]) and sharded["cleaning"] == plain["cleaning"]
    assert plain["cleaning"]["empty_series_count"] == int((shard == 1).sum() and raw.filter(shard == 1)["series_id"].n_unique())
    bundles = [load_champion(open_store(str(tmp_path / s)), "lstm") for s in ("plain", "sharded")]
    assert [set(b.preprocessing["features"]["numeric_stats"]) for b in bundles] == [{"temperature"}] * 2
    raw.with_columns(pl.lit("x").alias("target")).write_parquet(data)  # every row bad: the first shard read fails
    with pytest.raises(Exception, match=r"shard \d of 3 of .*failed validation"):
        retrain_flow(fast_params(data, shards=3), store=str(tmp_path / "bad"))


def test_merged_report_equals_the_whole_catalogues_report():
    """40 series cleaned whole, and cleaned in 3 hash shards whose reports are cut to 20 series and merged:
    the same report as the manifest records it (``to_json(worst=20)``: lists, ties, the listed note)."""
    from nightcast.tasks.data.clean import Calendar, clean_observations
    from nightcast.tasks.data.validate import validate_observations

    raw = make_sample(n_series=40, days=10, seed=11)
    valid = validate_observations(raw).valid
    cfg, calendar = CleanConfig(season_length=24), Calendar("1h")
    whole = clean_observations(valid, cfg, calendar)[1]
    shard = shard_of(valid["series_id"], 3)
    parts = [clean_observations(valid.filter(shard == k), cfg, calendar)[1].listed() for k in range(3)]
    merged = CleanReport.merged(parts)
    assert whole.series == 40 and merged.to_json(worst=20) == whole.to_json(worst=20)
    assert "by_series_listed" in merged.to_json(worst=20)


def test_merged_report_lists_the_worst_of_every_part():
    parts = [CleanReport(series=2, outliers=3, off_grid_by_series={"a": 5, "b": 1}, empty_series=["x"],
                         by_series={"a": {"outliers": 3}}),
             CleanReport(series=1, outliers=1, off_grid_by_series={"c": 5, "d": 9}, empty_series=["w"],
                         by_series={"c": {"outliers": 1}})]
    merged = CleanReport.merged(parts, worst=2)
    assert (merged.series, merged.outliers) == (3, 4)
    assert merged.off_grid_by_series == {"d": 9, "a": 5}  # ties by id
    assert merged.empty_series == ["w", "x"]
    assert merged.by_series == {"a": {"outliers": 3}, "c": {"outliers": 1}}
    assert json.dumps(merged.to_json())  # what the bundle records


def test_a_shard_with_too_many_bad_rows_stops_the_run_naming_the_shard(tmp_path):
    """Validation's share limit applies to each shard's own rows; the error says which shard, then which rows."""
    data, raw = _panel(tmp_path, no_id=False)
    layout = str(tmp_path / "layout")
    bad = raw["series_id"].unique().sort()[3]
    raw.with_columns(pl.when(pl.col("series_id") == bad).then(pl.lit("x")).otherwise(pl.col("target"))
                     .alias("target")).write_parquet(data)
    write_shard_layout(data, layout, 3)
    shard = shard_of(pl.Series([bad]), 3)[0]
    store = str(tmp_path / "s")
    with pytest.raises(Exception, match=rf"shard {shard} of 3 of .*layout.*failed validation"):
        retrain_flow(fast_params(layout, shards=3), store=store)
    assert not open_store(store).exists("models/lstm/champion.json")


def test_tune_refuses_a_sharded_base():
    from nightcast.schemas.params import TuneParams

    with pytest.raises(ValueError, match="base.shards must be 1"):
        TuneParams(base=RetrainParams(shards=4))
