"""Accuracy on actuals, replayed over a few days: every figure below was worked out by hand.

Two daily series, season m = 2, horizon 2, model version v1 (``a`` served by the network with
intervals, ``b`` by seasonal naive without). Actuals as they finally are::

    day     1   2   3   4   5   6   7
    a      10  12  13  16  15* 18  20     * 15 on days 5 and 6, revised to 17 on day 7
    b       5   5   6   7   7+  8# 9      + arrives a day late; # two conflicting rows on day 6

Forecasts (as_of: target day = forecast [lower, upper]): as_of 4: a5 = 14 [12, 16], a6 = 17 [15, 18],
b5 = 6.5, b6 = 7.5; as_of 5: a6 = 19 [17, 21], a7 = 18 [16, 19], b6 = 7.0, b7 = 8.5; as_of 6 (a only):
a7 = 21 [19, 22], a8 = 22 [20, 23].

Seasonal naive from the origin, horizon h: the value m·ceil(h/m) = 2 days before the target.
MASE scale at an origin: mean |y_t - y_(t-2)| over the actuals up to the end of as_of.
"""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from nightcast.schemas.monitoring import DriftRule, MonitoringPoints
from nightcast.tasks.ops import monitor as M
from nightcast.tasks.data.clean import Calendar
from nightcast.tasks.serving.score import write_forecasts
from nightcast.tasks.ops.storage import LocalStore
from nightcast.tasks.data.validate import validate_observations

DAY = {i: dt.date(2026, 3, i) for i in range(1, 12)}
A = {1: 10, 2: 12, 3: 13, 4: 16, 5: 15, 6: 18, 7: 20}
B = {1: 5, 2: 5, 3: 6, 4: 7, 5: 7, 6: 8, 7: 9}
RULE = DriftRule(origins=7, min_origins=1, min_points=1, vs_seasonal_naive=0.1)


def _t(day: int) -> dt.datetime:
    return dt.datetime(2026, 3, day)


def _raw(rows: list[tuple[str, int, float]]) -> pl.DataFrame:
    """Input as a CSV reader gives it: text columns."""
    return pl.DataFrame({"series_id": [r[0] for r in rows], "timestamp": [_t(r[1]).isoformat() for r in rows],
                         "target": [str(r[2]) for r in rows]})


def _forecasts(as_of: int, rows: list[tuple], version: str = "v1") -> pl.DataFrame:
    return pl.DataFrame({
        "series_id": [r[0] for r in rows], "timestamp": [_t(r[1]) for r in rows],
        "horizon": pl.Series([r[2] for r in rows], dtype=pl.Int32), "forecast": [float(r[3]) for r in rows],
        "lower": pl.Series([r[4] for r in rows], dtype=pl.Float64),
        "upper": pl.Series([r[5] for r in rows], dtype=pl.Float64), "method": [r[6] for r in rows],
        "model": "m", "model_version": version, "as_of": DAY[as_of],
    }).with_columns(pl.col("timestamp").cast(pl.Datetime("us")))


def _score_days(store: LocalStore) -> None:
    write_forecasts(store, _forecasts(4, [("a", 5, 1, 14, 12, 16, "lstm"), ("a", 6, 2, 17, 15, 18, "lstm"),
                                          ("b", 5, 1, 6.5, None, None, "seasonal_naive"),
                                          ("b", 6, 2, 7.5, None, None, "seasonal_naive")]), "m", DAY[4])
    write_forecasts(store, _forecasts(5, [("a", 6, 1, 19, 17, 21, "lstm"), ("a", 7, 2, 18, 16, 19, "lstm"),
                                          ("b", 6, 1, 7.0, None, None, "seasonal_naive"),
                                          ("b", 7, 2, 8.5, None, None, "seasonal_naive")]), "m", DAY[5])
    write_forecasts(store, _forecasts(6, [("a", 7, 1, 21, 19, 22, "lstm"), ("a", 8, 2, 22, 20, 23, "lstm")]),
                    "m", DAY[6])


