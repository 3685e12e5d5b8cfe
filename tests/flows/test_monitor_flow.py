"""End to end: a real retrain and real scores, then the monitor over a few days of arriving actuals."""

from __future__ import annotations

import datetime as dt
import shutil
import time

import polars as pl
import pytest

from nightcast.flows.monitor import monitor_flow
from nightcast.flows.retrain import retrain_flow
from nightcast.flows.score import score_flow
from nightcast.schemas.monitoring import DriftRule, MonitoringPoints, MonitoringRun, MonitoringSummary, MonitorParams
from nightcast.schemas.params import ScoreParams
from nightcast.tasks.serving.score import read_forecasts
from nightcast.tasks.ops.monitor import DRIFT_EVENT, monitoring_key, read_points, read_runs, read_summary
from nightcast.tasks.ops.storage import open_store
from tests.conftest import fast_params

pytestmark = pytest.mark.usefixtures("prefect_harness")

TS = pl.col("timestamp").str.to_datetime()


def _day(d: int) -> dt.date:
    return dt.date(2026, 9, d)


def _before_end_of(d: int) -> pl.Expr:
    return TS < dt.datetime(2026, 9, d + 1)


def _on(d: int) -> pl.Expr:
    return TS.dt.date() == _day(d)


@pytest.fixture(scope="module")
def scored(tmp_path_factory, sample_raw, prefect_harness):
    """Champion trained on data up to 2026-09-11; forecasts as of the 10th, 11th and 12th."""
    root = tmp_path_factory.mktemp("monitor")
    train, full = root / "train.csv", root / "full.csv"
    sample_raw.filter(_before_end_of(11)).write_csv(train)
    sample_raw.write_csv(full)
    store = str(root / "store")
    out = retrain_flow(fast_params(str(train)), store=store)
    for d in (10, 11, 12):
        score_flow(ScoreParams(data=str(full), as_of=_day(d)), store=store)
    return root, store, out["version"]


def _csv(root, name: str, frame: pl.DataFrame) -> str:
    path = root / name
    frame.write_csv(path)
    return str(path)


def _due_with_actual(store, frame: pl.DataFrame, as_ofs: tuple[int, ...], day: int,
                     where: pl.Expr = pl.lit(True)) -> int:
    """Stored forecast points due by the end of ``day`` that have one usable actual in ``frame``:
    a finite target, and no other row for its series and timestamp that disagrees."""
    due = pl.concat([read_forecasts(store, "lstm", _day(d)) for d in as_ofs]).filter(
        pl.col("timestamp") < dt.datetime(2026, 9, day + 1), where)
    rows = frame.unique().with_columns(TS.alias("timestamp"))
    value = pl.col("target").cast(pl.Float64, strict=False)
    usable = rows.filter(pl.len().over("series_id", "timestamp") == 1, value.is_not_null() & value.is_finite())
    return due.join(usable.select("series_id", "timestamp"), on=["series_id", "timestamp"]).height


