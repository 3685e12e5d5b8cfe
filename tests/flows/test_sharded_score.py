"""Sharded scoring gives exactly the single-task forecasts, and leaves nothing staged behind."""

import datetime as dt

import polars as pl
import pytest

from nightcast.flows.retrain import retrain_flow
from nightcast.flows.score import score_flow
from nightcast.schemas.params import ScoreParams
from nightcast.tasks.data.sample import make_sample
from nightcast.tasks.serving.score import read_forecasts
from nightcast.tasks.ops.storage import open_store
from tests.conftest import fast_params
from nightcast.tasks.serving.sharded import STAGING

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(scope="module")
def panel(tmp_path_factory, prefect_harness):
    """8 series; one stops two days early, so it is stale only against the other shards' newest step."""
    root = tmp_path_factory.mktemp("sharded")
    raw = make_sample(n_series=8, days=14, seed=5)
    ts = pl.col("timestamp").str.to_datetime()
    ids = sorted(raw["series_id"].unique().to_list())
    end = raw.select(ts.max()).item()
    raw = raw.filter((pl.col("series_id") != ids[-1]) | (ts < end - dt.timedelta(days=2)))
    # promo codes: digits everywhere but in one series, so most shards see only numbers in a column the
    # model reads as categorical (a shard must type it as trained, not by what its own rows look like)
    raw = raw.with_columns(pl.when((pl.col("series_id") == ids[0]) & (pl.col("promo") == "on")).then(pl.lit("BOGO"))
                           .when(pl.col("promo") == "on").then(pl.lit("1")).otherwise(pl.lit("0")).alias("promo"))
    # one unreadable target: quarantined by whichever process reads that series
    raw = raw.with_row_index().with_columns(
        pl.when(pl.col("index") == 40).then(pl.lit("oops")).otherwise(pl.col("target")).alias("target")).drop("index")
    data = root / "obs.parquet"
    raw.sort("series_id").write_parquet(data, row_group_size=500)
    store = str(root / "s")
    retrain_flow(fast_params(str(data)), store=store)
    return str(data), store, end.date(), ids[-1]


def test_sharded_forecasts_equal_the_single_task_run(panel):
    data, store, as_of, early = panel
    one = score_flow(ScoreParams(data=data, as_of=as_of), store=store)
    single = read_forecasts(open_store(store), "lstm", as_of).sort("series_id", "horizon")
    many = score_flow(ScoreParams(data=data, as_of=as_of, shards=3), store=store)
    sharded = read_forecasts(open_store(store), "lstm", as_of).sort("series_id", "horizon")
    assert sharded.equals(single)
    assert early in one["skipped"] and one["skipped"] == many["skipped"]
    assert (many["rows"], many["series"], many["methods"]) == (one["rows"], one["series"], one["methods"])
    assert many["quarantined_rows"] == one["quarantined_rows"] >= 1
    assert open_store(store).list(STAGING) == []  # staged parts are gone
    assert open_store(store).list(f"forecasts/model=lstm/as_of={as_of}/") == [
        f"forecasts/model=lstm/as_of={as_of}/forecasts.parquet"]


def test_more_shards_than_series_still_equal(panel):
    data, store, as_of, _ = panel
    score_flow(ScoreParams(data=data, as_of=as_of), store=store)
    single = read_forecasts(open_store(store), "lstm", as_of).sort("series_id", "horizon")
    score_flow(ScoreParams(data=data, as_of=as_of, shards=40), store=store)
    assert read_forecasts(open_store(store), "lstm", as_of).sort("series_id", "horizon").equals(single)