def _monitor(store: LocalStore, rows: list[tuple], day: int, rule: DriftRule = RULE,
             recheck_days: int = 28, champion: str = "v1") -> M.Assessment:
    """What monitor_flow does for one date, without Prefect."""
    checked = validate_observations(_raw(rows), max_bad_share=0.5)
    recheck_from = DAY[day] - dt.timedelta(days=recheck_days)
    forecasts, partitions = M.read_forecast_window(store, "m", recheck_from, DAY[day])
    out = M.assess(forecasts, M.gather_actuals(checked, DAY[day]), M.read_state(store, "m", before=DAY[day]),
                   model="m", day=DAY[day], season=2, calendar=Calendar("1d"), recheck_from=recheck_from,
                   partitions=partitions, rule=rule, champion=champion, test_mase=0.5)
    M.write_monitoring(store, "m", DAY[day], out)
    return out


def _rows_day5() -> list[tuple]:
    return [("a", d, A[d]) for d in range(1, 6)] + [("b", d, B[d]) for d in range(1, 5)]  # b's day 5 is late


def _rows_day6() -> list[tuple]:
    return ([("a", d, A[d]) for d in range(1, 7)] + [("b", d, B[d]) for d in range(1, 6)]
            + [("b", 6, 8), ("b", 6, 9)])  # two rows for (b, day 6) that disagree: refused


def _rows_day7() -> list[tuple]:
    revised = {**A, 5: 17}
    return ([("a", d, revised[d]) for d in range(1, 8)] + [("b", d, B[d]) for d in range(1, 8)]
            + [("b", 7, 9)])  # an exact repeat: dropped


def _point(frame: pl.DataFrame, series: str, day: int, as_of: int) -> dict:
    return frame.filter(pl.col("series_id") == series, pl.col("timestamp") == _t(day),
                        pl.col("as_of") == DAY[as_of]).row(0, named=True)


def _summary(out: M.Assessment, dimension: str = "all", key: str = "all") -> dict:
    return out.summary.filter(pl.col("dimension") == dimension, pl.col("key") == key).row(0, named=True)


@pytest.fixture()
def store(tmp_path) -> LocalStore:
    s = LocalStore(tmp_path / "store")
    _score_days(s)
    return s


def test_day_5_scores_what_arrived_and_keeps_the_rest_pending(store):
    out = _monitor(store, _rows_day5(), 5)
    # due by the end of day 5: a5 and b5 from as_of 4; b5 has no actual yet
    a5 = _point(out.changes, "a", 5, 4)
    assert (a5["actual"], a5["snaive"], a5["status"], a5["change"]) == (15.0, 13.0, "scored", "new")
    assert a5["scale"] == pytest.approx(3.5)  # (|13-10| + |16-12|) / 2
    assert _point(out.changes, "b", 5, 4)["status"] == "pending"
    s = _summary(out)
    assert (s["points"], s["pending"]) == (1, 1)
    assert s["mase"] == pytest.approx(1 / 3.5)  # |14-15| / 3.5
    assert s["snaive_mase"] == pytest.approx(2 / 3.5)  # |13-15| / 3.5
    assert s["smape"] == pytest.approx(200 / 29)  # 200·1 / (15 + 14)
    assert s["snaive_smape"] == pytest.approx(400 / 28)
    assert (s["rmse"], s["mae"], s["bias"], s["coverage"]) == (1.0, 1.0, -1.0, 1.0)  # 12 <= 15 <= 16
    run = out.run.row(0, named=True)
    assert (run["new"], run["pending"], run["scored"], run["forecast_partitions"]) == (2, 1, 1, 2)  # as_of 4, 5