def test_monitor_replays_days_of_late_duplicated_and_revised_actuals(scored, sample_raw):
    root, store, version = scored
    st = open_store(store)
    # day 11: the forecasts as of the 10th fall due (3 series x 6 hours)
    d11 = monitor_flow(MonitorParams(data=_csv(root, "d11.csv", sample_raw.filter(_before_end_of(11))),
                                     as_of=_day(11)), store=store)
    r = d11["run"]
    assert (r["points"], r["new"], r["champion"], r["forecast_partitions"]) == (18, 18, version, 2)
    # an actual with a seasonal-naive reference is scored; without one it waits as no_baseline
    assert r["scored"] + r["no_baseline"] == _due_with_actual(st, sample_raw, (10,), 11)
    assert r["scored"] > 0 and r["scored"] + r["pending"] + r["quarantined"] + r["no_baseline"] == 18
    # day 12: site-1's actuals of the 12th have not arrived
    late = _on(12) & (pl.col("series_id") == "site-1")
    d12 = monitor_flow(MonitorParams(data=_csv(root, "d12.csv", sample_raw.filter(_before_end_of(12) & ~late)),
                                     as_of=_day(12)), store=store)
    assert d12["run"]["points"] == 36 and d12["run"]["new"] == 18
    waiting = read_points(st, "lstm").filter(pl.col("series_id") == "site-1", pl.col("as_of") == _day(11))
    assert set(waiting["status"]) == {"pending"} and waiting.height == 6
    # day 13: site-1 arrives; one of site-3's values of the 12th is revised; one row is sent twice
    revised_at = dt.datetime(2026, 9, 12, 2)
    d13_frame = sample_raw.filter(_before_end_of(13)).with_columns(
        pl.when((pl.col("series_id") == "site-3") & (TS == revised_at)).then(pl.lit("1000.0"))
        .otherwise(pl.col("target")).alias("target"))
    d13_frame = pl.concat([d13_frame, d13_frame.filter(pl.col("series_id") == "site-2").head(1)])
    params = MonitorParams(data=_csv(root, "d13.csv", d13_frame), as_of=_day(13))
    d13 = monitor_flow(params, store=store)
    r = d13["run"]
    assert r["late"] == _due_with_actual(st, sample_raw, (10, 11), 12, (pl.col("series_id") == "site-1")
                                         & (pl.col("timestamp") >= dt.datetime(2026, 9, 12))) > 0
    assert r["revised"] == 1 and r["new"] == 18 and r["points"] == 54
    assert r["duplicate_rows_dropped"] == d13_frame.height - d13_frame.unique().height >= 1
    point = read_points(st, "lstm").filter(pl.col("series_id") == "site-3", pl.col("timestamp") == revised_at)
    assert point["actual"].to_list() == [1000.0] and point["revisions"].to_list() == [1]
    # the files: one per table, schema-valid, and a re-run of the day rewrites the same bytes
    tables = ("points", "summary", "active", "frozen", "scales", "runs")
    keys = [monitoring_key(t, "lstm", _day(13)) for t in tables]
    before = [st.read_bytes(k) for k in keys]
    assert d13["files"] == {t: st.uri(k) for t, k in zip(tables, keys)}
    again = monitor_flow(params, store=store)
    assert [st.read_bytes(k) for k in keys] == before and again["run"] == d13["run"]
    MonitoringPoints.validate(read_points(st, "lstm").with_columns(), lazy=True)
    summary = read_summary(st, "lstm")
    MonitoringSummary.validate(summary, lazy=True)
    MonitoringRun.validate(read_runs(st, "lstm"), lazy=True)
    assert set(summary["dimension"]) == {"all", "as_of", "model_version", "method", "horizon", "series_id"}
    assert summary.filter(pl.col("dimension") == "horizon")["key"].to_list() == [str(h) for h in range(1, 7)]
    assert read_runs(st, "lstm")["date"].to_list() == [_day(11), _day(12), _day(13)]
    # the artifact table: overall, by method / horizon / version, then the worst series
    assert d13["table"][0]["group"] == "all" and d13["table"][-1]["group"] == "worst series"


def _drift_events(since: dt.datetime) -> list:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

    with get_client(sync_client=True) as client:
        page = client.read_events(EventFilter(event=EventNameFilter(name=[DRIFT_EVENT]),
                                              occurred=EventOccurredFilter(since=since)), limit=50)  # the server caps 50
    return page.events