def test_sharded_run_on_the_shard_layout_equals_the_plain_run(panel, tmp_path, monkeypatch):
    """On a layout `nightcast partition` wrote, the flow plans from its manifest and reads no id (the id
    scan is made to fail); without the manifest (another writer's layout) it plans from the ids. Both give
    the plain run's forecasts."""
    from nightcast.flows import score
    from nightcast.tasks.serving.shard import LAYOUT_MANIFEST, write_shard_layout

    data, store, as_of, _ = panel
    score_flow(ScoreParams(data=data, as_of=as_of), store=store)
    single = read_forecasts(open_store(store), "lstm", as_of).sort("series_id", "horizon")
    write_shard_layout(data, str(tmp_path / "layout"), 3)

    def no_id_scan(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the planner read the id column")

    with monkeypatch.context() as m:
        m.setattr(score, "plan_step", no_id_scan)
        out = score_flow(ScoreParams(data=str(tmp_path / "layout"), as_of=as_of, shards=3), store=store)
    assert read_forecasts(open_store(store), "lstm", as_of).sort("series_id", "horizon").equals(single)
    assert out["quarantined_rows"] >= 1 and out["series"] == single["series_id"].n_unique()
    (tmp_path / "layout" / LAYOUT_MANIFEST).unlink()
    calls = []
    monkeypatch.setattr(score, "plan_step", lambda *a: calls.append(a) or score.load_series_ids(*a))
    score_flow(ScoreParams(data=str(tmp_path / "layout"), as_of=as_of, shards=3), store=store)
    assert calls and read_forecasts(open_store(store), "lstm", as_of).sort("series_id", "horizon").equals(single)


def test_a_layout_manifest_neither_loses_a_late_shard_nor_reads_a_misplaced_id(panel, tmp_path):
    """The manifest only sizes the tasks: a series that lands later in a shard the manifest counted empty is
    scored; one placed in another shard's folder than the hash puts it fails the run, naming it, before any
    forecast is written (the task that read the folder checks its ids)."""
    from nightcast.tasks.serving.shard import ShardLayoutError, layout_plan, shard_of, write_shard_layout

    data, store, as_of, _ = panel
    lay = tmp_path / "layout"
    write_shard_layout(data, str(lay), 12)
    plan = layout_plan(str(lay), 12)
    empty = [k for k in range(12) if plan.sizes[k] == 0]
    assert empty and plan.todo == [k for k in range(12) if plan.sizes[k]]  # 8 series in 12 shards
    before = score_flow(ScoreParams(data=str(lay), as_of=as_of, shards=12), store=store)
    raw = pl.read_parquet(data)
    first = raw["series_id"].min()
    late = next(f"late-{i}" for i in range(10_000) if shard_of(pl.Series([f"late-{i}"]), 12)[0] == empty[0])
    (lay / "nshards=12" / f"shard={empty[0]}").mkdir(parents=True)
    (raw.filter(pl.col("series_id") == first).with_columns(pl.lit(late).alias("series_id"))
     .write_parquet(lay / "nshards=12" / f"shard={empty[0]}" / "landed-later.parquet"))
    assert empty[0] in layout_plan(str(lay), 12).todo
    out = score_flow(ScoreParams(data=str(lay), as_of=as_of, shards=12), store=store)
    got = read_forecasts(open_store(store), "lstm", as_of)
    assert late in got["series_id"].to_list() and out["series"] == before["series"] + 1
    # a file of one shard moved into another's folder
    src = next(k for k in range(12) if plan.sizes[k])
    dst = next(k for k in range(12) if plan.sizes[k] and k != src)
    moved = next((lay / "nshards=12" / f"shard={src}").glob("*.parquet"))
    moved.rename(lay / "nshards=12" / f"shard={dst}" / "moved.parquet")
    with pytest.raises(ShardLayoutError, match=rf"sit in another shard's folder.*in shard={dst}, belongs in shard={src}"):
        score_flow(ScoreParams(data=str(lay), as_of=as_of, shards=12), store=store)
    assert read_forecasts(open_store(store), "lstm", as_of).equals(got)  # the partition as it was
    with pytest.raises(ShardLayoutError, match=r"for \[12\] shard\(s\), and this run asks for 5"):
        layout_plan(str(lay), 5)
    (lay / "nshards=12" / f"shard={dst}" / "moved.parquet").rename(moved)  # back; only data files make a shard
    (lay / "nshards=12" / f"shard={empty[1]}").mkdir()
    (lay / "nshards=12" / f"shard={empty[1]}" / "_SUCCESS").write_text("")
    assert empty[1] not in layout_plan(str(lay), 12).todo
    stray = lay / "nshards=12" / "shard=12"  # a folder no run of 12 shards reads
    stray.mkdir()
    (lay / "nshards=12" / f"shard={empty[0]}" / "landed-later.parquet").rename(stray / "x.parquet")
    with pytest.raises(ShardLayoutError, match=r"holds 'nshards=12/shard=12/x.parquet', outside the nshards=12/"):
        layout_plan(str(lay), 12)
    (lay / "_nightcast_layout.json").write_text("{}")
    with pytest.raises(ShardLayoutError, match="is not a layout manifest this version reads"):
        layout_plan(str(lay), 12)


def test_sharded_backfill_equals_the_plain_backfill(panel, tmp_path):
    from nightcast.flows.backfill import backfill_flow

    data, store, as_of, _ = panel
    start = as_of - dt.timedelta(days=3)
    plain = backfill_flow(start=start, end=as_of, overwrite=True, data=data, store=store, allow_look_ahead=True)
    expected = {d: read_forecasts(open_store(store), "lstm", d).sort("series_id", "horizon")
                for d in (start + dt.timedelta(days=i) for i in range(4))}
    sharded = backfill_flow(start=start, end=as_of, overwrite=True, data=data, shards=3, store=store,
                             allow_look_ahead=True)
    assert (sharded["done"], sharded["failed"]) == (plain["done"], plain["failed"]) == (4, 0)
    for day, frame in expected.items():
        assert read_forecasts(open_store(store), "lstm", day).sort("series_id", "horizon").equals(frame), day
    assert [r["series"] for r in sharded["table"]] == [r["series"] for r in plain["table"]]
    assert open_store(store).list(STAGING) == []


def test_shard_layout_and_sharded_score_on_s3(s3_env, sample_raw, monkeypatch):
    """`nightcast partition` into a real S3 endpoint, then a sharded run reading the layout from S3 and
    writing to an S3 store: the same forecasts as an unsharded run on the original file."""
    import os

    import boto3

    from nightcast.flows.cli import main
    from nightcast.tasks.serving.sharded import STAGING

    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    s3.put_object(Bucket=s3_env, Key="raw/obs.csv", Body=sample_raw.write_csv().encode())
    data, layout, store = (f"s3://{s3_env}/raw/obs.csv", f"s3://{s3_env}/raw/by-shard/",
                           f"s3://{s3_env}/nightcast")
    assert main(["partition", "--data", data, "--out", layout, "--shards", "2"]) == 0
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=s3_env, Prefix="raw/by-shard/")["Contents"])
    assert "raw/by-shard/_nightcast_layout.json" in keys  # the manifest the planner reads instead of the ids
    keys.remove("raw/by-shard/_nightcast_layout.json")
    assert keys and all(k.startswith("raw/by-shard/nshards=2/shard=") for k in keys)
    assert main(["partition", "--data", data, "--out", layout, "--shards", "2"]) == 1  # never into old files
    retrain_flow(fast_params(data), store=store)
    as_of = sample_raw.select(pl.col("timestamp").str.to_datetime().max()).item().date()
    score_flow(ScoreParams(data=data, as_of=as_of), store=store)
    single = read_forecasts(open_store(store), "lstm", as_of).sort("series_id", "horizon")
    from nightcast.flows import score

    monkeypatch.setattr(score, "plan_step", lambda *a: pytest.fail("planned from the ids, not the S3 manifest"))
    out = score_flow(ScoreParams(data=layout, as_of=as_of, shards=2), store=store)
    assert read_forecasts(open_store(store), "lstm", as_of).sort("series_id", "horizon").equals(single)
    assert out["series"] == single["series_id"].n_unique() and open_store(store).list(STAGING) == []