def test_day_6_late_actual_is_scored_and_conflicting_duplicates_are_refused(store):
    _monitor(store, _rows_day5(), 5)
    out = _monitor(store, _rows_day6(), 6)
    b5 = _point(out.changes, "b", 5, 4)
    assert (b5["status"], b5["change"], b5["actual"], b5["first_seen"], b5["scored_on"]) == (
        "scored", "late", 7.0, DAY[5], DAY[6])
    assert b5["scale"] == pytest.approx(1.5)  # (|6-5| + |7-5|) / 2
    # (b, day 6) has two rows that disagree: validation quarantines both, the points wait
    assert {_point(out.changes, "b", 6, a)["status"] for a in (4, 5)} == {"quarantined"}
    assert _point(out.changes, "a", 6, 5)["scale"] == pytest.approx(3.0)  # (3 + 4 + |15-13|) / 3
    assert _point(out.changes, "a", 6, 5)["snaive"] == 16.0  # a4: h=1 looks 2 days back
    # a5 did not change since day 5: not in today's log, still in the state once
    assert out.changes.filter(pl.col("series_id") == "a", pl.col("timestamp") == _t(5)).height == 0
    assert out.state.filter(pl.col("series_id") == "a", pl.col("timestamp") == _t(5)).height == 1
    s = _summary(out)
    # scaled errors: a5 1/3.5, b5 0.5/1.5, a6@4 1/3.5, a6@5 1/3
    assert (s["points"], s["pending"]) == (4, 2)
    assert s["mase"] == pytest.approx(13 / 42)  # (2/7 + 1/3 + 2/7 + 1/3) / 4
    assert s["snaive_mase"] == pytest.approx(13 / 21)  # (4/7 + 2/3 + 4/7 + 2/3) / 4
    assert s["bias"] == pytest.approx(-0.375)  # (-1 - 0.5 - 1 + 1) / 4
    assert s["rmse"] == pytest.approx((3.25 / 4) ** 0.5)
    assert (s["coverage"], s["interval_points"]) == (1.0, 3)
    run = out.run.row(0, named=True)
    assert (run["new"], run["late"], run["quarantined"], run["duplicate_keys_refused"]) == (4, 1, 2, 1)


def test_day_7_revision_rescores_and_nothing_is_counted_twice(store):
    _monitor(store, _rows_day5(), 5)
    _monitor(store, _rows_day6(), 6)
    out = _monitor(store, _rows_day7(), 7)
    a5 = _point(out.changes, "a", 5, 4)
    assert (a5["change"], a5["actual"], a5["revisions"], a5["scored_on"]) == ("revised", 17.0, 1, DAY[5])
    assert _point(out.changes, "a", 6, 5)["change"] == "updated"  # its scale moved with a5: (3 + 4 + 4) / 3
    assert _point(out.changes, "a", 6, 5)["scale"] == pytest.approx(11 / 3)
    assert _point(out.changes, "a", 7, 5)["snaive"] == 17.0  # h=2 reads a5, as revised
    assert _point(out.changes, "a", 7, 6)["scale"] == pytest.approx(3.25)  # (3 + 4 + 4 + 2) / 4
    assert out.state.filter(pl.col("timestamp") == _t(8)).height == 0  # a8 is not due yet
    # every (series, timestamp, as_of, version) once: 4 from as_of 4, 4 from as_of 5, 1 from as_of 6
    assert out.state.height == 9 and out.state.select(M.KEY).n_unique() == 9
    s = _summary(out)
    assert (s["points"], s["pending"]) == (9, 0)
    # scaled errors: a5 3/3.5, b5 1/3, a6@4 1/3.5, b6@4 0.5/1.5, a6@5 3/11, b6@5 3/4, a7@5 6/11, b7@5 3/8,
    # a7@6 4/13
    assert s["mase"] == pytest.approx((8 / 7 + 2 / 3 + 9 / 11 + 9 / 8 + 4 / 13) / 9)
    assert s["snaive_mase"] == pytest.approx((12 / 7 + 4 / 3 + 15 / 11 + 9 / 4 + 12 / 13) / 9)
    assert s["bias"] == pytest.approx(-6.5 / 9)  # -3 -0.5 -1 -0.5 +1 -1 -2 -0.5 +1
    assert s["mae"] == pytest.approx(10.5 / 9)
    # intervals (a only): a5 17 > 16 out, a6@4 in, a6@5 in, a7@5 20 > 19 out, a7@6 in
    assert (s["coverage"], s["interval_points"]) == (pytest.approx(0.6), 5)
    b = _summary(out, "series_id", "b")
    assert (b["points"], b["mase"]) == (4, pytest.approx((1 / 3 + 1 / 3 + 3 / 4 + 3 / 8) / 4))
    assert b["coverage"] is None and b["interval_points"] == 0
    h2 = _summary(out, "horizon", "2")  # a6@4, b6@4, a7@5, b7@5
    assert h2["mase"] == pytest.approx((2 / 7 + 1 / 3 + 6 / 11 + 3 / 8) / 4)
    assert _summary(out, "method", "seasonal_naive")["points"] == 4
    assert _summary(out, "as_of", "2026-03-06")["mase"] == pytest.approx(4 / 13)
    run = out.run.row(0, named=True)
    assert (run["new"], run["late"], run["revised"], run["updated"], run["duplicate_rows_dropped"]) == (3, 2, 1, 1, 1)
    # the layout: the state is the newest row per point over every day's change log
    assert M.read_points(store, "m").equals(out.state)
    assert [r["date"] for r in M.read_runs(store, "m").iter_rows(named=True)] == [DAY[5], DAY[6], DAY[7]]