def test_actuals_that_degrade_fire_the_drift_event(scored, sample_raw, tmp_path):
    root, store, version = scored
    copy = str(tmp_path / "store")
    shutil.copytree(store, copy)
    # from the 13th on, every series repeats its 12th exactly: seasonal naive is perfect, the model is not
    base = sample_raw.filter(_on(12)).with_columns(TS.alias("_t"))
    repeat = pl.concat([base.with_columns((pl.col("_t") + pl.duration(days=k)).dt.strftime("%Y-%m-%d %H:%M:%S")
                                          .alias("timestamp")) for k in (1, 2)]).drop("_t")
    degraded = pl.concat([sample_raw.filter(_before_end_of(12)), repeat])
    since = dt.datetime.now(dt.timezone.utc)
    rule = DriftRule(origins=1, min_origins=1, min_points=6, vs_seasonal_naive=0.1)
    out = monitor_flow(MonitorParams(data=_csv(tmp_path, "degraded.csv", degraded), as_of=_day(13), drift=rule),
                       store=copy)
    assert out["drift"]["fired"], out["drift"]["reason"]
    assert out["drift"]["champion"] == version and out["drift"]["snaive_mase"] == 0.0
    assert out["event"] is not None and out["run"]["drift"] is True
    deadline = time.monotonic() + 30
    while not (events := _drift_events(since)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [e.resource.id for e in events] == ["nightcast.model.lstm"]
    assert events[0].payload["store"] == open_store(copy).url and events[0].payload["version"] == version
    # the same degraded actuals under a rule that needs more origins: judged later, nothing emitted
    calm = monitor_flow(MonitorParams(data=_csv(tmp_path, "degraded.csv", degraded), as_of=_day(13),
                                      drift=DriftRule(origins=4, min_origins=4, min_points=6)), store=copy)
    assert not calm["drift"]["fired"] and calm["event"] is None


def test_a_drift_that_persists_asks_for_one_retrain_not_one_a_day(scored, sample_raw, tmp_path):
    """No retrain storm: while the champion stays the same, a drift event is sent once per cooldown, and never
    while a retrain of the model is queued or running."""
    from prefect.client.orchestration import get_client
    from prefect.states import Completed, Running

    root, store, version = scored
    copy = str(tmp_path / "store")
    shutil.copytree(store, copy)
    base = sample_raw.filter(_on(12)).with_columns(TS.alias("_t"))
    repeat = pl.concat([base.with_columns((pl.col("_t") + pl.duration(days=k)).dt.strftime("%Y-%m-%d %H:%M:%S")
                                          .alias("timestamp")) for k in (1, 2, 3)]).drop("_t")
    data = _csv(tmp_path, "degraded.csv", pl.concat([sample_raw.filter(_before_end_of(12)), repeat]))
    rule = DriftRule(origins=1, min_origins=1, min_points=6, vs_seasonal_naive=0.1, cooldown_days=7)
    since = dt.datetime.now(dt.timezone.utc)
    days = [monitor_flow(MonitorParams(data=data, as_of=_day(d), drift=rule), store=copy) for d in (13, 14, 15)]
    assert [d["drift"]["fired"] for d in days] == [True, True, True]  # the rule holds every day
    assert days[0]["event"] is not None and days[1]["event"] is None and days[2]["event"] is None
    assert days[1]["drift"]["held"].startswith(f"not sent: a retrain was asked for champion {version} on 2026-09-13")
    deadline = time.monotonic() + 30
    while not _drift_events(since) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1)
    assert len(_drift_events(since)) == 1  # one event, so the trigger starts one retrain
    # no cooldown, but a retrain of this model already running: nothing more is queued behind it
    with get_client(sync_client=True) as client:
        from nightcast.flows.retrain import retrain_flow as flow_obj

        running = client.create_flow_run(flow_obj, parameters={"params": {"model_name": "lstm"}}, state=Running())
        try:
            held = monitor_flow(MonitorParams(data=data, as_of=_day(15), drift=rule.model_copy(
                update={"cooldown_days": 0})), store=copy)
        finally:
            client.set_flow_run_state(running.id, Completed(), force=True)
    assert held["event"] is None and held["drift"]["held"].startswith("not sent: a retrain of this model is already")
    assert running.name in held["drift"]["held"]
    # once it is over, the same verdict is sent again (cooldown 0)
    again = monitor_flow(MonitorParams(data=data, as_of=_day(15), drift=rule.model_copy(update={"cooldown_days": 0})),
                         store=copy)
    assert again["event"] is not None and again["drift"]["held"] is None