def test_still_running_asks_the_prefect_api(panel):
    """The staging sweep keeps the folder of a run that is still going, however old."""
    import uuid

    from prefect import flow

    from nightcast.flows.score import _still_running
    from nightcast.tasks.serving.sharded import staging_run

    @flow
    def probe() -> bool:
        from prefect.runtime import flow_run

        return _still_running(staging_run(str(flow_run.id)))

    assert probe() is True  # this very run, asked while it runs
    state = probe(return_state=True)
    assert _still_running(staging_run(str(state.state_details.flow_run_id))) is False  # finished
    assert _still_running(staging_run(str(uuid.uuid4()))) is False  # unknown to the API
    assert _still_running(staging_run("not-a-run-id")) is False


def test_the_documented_reader_never_meets_staged_files(panel, monkeypatch):
    """A run killed before it cleans up (here: its clean-up skipped) leaves its staged inputs and parts; the
    README's reader of every forecast still reads exactly the partitions."""
    import nightcast.flows.score

    data, store, as_of, _ = panel
    monkeypatch.setattr(nightcast.flows.score, "discard_staging", lambda store_url, run: None)
    # no as_of on text timestamps: the staged run (inputs and parts staged), the newest date is as_of
    assert score_flow(ScoreParams(data=data, shards=3), store=store)["as_of"] == as_of
    st = open_store(store)
    assert any(k.endswith(".parquet") for k in st.list(STAGING))  # the staging is still there
    everything = pl.scan_parquet(f"{store}/forecasts/**/*.parquet", hive_partitioning=True).collect()
    assert everything.height == sum(read_forecasts(st, "lstm", dt.date.fromisoformat(k.split("as_of=")[1][:10])).height
                                    for k in st.list("forecasts/"))  # every partition, nothing staged
    everything = everything.filter(pl.col("as_of").cast(pl.String) == str(as_of))
    expected = read_forecasts(st, "lstm", as_of)
    cols = [c for c in expected.columns if c not in ("model", "as_of")]  # the hive keys' types are the reader's
    assert everything.height == expected.height
    assert everything.select(cols).sort("series_id", "horizon").equals(expected.select(cols).sort("series_id", "horizon"))