def test_rerunning_a_day_writes_identical_files(store):
    _monitor(store, _rows_day5(), 5)
    _monitor(store, _rows_day6(), 6)
    keys = [M.monitoring_key(t, "m", DAY[6]) for t in M.TABLES]
    first = [store.read_bytes(k) for k in keys]
    again = _monitor(store, _rows_day6(), 6)  # a retried or repeated run of the same day
    assert [store.read_bytes(k) for k in keys] == first
    assert again.run.row(0, named=True)["late"] == 1  # still judged against the state before day 6
    meta = pl.read_parquet_metadata(store.uri(keys[0]))
    assert (meta["nightcast.monitoring_layout"], meta["nightcast.model"], meta["nightcast.date"]) == (
        "1", "m", "2026-03-06")
    scanned = pl.scan_parquet(f"{store.url}/monitoring/runs/**/*.parquet", hive_partitioning=True).collect()
    assert scanned.height == 2 and scanned["model"].unique().to_list() == ["m"]


def test_withdrawn_actual_and_missing_baseline(store):
    _monitor(store, _rows_day5(), 5)
    rows = [r for r in _rows_day6() if r != ("a", 5, 15)]  # a5's actual disappears; b's day 6 is clean
    rows = [r for r in rows if r != ("b", 6, 9)]
    rows = [r for r in rows if r != ("b", 4, 7)]  # b4 missing: b6@4 has no seasonal-naive reference
    out = _monitor(store, rows, 6)
    a5 = _point(out.changes, "a", 5, 4)
    assert (a5["change"], a5["status"], a5["scored_on"]) == ("withdrawn", "pending", None)
    assert _point(out.changes, "b", 6, 4)["status"] == "no_baseline"
    s = _summary(out)
    assert s["no_baseline"] == 2  # b6 from as_of 4 and 5 both look back to b4
    assert out.run.row(0, named=True)["withdrawn"] == 1