def test_score_adapts_interval_widths_to_the_actuals_monitored_before_its_origin(scored, sample_raw, tmp_path,
                                                                                 monkeypatch):
    """After a monitoring run for the 12th, scoring the 13th scales each step's interval by the multiplier
    the monitored actuals call for; scoring the 12th itself cannot use that run (its actuals reach the end
    of the 12th, after the origin). ``adapt_widths=False`` serves the bundle's widths."""
    from nightcast.tasks.ops.monitor import width_factors
    from nightcast.tasks.ops.registry import load_champion

    monkeypatch.setattr("nightcast.tasks.forecast.intervals.MIN_POINTS", 3)  # 3 series: a few points per step
    _, store, version = scored
    work = str(tmp_path / "store")
    shutil.copytree(store, work)
    st = open_store(work)
    full = _csv(tmp_path, "full.csv", sample_raw)
    monitor_flow(MonitorParams(data=_csv(tmp_path, "d12.csv", sample_raw.filter(_before_end_of(12))),
                               as_of=_day(12)), store=work)
    bundle = load_champion(st, "lstm")
    assert bundle.version == version
    earlier = width_factors(st, bundle, "lstm", _day(12))  # earlier tests of this module may have run the 11th
    assert earlier is None or earlier["monitored_through"] < "2026-09-12"
    found = width_factors(st, bundle, "lstm", _day(13))
    assert found["monitored_through"] == "2026-09-12" and min(found["points"]) >= 3
    assert any(abs(f - 1.0) > 1e-3 for f in found["factors"])

    plain = score_flow(ScoreParams(data=full, as_of=_day(13), adapt_widths=False), store=work)
    before = read_forecasts(st, "lstm", _day(13)).sort("series_id", "horizon")
    adapted = score_flow(ScoreParams(data=full, as_of=_day(13)), store=work)
    after = read_forecasts(st, "lstm", _day(13)).sort("series_id", "horizon")
    assert plain["widths"] is None and adapted["widths"]["factors"] == found["factors"]
    assert after["forecast"].to_list() == before["forecast"].to_list()
    ratio = ((after["upper"] - after["forecast"]) / (before["upper"] - before["forecast"])).to_numpy()
    expected = [found["factors"][h - 1] for h in after["horizon"].to_list()]
    assert ratio == pytest.approx(expected, rel=1e-6)
    sharded = score_flow(ScoreParams(data=full, as_of=_day(13), shards=2), store=work)  # the same widths
    assert sharded["widths"]["factors"] == found["factors"]
    again = read_forecasts(st, "lstm", _day(13)).sort("series_id", "horizon")
    assert again.select("lower", "upper").to_numpy() == pytest.approx(after.select("lower", "upper").to_numpy())


def test_two_monitor_runs_started_together_give_the_metrics_a_sequential_run_gives(scored, sample_raw, tmp_path,
                                                                                    monkeypatch):
    """The 11th and the 12th monitored at the same time, both reading the state before either writes
    (a barrier after the state read makes the overlap certain), then the 13th: every metric and every
    point's status and actual equal those of running the three dates in order. Each run's result is a
    function of a complete earlier state and the inputs, so an overlap costs re-work, never a count."""
    import threading

    import nightcast.flows.monitor
    from nightcast.tasks.ops.monitor import read_state

    _, store, _ = scored
    frames = {d: _csv(tmp_path, f"d{d}.csv", sample_raw.filter(_before_end_of(d))) for d in (11, 12, 13)}
    stores = {}
    for name in ("in_order", "together"):
        stores[name] = str(tmp_path / name)
        shutil.copytree(store, stores[name])
        shutil.rmtree(tmp_path / name / "monitoring", ignore_errors=True)  # what earlier tests monitored

    def run(name: str, d: int) -> None:
        monitor_flow(MonitorParams(data=frames[d], as_of=_day(d)), store=stores[name])

    for d in (11, 12, 13):
        run("in_order", d)

    barrier, done = threading.Barrier(2, timeout=300), []

    def stale_read(*args, **kwargs):  # noqa: ANN002, ANN003
        state = read_state(*args, **kwargs)
        barrier.wait()  # neither run writes before both have read
        return state

    monkeypatch.setattr(nightcast.flows.monitor, "read_previous", stale_read)
    def run_together(d: int) -> None:
        run("together", d)
        done.append(d)

    threads = [threading.Thread(target=run_together, args=(d,)) for d in (11, 12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert sorted(done) == [11, 12], "a concurrent run failed (its error is in the captured log)"
    monkeypatch.undo()
    run("together", 13)

    key = ["dimension", "key"]
    a, b = (read_summary(open_store(stores[n]), "lstm", _day(13)).sort(key) for n in ("in_order", "together"))
    metrics = [c for c in a.columns if c not in ("date",)]
    assert a.select(metrics).equals(b.select(metrics))
    cols = ["series_id", "timestamp", "as_of", "status", "actual", "forecast"]
    sa, sb = (read_state(open_store(stores[n]), "lstm", _day(14)).active.select(cols).sort(cols[:3])
              for n in ("in_order", "together"))
    assert sa.height > 0 and sa.equals(sb)