def test_the_bundle_is_loaded_once_per_process_however_many_shards(panel, monkeypatch):
    """Reading and scoring 4 shards loads and verifies the bundle once in this process (the thread
    runner's workers share it); on Dask each worker process loads it once."""
    import nightcast.tasks.serving.sharded

    data, store, as_of, _ = panel
    loads = []
    real = nightcast.tasks.serving.sharded.load_bundle
    monkeypatch.setattr(nightcast.tasks.serving.sharded, "load_bundle", lambda *a: loads.append(a[1:]) or real(*a))
    nightcast.tasks.serving.sharded._cached_bundle.cache_clear()
    try:
        score_flow(ScoreParams(data=data, as_of=as_of, shards=4), store=store)
        score_flow(ScoreParams(data=data, as_of=as_of, shards=4), store=store)
    finally:
        nightcast.tasks.serving.sharded._cached_bundle.cache_clear()
    assert len(loads) == 1, loads


def test_typed_parquet_is_read_from_the_scoring_span_on_and_scores_the_same(panel, tmp_path):
    """The same data as typed Parquet (timestamps as datetimes) is read from the scoring span on, not
    whole; forecasts, skipped series and the newest date equal those from the text-typed file, single
    and sharded, including a series that stopped long before the span (named stale from one row)."""
    from nightcast.tasks.data.ingest import load_observations
    from nightcast.tasks.ops.registry import load_champion
    from nightcast.tasks.serving.score import scoring_span_start

    data, store, as_of, _ = panel
    raw = pl.read_parquet(data)
    ts = pl.col("timestamp").str.to_datetime()
    gone = sorted(raw["series_id"].unique().to_list())[1]
    since = scoring_span_start(load_champion(open_store(store), "lstm"), as_of)
    # four more weeks of older history (the sample's two weeks, twice, earlier): outside the scoring span
    raw = pl.concat([raw.with_columns((ts - dt.timedelta(days=d)).dt.strftime("%Y-%m-%dT%H:%M:%S").alias("timestamp"))
                     for d in (28, 14)] + [raw])
    raw = raw.filter((pl.col("series_id") != gone) | (ts < since - dt.timedelta(days=1)))
    text, typed = str(tmp_path / "text.parquet"), str(tmp_path / "typed.parquet")
    raw.write_parquet(text)
    raw.with_columns(ts).sort("series_id", "timestamp").write_parquet(typed, row_group_size=100)
    read = load_observations(typed, since=since)
    assert read.height < raw.height / 2 and read.filter(pl.col("series_id") == gone).height == 1

    def run(path: str, **kw: object) -> tuple[dict, pl.DataFrame]:
        out = score_flow(ScoreParams(data=path, **kw), store=store)
        return out, read_forecasts(open_store(store), "lstm", out["as_of"]).sort("series_id", "horizon")

    whole, expected = run(text, as_of=as_of)
    assert gone in whole["skipped"] and whole["skipped"][gone].startswith("stale")
    for kw in ({"as_of": as_of}, {}, {"as_of": as_of, "shards": 3}):
        out, got = run(typed, **kw)
        assert out["as_of"] == as_of and got.equals(expected), kw
        assert out["skipped"] == whole["skipped"], kw