def test_a_rescored_partition_drops_the_old_version(store):
    _monitor(store, _rows_day5(), 5)
    _monitor(store, _rows_day6(), 6)
    write_forecasts(store, _forecasts(5, [("a", 6, 1, 18, 17, 19, "lstm"), ("a", 7, 2, 19, 18, 20, "lstm")],
                                      version="v2"), "m", DAY[5])
    out = _monitor(store, _rows_day7(), 7, champion="v2")
    dropped = out.changes.filter(pl.col("change") == "dropped")
    assert sorted(dropped["series_id"].to_list()) == ["a", "b"] and set(dropped["model_version"]) == {"v1"}
    assert set(dropped["status"]) == {"dropped"}
    live = out.state.filter(pl.col("status") != "dropped", pl.col("as_of") == DAY[5])
    assert live["model_version"].unique().to_list() == ["v2"] and live.height == 2
    assert _summary(out, "model_version", "v2")["points"] == 2
    # outside the recheck window nothing is re-joined, so nothing is dropped or changed: those points are
    # folded into the frozen sums, never read again, and every metric stays what it was
    later = _monitor(store, _rows_day7(), 8, recheck_days=1)
    assert later.changes.height == 0 and later.state.height == 0 and later.since == DAY[7]
    assert later.summary.drop("date").equals(out.summary.drop("date"))
    counts = ["points", "scored", "pending", "quarantined", "no_baseline", "mase", "snaive_mase"]
    assert later.run.select(counts).equals(out.run.select(counts))


def _outputs(store: LocalStore, day: int) -> dict[str, bytes]:
    return {t: store.read_bytes(M.monitoring_key(t, "m", DAY[day])) for t in M.TABLES}


def test_a_run_reads_one_snapshot_not_the_history(store, tmp_path):
    """The state a run starts from is the previous complete run's snapshot: the change logs of earlier days
    are never read (deleting them changes nothing), and without a snapshot the logs rebuild the same state."""
    import shutil

    for day, rows in ((5, _rows_day5()), (6, _rows_day6())):
        _monitor(store, rows, day)
    twin = LocalStore(tmp_path / "twin")
    shutil.copytree(store.root, twin.root, dirs_exist_ok=True)
    store.delete(M.monitoring_key("points", "m", DAY[5]))
    store.delete(M.monitoring_key("points", "m", DAY[6]))
    _monitor(store, _rows_day7(), 7)
    _monitor(twin, _rows_day7(), 7)
    assert _outputs(store, 7) == _outputs(twin, 7)
    # a store from before snapshots: the state is rebuilt from the change logs, to the same bytes
    rebuilt = LocalStore(tmp_path / "rebuilt")
    shutil.copytree(twin.root, rebuilt.root, dirs_exist_ok=True)
    for table in ("active", "frozen"):
        rebuilt.delete(M.monitoring_key(table, "m", DAY[7]))
    assert rebuilt.exists(M.monitoring_key("runs", "m", DAY[7]))  # the run itself is there
    a, b = _monitor(twin, _rows_day7(), 8), _monitor(rebuilt, _rows_day7(), 8)
    assert a.summary.equals(b.summary) and a.run.equals(b.run) and a.state.equals(b.state)


def test_a_run_that_died_before_its_run_row_leaks_nothing_into_the_next(store, tmp_path):
    import shutil

    _monitor(store, _rows_day5(), 5)
    clean = LocalStore(tmp_path / "clean")
    shutil.copytree(store.root, clean.root, dirs_exist_ok=True)
    # day 6 writes its change log and snapshot, then dies before its run row
    died = _monitor(store, _rows_day6(), 6)
    store.delete(M.monitoring_key("runs", "m", DAY[6]))
    assert store.exists(M.monitoring_key("points", "m", DAY[6])) and died.changes.height > 0
    a, b = _monitor(store, _rows_day7(), 7), _monitor(clean, _rows_day7(), 7)
    assert a.summary.equals(b.summary) and a.changes.equals(b.changes) and a.run.equals(b.run)


def test_snapshots_are_kept_for_the_newest_runs_only(store, monkeypatch):
    monkeypatch.setattr(M, "KEEP_SNAPSHOTS", 2)
    for day, rows in ((5, _rows_day5()), (6, _rows_day6()), (7, _rows_day7())):
        _monitor(store, rows, day)
    assert M.monitoring_dates(store, "active", "m") == [DAY[6], DAY[7]]
    assert M.monitoring_dates(store, "frozen", "m") == [DAY[6], DAY[7]]
    assert M.monitoring_dates(store, "points", "m") == [DAY[5], DAY[6], DAY[7]]  # the audit trail stays


def test_drift_rule_judges_the_champion_on_its_newest_origins(store):
    for day, rows in ((5, _rows_day5()), (6, _rows_day6())):
        _monitor(store, rows, day)
    out = _monitor(store, _rows_day7(), 7, rule=DriftRule(origins=2, min_origins=2, min_points=1,
                                                          vs_seasonal_naive=None, vs_test_span=0.1))
    # newest 2 origins: as_of 5 (a6, b6, a7, b7) and 6 (a7): (3/11 + 3/4 + 6/11 + 3/8 + 4/13) / 5
    mase = (9 / 11 + 9 / 8 + 4 / 13) / 5
    assert out.drift.origins == [DAY[5], DAY[6]] and out.drift.points == 5
    assert out.drift.mase == pytest.approx(mase)  # 0.4500 > 1.1 · 0.5? no
    assert not out.drift.fired and out.drift.reason.startswith("no drift")
    strict = M.decide_drift(out.state, DriftRule(origins=2, min_origins=2, min_points=1, vs_seasonal_naive=None,
                                                 vs_test_span=0.1), "v1", test_mase=0.4)
    assert strict.fired and "test-span MASE 0.4000" in strict.reason  # 0.45 > 1.1 · 0.4
    # against seasonal naive: (6/11 + 3/4 + 9/11 + 3/2 + 12/13) / 5 on the same points; the model is better
    snaive = (15 / 11 + 9 / 4 + 12 / 13) / 5
    assert out.drift.snaive_mase == pytest.approx(snaive)
    assert not M.decide_drift(out.state, DriftRule(origins=2, min_origins=2, min_points=1), "v1", None).fired
    waiting = M.decide_drift(out.state, DriftRule(origins=7, min_origins=4, min_points=1), "v1", None)
    assert not waiting.fired and waiting.reason.startswith("not judged")
    assert M.decide_drift(out.state, DriftRule(), "v9", None).points == 0  # a new champion has no points yet


def test_drift_fires_when_the_model_loses_to_seasonal_naive(tmp_path):
    store = LocalStore(tmp_path / "s")
    # the series repeats its season exactly: seasonal naive is perfect, the model is not
    write_forecasts(store, _forecasts(4, [("a", 5, 1, 14, None, None, "lstm"), ("a", 6, 2, 17, None, None, "lstm")]),
                    "m", DAY[4])
    rows = [("a", d, [10, 12][d % 2]) for d in range(1, 7)]
    out = _monitor(store, rows, 6, rule=DriftRule(origins=1, min_origins=1, min_points=2))
    assert out.drift.snaive_mase == 0.0 and out.drift.mase > 0
    assert out.drift.fired and "worse than seasonal naive's 0.0000" in out.drift.reason
    assert out.run.row(0, named=True)["drift"] is True


def test_layout_is_checked_on_read(store, tmp_path):
    _monitor(store, _rows_day5(), 5)
    key = M.monitoring_key("points", "m", DAY[5])
    frame = pl.read_parquet(store.uri(key))
    frame.write_parquet(store.uri(key), metadata={M.LAYOUT_META: "0"})
    with pytest.raises(M.MonitorError, match="layout '0'"):
        M.read_points(store, "m")


def test_change_log_matches_its_contract(store):
    out = _monitor(store, _rows_day5(), 5)
    MonitoringPoints.validate(out.changes, lazy=True)
    assert list(out.changes.columns) == list(M.POINTS_SCHEMA)