def test_the_documented_reader_reads_while_a_sharded_run_is_frozen_mid_flight(panel, monkeypatch):
    """A sharded run held just before it assembles (every shard's input and part staged, the partition not
    yet replaced): the README's reader of every forecast reads exactly the partitions already written, and
    the run then finishes as usual."""
    import threading

    import nightcast.flows.score

    data, store, as_of, _ = panel
    st = open_store(store)
    left = set(st.list(STAGING))  # what an earlier test's "killed" run left: not this run's
    score_flow(ScoreParams(data=data, as_of=as_of), store=store)  # a partition the reader must see whole
    before = read_forecasts(st, "lstm", as_of).sort("series_id", "horizon")
    frozen, release, done = threading.Event(), threading.Event(), []
    real = nightcast.flows.score.assemble_step

    def held(*args, **kwargs):  # noqa: ANN002, ANN003
        frozen.set()
        assert release.wait(300), "never released"
        return real(*args, **kwargs)

    monkeypatch.setattr(nightcast.flows.score, "assemble_step", held)
    run = threading.Thread(target=lambda: done.append(  # the staged run: no as_of on text timestamps
        score_flow(ScoreParams(data=data, shards=3), store=store)))
    run.start()
    try:
        assert frozen.wait(300), "the run never reached its assemble step"
        staged = [k for k in st.list(STAGING) if k.endswith(".parquet")]
        assert any("/input/" in k for k in staged) and any("/parts/" in k for k in staged), staged
        everything = pl.scan_parquet(f"{store}/forecasts/**/*.parquet", hive_partitioning=True).collect()
        mine = everything.filter(pl.col("as_of").cast(pl.String) == str(as_of))
        cols = [c for c in before.columns if c not in ("model", "as_of")]
        assert mine.select(cols).sort("series_id", "horizon").equals(before.select(cols))
    finally:
        release.set()
        run.join(300)
    assert done and done[0]["series"] == before["series_id"].n_unique()
    assert set(st.list(STAGING)) == left  # the run removed its own staging


def _typed(data: str, path) -> str:  # noqa: ANN001
    """The panel as typed Parquet (datetime timestamps): what lets a run know as_of before reading shards."""
    out = str(path)
    pl.read_parquet(data).with_columns(pl.col("timestamp").str.to_datetime()).sort(
        "series_id", "timestamp").write_parquet(out, row_group_size=100)
    return out