def test_business_calendar_steps_over_weekends_and_holidays():
    ts = pl.DataFrame({"t": [dt.datetime(2026, 3, 9), dt.datetime(2026, 3, 10)]})  # Monday, Tuesday
    got = ts.select(M.steps_back(pl.col("t"), pl.lit(1), Calendar("1d", "business", ("2026-03-06",))))["t"]
    assert got.to_list() == [dt.datetime(2026, 3, 5), dt.datetime(2026, 3, 9)]  # Friday the 6th is a holiday
    hourly = ts.select(M.steps_back(pl.col("t"), pl.lit(24), Calendar("1h")))["t"]
    assert hourly.to_list() == [dt.datetime(2026, 3, 8), dt.datetime(2026, 3, 9)]


def test_hours_the_data_has_not_reached_are_not_due(store):
    out = _monitor(store, _rows_day5(), 6)  # monitoring the 6th with data that ends on the 5th
    assert out.state["timestamp"].max() == _t(5)
    assert out.run.row(0, named=True)["points"] == 2  # a5 and b5; nothing of the 6th is pending


def test_the_cli_summary_names_counts_metrics_and_drift(store):
    _monitor(store, _rows_day5(), 5)
    out = _monitor(store, _rows_day6(), 6)
    text = M.format_monitoring({"model": "m", "date": DAY[6], "run": out.run.row(0, named=True),
                                "table": M.artifact_rows(out.summary), "drift": {"fired": False, "reason": "calm"},
                                "event": None, "files": {"runs": "s3://b/monitoring/runs/x"}})
    assert "6 due points, 4 scored, 0 pending, 2 quarantined" in text
    assert "1 scored late" in text and "1 conflicting keys refused" in text
    assert "drift: no (calm)" in text and "s3://b/monitoring/runs/x" in text
    worst = [r for r in M.artifact_rows(out.summary) if r["group"] == "worst series"]
    # worst first: b 0.5/1.5 = 1/3 (only b5 is scored), a (2/7 + 2/7 + 1/3) / 3 = 0.302
    assert [(r["key"], r["MASE"]) for r in worst] == [("b", round(1 / 3, 4)), ("a", round((4 / 7 + 1 / 3) / 3, 4))]


def test_a_near_flat_series_is_floored_in_the_monitor_as_in_evaluation():
    """One MASE scale rule: the monitor floors a near-flat series against the panel like the backtest does,
    so its MASE cannot reach thousands and trip drift for the whole model."""
    vals = {"a": [10, 12, 14, 16], "b": [20, 23, 26, 29], "c": [1000, 1000.001, 1000, 1000.001]}
    actuals = pl.DataFrame([{"series_id": s, "timestamp": _t(d + 1), "actual": float(v)}
                            for s, ys in vals.items() for d, v in enumerate(ys)])
    origins = pl.DataFrame({"series_id": list(vals), "as_of": [DAY[4]] * 3})
    got = dict(M.mase_scales(actuals, origins, 1, Calendar("1d")).select("series_id", "scale").iter_rows())
    assert got["a"] == pytest.approx(2.0) and got["b"] == pytest.approx(3.0)  # above the floor: untouched
    median_ratio = 3.0 / 24.5  # the panel's median scale/level (a 2/13, b 3/24.5, c ~1e-6)
    assert got["c"] == pytest.approx(0.1 * median_ratio * 1000.0005)  # not 0.001