@pytest.mark.parametrize("slots, task_series, parts", [(8, 0, 3), (2, 20_000, 2), (1, 20_000, 1), (1, 3, 3)])
def test_one_pass_tasks_stage_no_input_and_write_each_part_once(panel, tmp_path, monkeypatch, slots, task_series,
                                                                parts):
    """With the calendar fixed by the model and as_of known (given, or read from the timestamp statistics),
    shards are read, validated and forecast by tasks of consecutive shards (one per shard with
    ``shard_task_series`` 0; as many as the worker slots, more when a task would pass that many series): no
    input is staged through the store, each task's part is written once, and the partition equals the
    single-process run's whatever the grouping."""
    import nightcast.flows.score
    from nightcast.tasks.ops.storage import LocalStore

    data, store, as_of, _ = panel
    typed = _typed(data, tmp_path / "typed.parquet")
    left = set(open_store(store).list(STAGING))  # what an earlier test's "killed" run left: not this run's
    one = score_flow(ScoreParams(data=typed, as_of=as_of), store=store)
    single = read_forecasts(open_store(store), "lstm", as_of).sort("series_id", "horizon")
    writes: list[str] = []
    real = LocalStore.write_bytes
    monkeypatch.setattr(LocalStore, "write_bytes", lambda self, key, body, *a, **k: writes.append(key)
                        or real(self, key, body, *a, **k))
    monkeypatch.setattr(nightcast.flows.score, "worker_slots", lambda: slots)
    monkeypatch.setenv("NIGHTCAST_SHARD_TASK_SERIES", str(task_series))
    for kw in ({"as_of": as_of}, {}):
        writes.clear()
        many = score_flow(ScoreParams(data=typed, shards=3, **kw), store=store)
        staged = [k for k in writes if k.startswith(STAGING)]
        assert staged and not any("/input/" in k for k in staged), staged
        assert len(staged) == len(set(staged)) == parts, staged  # one part per task, written once
        assert many["as_of"] == as_of and many["skipped"] == one["skipped"]
        assert many["quarantined_rows"] == one["quarantined_rows"] >= 1
        assert read_forecasts(open_store(store), "lstm", as_of).sort("series_id", "horizon").equals(single), kw
    assert set(open_store(store).list(STAGING)) == left


def test_one_pass_finds_the_newest_valid_date_when_the_newest_read_is_all_quarantined(panel, tmp_path):
    """The timestamp statistics say the newest date, but every row of it is unreadable: the sharded run
    scores the newest valid date, as the single-process run does."""
    data, store, as_of, _ = panel
    raw = pl.read_parquet(_typed(data, tmp_path / "t.parquet"))
    newest = raw["timestamp"].max()
    bad = raw.with_columns(pl.when(pl.col("timestamp") == newest).then(pl.lit("oops"))
                           .otherwise(pl.col("target")).alias("target"))
    path = str(tmp_path / "bad.parquet")
    bad.write_parquet(path)
    one = score_flow(ScoreParams(data=path), store=store)
    single = read_forecasts(open_store(store), "lstm", one["as_of"]).sort("series_id", "horizon")
    many = score_flow(ScoreParams(data=path, shards=3), store=store)
    assert many["as_of"] == one["as_of"]
    assert read_forecasts(open_store(store), "lstm", one["as_of"]).sort("series_id", "horizon").equals(single)


def test_only_a_business_day_model_plans_its_calendar_from_every_shard():
    from types import SimpleNamespace

    from nightcast.tasks.data.clean import Calendar
    from nightcast.tasks.serving.sharded import fixed_calendar

    hourly = SimpleNamespace(config={"calendar": {"frequency": "1h", "kind": "regular", "holidays": []}})
    business = SimpleNamespace(config={"calendar": {"frequency": "1d", "kind": "business", "holidays": []}})
    assert fixed_calendar(hourly) == Calendar("1h")
    assert fixed_calendar(business) is None