def test_the_monitor_reads_seasonal_naive_where_the_backtest_does():
    """One seasonal naive: the monitor's reference for each stored point is the value the backtest's
    ``nightcast.models.baselines.seasonal_naive`` gives from the same origin (m = 7, H = 10: two seasons back for h > 7)."""
    import numpy as np

    from nightcast.models.baselines import seasonal_naive

    y = np.random.default_rng(0).normal(100, 10, 40).round(2)
    start = dt.datetime(2026, 1, 1)
    values = pl.DataFrame({"series_id": "a", "timestamp": [start + dt.timedelta(days=i) for i in range(40)],
                           "actual": y})
    origin, horizon = 19, 10
    as_of = (start + dt.timedelta(days=origin)).date()
    fc = pl.DataFrame({"series_id": "a", "timestamp": [start + dt.timedelta(days=origin + h) for h in range(1, 11)],
                       "as_of": as_of, "model_version": "v1", "horizon": list(range(1, 11)), "method": "lstm",
                       "forecast": 0.0, "lower": None, "upper": None},
                      schema_overrides={"lower": pl.Float64, "upper": pl.Float64})
    actuals = M.Actuals(values, pl.DataFrame(schema={"series_id": pl.String, "timestamp": pl.Datetime("us")}),
                        values["timestamp"].max(), 0, 0)
    pts = M.join_actuals(fc, actuals, 7, Calendar("1d"), (start + dt.timedelta(days=39)).date()).sort("horizon")
    expected = seasonal_naive(y, np.array([origin]), horizon, 7, np.array([0]))[0]
    assert pts["snaive"].to_list() == pytest.approx(expected.tolist())
    assert pts["actual"].to_list() == pytest.approx(y[origin + 1:origin + 11].tolist())


def test_the_mase_scale_is_carried_in_the_state_not_summed_from_every_actual():
    """A run's MASE scales are the sums the state carries up to its cut plus the actuals after it: equal to
    summing every actual (but for float rounding), and the actuals older than the cut less a season are never
    read (garbage there changes nothing), so a run's cost does not grow with the history."""
    import numpy as np

    rng = np.random.default_rng(1)
    start = dt.datetime(2026, 1, 1)
    act = pl.DataFrame({"series_id": np.repeat(["a", "b", "c"], 60).tolist(),
                        "timestamp": [start + dt.timedelta(days=d) for d in range(60)] * 3,
                        "actual": rng.normal(100, 10, 180)}).filter(pl.int_range(pl.len()) % 11 != 3)  # gaps
    cal = Calendar("1d")
    cut = start + dt.timedelta(days=40)
    base = M.advance_scale_sums(act, 7, cal, None, start + dt.timedelta(days=20))
    base = M.advance_scale_sums(act, 7, cal, base, cut)  # carried over two runs
    assert base.cut == cut and base.sums["rows"].sum() == act.filter(pl.col("timestamp") < cut).height
    origins = pl.DataFrame({"series_id": ["a", "b", "c", "a"],
                            "as_of": [(start + dt.timedelta(days=d)).date() for d in (39, 45, 50, 59)]})
    full = M.mase_scales(act, origins, 7, cal).sort("series_id", "as_of")
    carried = M.mase_scales(act, origins, 7, cal, base).sort("series_id", "as_of")
    assert full.select("series_id", "as_of").equals(carried.select("series_id", "as_of"))
    assert ((full["scale"] - carried["scale"]).abs() / full["scale"]).max() < 1e-12
    assert (full["scale"] != 1.0).all()
    old = pl.col("timestamp") < cut - dt.timedelta(days=7)
    garbage = act.with_columns(pl.when(old).then(1e9).otherwise(pl.col("actual")).alias("actual"))
    assert M.mase_scales(garbage, origins, 7, cal, base).sort("series_id", "as_of")["scale"].equals(carried["scale"])
    assert not M.mase_scales(garbage, origins, 7, cal).sort("series_id", "as_of")["scale"].equals(carried["scale"])


def test_runs_carry_the_scale_sums_and_a_rounding_move_is_no_change(store):
    """Each run writes its scale sums with its snapshot; the next run starts from them; a scale that moves by
    float rounding alone does not make a point ``updated``."""
    _score_days(store)
    _monitor(store, _rows_day5(), 5, recheck_days=1)
    state = M.read_state(store, "m", before=DAY[6])
    assert state.scales is not None and state.scales.cut == _t(5)  # the end of since = day 4
    assert set(state.scales.sums["series_id"]) == {"a", "b"}
    prev = pl.DataFrame({"scale": [2.0, 2.0, None], "scale_prev": [2.0 * (1 + 1e-12), 2.5, None]})
    assert prev.select(M._differs("scale")).to_series().to_list() == [False, True, False]