def test_the_classical_candidate_is_fitted_only_where_it_has_a_weight(panel, monkeypatch):
    """Scoring fits the classical model at the origin only for the series whose combination gives it a
    weight: a zero weight adds nothing to the served mean, so the fit would be thrown away."""
    import nightcast.models.classical
    from nightcast.tasks.data.ingest import load_observations
    from nightcast.tasks.ops.registry import load_champion
    from nightcast.tasks.serving.score import forecast_from_bundle
    from nightcast.tasks.data.validate import validate_observations

    data, store, as_of, _ = panel
    bundle = load_champion(open_store(store), "lstm")
    comb = bundle.preprocessing["combination"]
    col = comb["candidates"].index("theta")
    ids = sorted(comb["per_series"])
    with_theta = set(ids[::2])
    for sid in ids:  # theta: half the weight on every other series, none on the rest
        w = [0.0] * len(comb["candidates"])
        w[comb["candidates"].index("seasonal_naive")] = 0.5
        w[col] = 0.5 if sid in with_theta else 0.0
        comb["per_series"][sid] = w if sid in with_theta else [v * 2 for v in w]
    fitted: list[int] = []
    real = nightcast.models.classical.classical_forecasts
    monkeypatch.setattr(nightcast.models.classical, "classical_forecasts",
                        lambda values, lengths, *a, **k: fitted.append(len(lengths)) or real(values, lengths, *a, **k))
    valid = validate_observations(load_observations(data)).valid
    forecasts, report = forecast_from_bundle(bundle, valid, as_of)
    scored = set(forecasts["series_id"].unique().to_list())
    assert fitted == [len(scored & with_theta)] and 0 < fitted[0] < len(scored)
    methods = dict(forecasts.filter(pl.col("horizon") == 1).select("series_id", "method").iter_rows())
    assert {methods[s] for s in scored & with_theta} == {"combination"}
    assert {methods[s] for s in scored - with_theta} == {"seasonal_naive"}
    assert forecasts["forecast"].is_finite().all()


def test_shard_steps_have_no_timeout_that_could_not_interrupt_them():
    """Shard steps run mapped, in worker threads or on Dask workers, where Prefect's timeout cannot interrupt
    a task and logs a warning for each one (100 per run at 100 shards); the flow's own steps keep theirs."""
    from nightcast.flows import score

    assert [s.timeout_seconds for s in (score.read_step, score.shard_step, score.one_pass_step)] == [None] * 3
    assert score.assemble_step.timeout_seconds == score.plan_step.timeout_seconds == 3600


def test_scoring_runs_without_importing_lightning(panel):
    """A scoring process (the CLI's score, a Dask worker that only scores) forecasts without Lightning: ~3 s of
    every start. Checked on a real forecast in a fresh interpreter; the same check sees Lightning once training
    is imported."""
    import subprocess
    import sys

    data, store, as_of, _ = panel
    code = f"""
import sys, datetime as dt
from nightcast.flows import cli
cli._import_flows("score")
import nightcast.tasks.serving.sharded
from nightcast.tasks.data.ingest import load_observations
from nightcast.tasks.data.validate import validate_observations
from nightcast.tasks.ops.registry import load_champion
from nightcast.tasks.ops.storage import open_store
from nightcast.tasks.serving.score import forecast_from_bundle
bundle = load_champion(open_store({store!r}), "lstm")
forecasts, report = forecast_from_bundle(bundle, validate_observations(load_observations({data!r})).valid,
                                         dt.date.fromisoformat({str(as_of)!r}))
print(forecasts.height > 0 and report.series_scored > 0, sorted(m for m in sys.modules if m.startswith("lightning")))
import nightcast.tasks.forecast.train
print("lightning" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("\n")[:2] == ["True []", "True"], out.stdout[-2000:]


def test_every_scoring_step_runs_inside_one_heap_reuse_section(panel, monkeypatch):
    """Scoring's temporaries (cleaning, the windows, the forward pass, the baselines and classical fits) and a
    shard's reads and validations reuse the heap for as long as the whole forecast runs
    (``nightcast.tasks.data.pages``), in the flow's threads and on Dask workers alike. Measured on a Dask worker
    at 10,000 x 2,000 (its nanny sets ``MALLOC_TRIM_THRESHOLD_``, so every big temporary was a fresh mapping):
    a 8-shard task 10.2-11.7 s before, 7.9-9.9 s after, interleaved."""
    import nightcast.tasks.data.sharded as shard_reads
    import nightcast.tasks.serving.score as score_mod
    from nightcast.tasks.data import pages

    data, store, as_of, _ = panel
    seen: dict[str, list[int]] = {}

    def spy(module, name):
        real = getattr(module, name)

        def call(*a, **k):
            seen.setdefault(name, []).append(pages.sections_running())
            return real(*a, **k)
        monkeypatch.setattr(module, name, call)

    for name in ("_network_forecasts", "_candidates", "series_tails"):
        spy(score_mod, name)
    spy(shard_reads, "validate_observations")  # a shard's read (validated_shard)
    score_flow(ScoreParams(data=data, as_of=as_of), store=store)
    unsharded = {k: list(v) for k, v in seen.items()}
    seen.clear()
    score_flow(ScoreParams(data=data, as_of=as_of, shards=3), store=store)
    assert unsharded and all(v and min(v) >= 1 for v in unsharded.values()), unsharded
    assert set(seen) == {*unsharded, "validate_observations"} and all(min(v) >= 1 for v in seen.values()), seen
    assert pages.sections_running() == 0


def test_a_section_overrides_the_dask_nannys_trim_threshold():
    """Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (``distributed.nanny.pre-spawn-environ``),
    which turns glibc's adaptive mmap threshold off: every temporary over 128 KiB is a fresh mapping, faulted
    in again. In a process started that way, a section (``mallopt`` at run time) still reuses a freed 64 MiB
    temporary's pages; outside one, each is faulted in afresh."""
    import os
    import subprocess
    import sys

    from nightcast.tasks.data import pages

    if pages._libc is None:
        pytest.skip("glibc only")
    code = """
import resource, numpy as np
from nightcast.tasks.data import pages

def faults_to_fill():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.empty(8 * 2**20)
    a.fill(1.0)
    del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

pages._set_madvise_hugepage(False)  # small pages outside too (a section turns the hint off): faults count pages
faults_to_fill()
outside = faults_to_fill()
with pages.short_lived_arrays():
    faults_to_fill()
    inside = faults_to_fill()
print(outside, inside)
"""
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    outside, inside = map(int, out.stdout.split())
    pages_of_64_mib = 64 * 2**20 // 4096
    assert outside > pages_of_64_mib / 2  # a fresh mapping each time
    assert inside < pages_of_64_mib / 10, (outside, inside)


def test_rows_with_no_id_are_quarantined_by_a_sharded_run_too(panel, tmp_path):
    """Planned from the ids (which have no null), the first shard also reads the rows that have no series
    id: validation quarantines them, as the single-task run does, instead of no shard reading them."""
    data, store, as_of, _ = panel
    raw = pl.read_parquet(data)
    nulls = tmp_path / "nulls.parquet"
    pl.concat([raw, raw.head(2).with_columns(pl.lit(None, pl.String).alias("series_id"))]).write_parquet(nulls)
    one = score_flow(ScoreParams(data=str(nulls), as_of=as_of), store=store)
    many = score_flow(ScoreParams(data=str(nulls), as_of=as_of, shards=3), store=store)
    base = score_flow(ScoreParams(data=data, as_of=as_of, shards=3), store=store)
    assert many["quarantined_rows"] == one["quarantined_rows"] == base["quarantined_rows"] + 2
    assert many["series"] == one["series"] == base["series"]


def test_a_shard_that_fails_validation_is_named_and_nothing_is_written(panel, tmp_path):
    """Scoring reads a shard the way the sharded retrain does (``validated_shard``): a shard whose rows fail
    validation stops the run with the shard's number first, and the date's forecasts stay as they were."""
    from nightcast.tasks.serving.shard import shard_of

    data, store, as_of, _ = panel
    score_flow(ScoreParams(data=data, as_of=as_of), store=store)
    before = read_forecasts(open_store(store), "lstm", as_of)
    raw = pl.read_parquet(data)
    bad = tmp_path / "bad.parquet"
    raw.with_columns(pl.when(shard_of(raw["series_id"], 3) == 1).then(pl.lit("x")).otherwise(pl.col("target"))
                     .alias("target")).write_parquet(bad)
    with pytest.raises(Exception, match=r"shard 1 of 3 of .*bad\.parquet: .*failed validation"):
        score_flow(ScoreParams(data=str(bad), as_of=as_of, shards=3), store=store)
    assert read_forecasts(open_store(store), "lstm", as_of).equals(before)
