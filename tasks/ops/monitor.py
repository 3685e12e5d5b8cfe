"""Accuracy on actuals: stored forecasts joined with the actuals that have arrived, judged against
seasonal naive from the same origin; late, duplicated and revised actuals tracked; drift decided.

What a run for monitoring date ``D`` does (``flows/monitor.py``):

1. **Actuals** are the validated input the score flow reads (``load_observations`` +
   ``validate_observations``, the champion's ``max_bad_share``), up to the end of ``D``; a blank
   target is no actual. Duplicates follow validation: exact repeats of a row are dropped (the first
   kept, they are identical) and counted; rows that share a series and timestamp but differ are
   **refused**: validation quarantines all of them, so the point stays unscored (status
   ``quarantined``) until the input is fixed, and the keys are counted. No "last row wins": which
   row is last is an accident of file order, and scoring refuses them too.
2. **Points.** Every stored forecast partition with ``as_of`` in ``[D - recheck_days, D]``
   (``read_forecasts``), each point whose target time has passed: before the end of ``D`` and not
   after the newest timestamp in the data (a day the data has only partly reached is due up to there). A point is the key
   ``(series_id, timestamp, as_of, model_version)``.
3. **Seasonal naive from the same origin.** For the point at horizon ``h`` the value
   ``m·ceil(h/m)`` calendar steps before its target time (``m``: the champion's season length; the
   calendar: its frequency, weekdays only for business calendars): the last season before the
   origin, as ``score`` forecasts it. Only actuals up to the end of ``as_of`` are used. The model and
   the baseline are scored on exactly the same points: a point without that reference is
   ``no_baseline``, counted and not scored.
4. **MASE scale** of a series at an origin: the mean of ``|y_t - y_(t-m)|`` over every pair of its
   actuals both before the end of ``as_of``, ``t - m`` exactly ``m`` calendar steps earlier; lag 1
   when the series has no more than ``m`` actuals before the origin; floored against the panel and 1.0
   where undefined: ``nightcast.tasks.forecast.evaluate.mase_scale_rule``, the rule evaluation and the backtest use.
5. **Changes.** The state before ``D`` is what the newest *complete* run before ``D`` left (a date
   with a run row; a run that died before writing it is never read): its snapshot of the points in
   its recheck window (``active``), and the additive sums of every older point by summary group
   (``frozen``). Points whose origin has now left the recheck window are folded into those sums once
   and never read again, so a run's cost does not grow with the history. The window's points are
   compared with the points just computed; only points that changed are written to ``D``'s change
   log (``nightcast.schemas.monitoring.CHANGES``): ``new``, ``late`` (pending before, scored now),
   ``revised`` (another actual: re-scored, ``revisions`` + 1), ``updated``, ``withdrawn``,
   ``dropped`` (its forecast partition was re-scored by another version). A point is in the state
   once, so nothing is counted twice; a run for ``D`` never reads ``D``'s own files, so running ``D``
   again with the same input writes byte-identical files. Run the dates in order (the ``accuracy``
   deployment runs one at a time): a run for a date before the newest one rewrites that date only.
   A point frozen once stays frozen: a later run with a longer ``recheck_days`` does not reopen it.
6. **Metrics** (``summary_from_sums``) over every scored point ever, the window's and the frozen
   ones, each a ratio of sums: MASE, sMAPE, RMSE, MAE, bias and interval coverage, for the model and for seasonal naive on the same points, overall and by
   origin, model version, served method, horizon step and series.
7. **Drift** (``decide_drift``, ``nightcast.schemas.monitoring.DriftRule``): the champion's scored points from
   its newest N origins against seasonal naive on the same points and/or its test-span MASE.

The layout (``nightcast.schemas.monitoring``, version ``MONITORING_LAYOUT``, in every file's Parquet metadata
as ``nightcast.monitoring_layout``), one object per partition, written atomically::

    monitoring/points/model=<m>/date=<D>/points.parquet    # MonitoringPoints: D's change log
    monitoring/summary/model=<m>/date=<D>/summary.parquet  # MonitoringSummary: metrics as of D
    monitoring/active/model=<m>/date=<D>/active.parquet    # MonitoringPoints: the recheck window's state
    monitoring/frozen/model=<m>/date=<D>/frozen.parquet    # SUMS of the older points, by summary group
    monitoring/runs/model=<m>/date=<D>/run.parquet         # MonitoringRun: one row, written last

The ``active`` and ``frozen`` snapshots of the newest ``KEEP_SNAPSHOTS`` runs are kept; the change
logs, summaries and run rows are the audit trail and stay. Read them with ``read_points`` (every
point's state as of a date, rebuilt from the change logs: an audit reader, as slow as the history
is long), ``read_state`` (what the next run starts from), ``read_summary`` and
``read_runs`` (every run: accuracy over time), or with polars directly, e.g.
``pl.scan_parquet("<store>/monitoring/runs/**/*.parquet", hive_partitioning=True)``.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
from dataclasses import dataclass

import numpy as np
import polars as pl

from nightcast.models.baselines import seasonal_lag
from nightcast.schemas.frames import Forecasts
from nightcast.schemas.monitoring import (DIMENSIONS, MONITORING_LAYOUT, MonitoringPoints, MonitoringRun, MonitoringSummary,
                                DriftRule)
from nightcast.tasks.data.clean import Calendar
from nightcast.tasks.forecast.evaluate import mase_scale_rule
from nightcast.tasks.serving.score import forecasts_key, read_forecasts
from nightcast.tasks.ops.storage import Store, safe_key_part
from nightcast.tasks.data.validate import ValidationResult, coerce_observations

KEY = ["series_id", "timestamp", "as_of", "model_version"]
LAYOUT_META = "nightcast.monitoring_layout"
DRIFT_EVENT = "nightcast.drift.detected"
TABLES = {"points": "points.parquet", "summary": "summary.parquet", "active": "active.parquet",
          "frozen": "frozen.parquet", "scales": "scales.parquet", "runs": "run.parquet"}
"""Written in this order; the run row last: a date with a run row has every other table whole."""
SINCE_META = "nightcast.active_since"
SCALE_CUT_META = "nightcast.scale_cut"
SNAPSHOTS = ("active", "frozen", "scales")
KEEP_SNAPSHOTS = 7
"""Runs whose state snapshot (``SNAPSHOTS``) is kept: a re-run of one of the newest seven
dates starts from the snapshot before it; an older one rebuilds its state from the change logs."""
UNSCORED = ("pending", "quarantined", "no_baseline")


def _schema(model: type) -> dict[str, pl.DataType]:
    """A pandera model's columns as a polars schema (for empty frames and exact types)."""
    return {n: c.dtype.type for n, c in model.to_schema().columns.items()}


POINTS_SCHEMA = _schema(MonitoringPoints)
_METRIC_SUMS = ("ase", "smape", "se", "ae", "e")  # |e|/scale, sMAPE term, e², |e|, e over scored points
SUMS_SCHEMA: dict[str, pl.DataType] = {
    "dimension": pl.String, "key": pl.String,
    **{c: pl.Int64 for c in ("points", "pending", "quarantined", "no_baseline", "interval_points", "covered")},
    **{f"{p}sum_{m}": pl.Float64 for p in ("", "snaive_") for m in _METRIC_SUMS}}
"""Additive sums of the live points of one summary group: the frozen part of the state."""
SCALE_SUMS_SCHEMA: dict[str, pl.DataType] = {
    "series_id": pl.String, "season_sum": pl.Float64, "season_n": pl.Int64, "one_sum": pl.Float64,
    "one_n": pl.Int64, "rows": pl.Int64, "level_sum": pl.Float64}
"""Per series, over its actuals before a cut: the sums the MASE scale is made of (``mase_scale_rule``)."""
_SCALE_SUMS = [c for c in SCALE_SUMS_SCHEMA if c != "series_id"]
SCALE_TOLERANCE = 1e-9
"""A scale that moved by less than this share (float rounding: the carried sums are added in another
order) is not a change of the point."""
# What makes a point's state differ from the last run's (a change-log row).
_STATE = ["horizon", "method", "forecast", "lower", "upper", "actual", "snaive", "scale", "status"]


class MonitorError(RuntimeError):
    """The monitoring store holds something this code cannot read."""


@dataclass(frozen=True)
class Actuals:
    """The actuals of one monitoring date, and what validation did to the duplicates."""

    values: pl.DataFrame  # series_id, timestamp, actual: unique keys, a target, before the end of the date
    quarantined: pl.DataFrame  # series_id, timestamp of quarantined rows (unique)
    newest: dt.datetime | None  # the data's clock: its newest timestamp (any series) before the end of the date
    duplicate_rows_dropped: int  # exact repeats dropped by validation (the first kept)
    duplicate_keys_refused: int  # keys whose rows conflict: validation quarantined every one


@dataclass(frozen=True)
class Drift:
    """The drift rule's verdict on the champion."""

    fired: bool
    reason: str
    champion: str | None
    origins: list[dt.date]
    points: int
    mase: float | None
    snaive_mase: float | None
    test_mase: float | None


@dataclass(frozen=True)
class State:
    """What one run hands the next, whatever the length of the history.

    ``active``: every point whose origin is ``since`` or later (the recheck window: it may still change),
    once, as ``MonitoringPoints``. ``frozen``: the additive sums (``SUMS``) of every older point, by summary
    group; a point whose origin has left the recheck window never changes again, so its contribution to
    the metrics is folded in once and its rows are never read again.
    """

    active: pl.DataFrame
    frozen: pl.DataFrame
    since: dt.date | None  # None: nothing frozen yet
    scales: "ScaleSums | None" = None  # None: the next run sums the MASE scales over every actual

    @classmethod
    def empty(cls) -> "State":
        return cls(pl.DataFrame(schema=POINTS_SCHEMA), pl.DataFrame(schema=SUMS_SCHEMA), None)


@dataclass(frozen=True)
class ScaleSums:
    """Each series' MASE scale sums over its actuals before ``cut`` (``SCALE_SUMS_SCHEMA``): carried from run
    to run, so a run reads only the actuals from ``cut`` on (and a season before, for the lagged values).
    The cut is the end of the recheck window's first origin, which never moves back: every origin a later
    run scores ends at or after it. An actual older than the cut that is revised later no longer moves the
    scale (it is the history the forecasts of the window were judged against)."""

    sums: pl.DataFrame
    cut: dt.datetime


@dataclass(frozen=True)
class Assessment:
    """Everything one run computes: the change log, the state after it, the summary, the drift verdict."""

    changes: pl.DataFrame  # MonitoringPoints: this date's change log
    state: pl.DataFrame  # MonitoringPoints: every point of the recheck window once, as of this date
    summary: pl.DataFrame  # MonitoringSummary: every point ever (the window's and the frozen sums)
    run: pl.DataFrame  # MonitoringRun
    drift: Drift
    frozen: pl.DataFrame  # SUMS of the points older than ``since``
    since: dt.date  # the first origin of the recheck window: ``state`` holds the origins from it on
    scales: ScaleSums | None = None  # the MASE scale sums up to the end of ``since``


# --- keys and I/O -------------------------------------------------------------------------------

def table_prefix(table: str, model: str) -> str:
    return f"monitoring/{table}/model={safe_key_part(model)}"


def monitoring_key(table: str, model: str, day: dt.date) -> str:
    """The one object of a monitoring partition: ``monitoring/<table>/model=<m>/date=<D>/<file>``."""
    return f"{table_prefix(table, model)}/date={day.isoformat()}/{TABLES[table]}"


def _dated(keys: list[str], pattern: str) -> dict[dt.date, str]:
    found = {}
    for key in keys:
        m = re.search(pattern, key)
        if m:
            found[dt.date.fromisoformat(m.group(1))] = key
    return dict(sorted(found.items()))


def monitoring_dates(store: Store, table: str, model: str) -> list[dt.date]:
    """The dates that have a partition of ``table`` for ``model``, oldest first."""
    return list(_dated(store.list(table_prefix(table, model) + "/"),
                       r"/date=(\d{4}-\d{2}-\d{2})/" + re.escape(TABLES[table]) + "$"))


def forecast_dates(store: Store, model: str) -> list[dt.date]:
    """The ``as_of`` dates that have a forecasts partition for ``model``, oldest first."""
    prefix = forecasts_key(model, dt.date(2000, 1, 1)).split("/as_of=")[0] + "/"
    return list(_dated(store.list(prefix), r"/as_of=(\d{4}-\d{2}-\d{2})/forecasts\.parquet$"))


def read_forecast_window(store: Store, model: str, first: dt.date, last: dt.date) -> tuple[pl.DataFrame, int]:
    """Every forecasts partition with ``first <= as_of <= last``, stacked; and how many there were."""
    dates = [d for d in forecast_dates(store, model) if first <= d <= last]
    frames = [read_forecasts(store, model, d) for d in dates]
    return (pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=_schema(Forecasts))), len(dates)


def _read_checked(store: Store, key: str) -> tuple[pl.DataFrame, dict[str, str]]:
    """A monitoring table and its Parquet metadata, refused when its layout is not this code's."""
    data = store.read_bytes(key)
    meta = pl.read_parquet_metadata(io.BytesIO(data))
    layout = meta.get(LAYOUT_META)
    if layout != MONITORING_LAYOUT:
        raise MonitorError(f"{store.uri(key)} has monitoring layout {layout!r}; this code reads {MONITORING_LAYOUT!r}")
    return pl.read_parquet(io.BytesIO(data)), meta


def _read_table(store: Store, key: str) -> pl.DataFrame:
    return _read_checked(store, key)[0]


def _read_tables(store: Store, table: str, model: str, dates: list[dt.date]) -> list[pl.DataFrame]:
    return [_read_table(store, monitoring_key(table, model, d)) for d in dates]


def read_points(store: Store, model: str, up_to: dt.date | None = None, before: dt.date | None = None) -> pl.DataFrame:
    """The state of every monitored point: its newest change-log row dated ``<= up_to`` (or ``< before``).

    Each ``(series_id, timestamp, as_of, model_version)`` once; ``dropped`` rows included (filter
    ``status``); sorted by the key.
    """
    dates = [d for d in monitoring_dates(store, "points", model)
             if (up_to is None or d <= up_to) and (before is None or d < before)]
    logs = _read_tables(store, "points", model, dates)
    if not logs:
        return pl.DataFrame(schema=POINTS_SCHEMA)
    return latest_state(pl.concat(logs, how="vertical"))


def read_summary(store: Store, model: str, day: dt.date | None = None) -> pl.DataFrame:
    """The summary of the run for ``day`` (default: the newest run)."""
    dates = monitoring_dates(store, "summary", model)
    if not dates:
        raise FileNotFoundError(f"no monitoring summary for model {model!r} in {store.url}")
    day = day or dates[-1]
    return _read_table(store, monitoring_key("summary", model, day))


def read_runs(store: Store, model: str) -> pl.DataFrame:
    """One row per monitoring run, oldest first (accuracy on actuals over time, drift decisions)."""
    runs = _read_tables(store, "runs", model, monitoring_dates(store, "runs", model))
    return pl.concat(runs, how="vertical") if runs else pl.DataFrame()


def _parquet(frame: pl.DataFrame, model: str, day: dt.date, extra: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    frame.write_parquet(buf, metadata={LAYOUT_META: MONITORING_LAYOUT, "nightcast.model": model,
                                       "nightcast.date": day.isoformat(), **(extra or {})})
    return buf.getvalue()


def write_monitoring(store: Store, model: str, day: dt.date, assessment: Assessment) -> dict[str, str]:
    """Write the day's change log, summary, state snapshot and run row (last: a run row means the date's
    partitions are whole), then drop snapshots older than the newest ``KEEP_SNAPSHOTS`` runs.

    One object per partition, each replaced atomically; the same assessment gives the same bytes.
    """
    since = {SINCE_META: assessment.since.isoformat()}
    tables = [("points", assessment.changes, None), ("summary", assessment.summary, None),
              ("active", assessment.state, since), ("frozen", assessment.frozen, since)]
    if assessment.scales is not None:
        tables.append(("scales", assessment.scales.sums, {SCALE_CUT_META: assessment.scales.cut.isoformat()}))
    out = {}
    for table, frame, extra in [*tables, ("runs", assessment.run, None)]:
        key = monitoring_key(table, model, day)
        store.write_bytes(key, _parquet(frame, model, day, extra))
        out[table] = key
    keep = {day, *monitoring_dates(store, "runs", model)[-KEEP_SNAPSHOTS:]}
    for table in SNAPSHOTS:
        for old in monitoring_dates(store, table, model):
            if old not in keep:
                store.delete(monitoring_key(table, model, old))
    return out


def read_state(store: Store, model: str, before: dt.date) -> State:
    """The state the newest complete run before ``before`` left (a date with a run row; a run that died
    before its run row is never read). From its snapshot when kept, else rebuilt from the change logs
    of the complete runs up to it (a store written before snapshots, or a re-run of an old date)."""
    runs = [d for d in monitoring_dates(store, "runs", model) if d < before]
    if not runs:
        return State.empty()
    last = runs[-1]
    try:
        active = _read_table(store, monitoring_key("active", model, last))
        frozen, meta = _read_checked(store, monitoring_key("frozen", model, last))
    except FileNotFoundError:
        complete = set(runs)
        logs = _read_tables(store, "points", model, [d for d in monitoring_dates(store, "points", model)
                                                     if d in complete])
        points = latest_state(pl.concat(logs, how="vertical")) if logs else pl.DataFrame(schema=POINTS_SCHEMA)
        return State(points, pl.DataFrame(schema=SUMS_SCHEMA), None)
    since = meta.get(SINCE_META)
    try:  # a store written before scale sums were carried has none: that run sums every actual once
        sums, scale_meta = _read_checked(store, monitoring_key("scales", model, last))
        scales = ScaleSums(sums.cast(SCALE_SUMS_SCHEMA), dt.datetime.fromisoformat(scale_meta[SCALE_CUT_META]))
    except FileNotFoundError:
        scales = None
    return State(active.cast(POINTS_SCHEMA), frozen.cast(SUMS_SCHEMA), dt.date.fromisoformat(since) if since else None,
                 scales)


def width_factors(store: Store, bundle, model: str, as_of: dt.date) -> dict | None:  # noqa: ANN001 - a Bundle
    """Interval multipliers for ``bundle``'s forecasts as of ``as_of``, from the actuals the monitor has
    scored (``nightcast.tasks.forecast.intervals.recalibrate``): the bundle's scored points in the state the newest complete
    monitoring run before ``as_of`` left, so only actuals known before the origin count. None when the
    bundle has no combined conformal widths or the monitor has scored none of its points."""
    from nightcast.tasks.data.features import FeatureState
    from nightcast.tasks.forecast.intervals import recalibrate

    conformal = bundle.preprocessing.get("conformal") or {}
    if bundle.preprocessing.get("combination") is None or not conformal.get("half_widths"):
        return None
    runs = [d for d in monitoring_dates(store, "runs", model) if d < as_of]
    if not runs:
        return None
    points = read_state(store, model, before=as_of).active.filter(
        pl.col("status") == "scored", pl.col("model_version") == bundle.version)
    if points.height == 0:
        return None
    state = FeatureState.from_json(bundle.preprocessing["features"])
    return {**recalibrate(points, conformal["half_widths"], state, conformal["level"]),
            "monitored_through": runs[-1].isoformat()}


# --- actuals --------------------------------------------------------------------------------------

def gather_actuals(checked: ValidationResult, day: dt.date, timestamp_format: str | None = None) -> Actuals:
    """The actuals known at the end of ``day`` from a validation result, and its duplicate counts."""
    cutoff = _cutoff(day)
    values = (checked.valid.filter(pl.col("timestamp") < cutoff, pl.col("target").is_not_null())
              .select("series_id", "timestamp", pl.col("target").alias("actual")))
    q = checked.quarantine
    keys = pl.DataFrame(schema={"series_id": pl.String, "timestamp": pl.Datetime("us")})
    refused = 0
    if q.height:
        typed = coerce_observations(q.select("series_id", "timestamp", "target"), timestamp_format)
        keys = (typed.select("series_id", "timestamp").drop_nulls()
                .filter(pl.col("timestamp") < cutoff).unique().sort("series_id", "timestamp"))
        dup = q["_rules"].str.contains("multiple_fields_uniqueness")
        refused = q.filter(dup).select("series_id", "timestamp").n_unique() if dup.any() else 0
    newest = checked.valid.filter(pl.col("timestamp") < cutoff)["timestamp"].max()
    return Actuals(values, keys, newest, checked.exact_duplicates, int(refused))


# --- the hot path: whole frames, no loop over series, points or origins -------------------------

def _cutoff(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time())


def _end_of(as_of: pl.Expr) -> pl.Expr:
    return as_of.cast(pl.Datetime("us")) + pl.duration(days=1)


def steps_back(ts: pl.Expr, n: pl.Expr, calendar: Calendar) -> pl.Expr:
    """``ts`` moved ``n`` calendar steps back: ``offset_by`` for regular calendars, business days
    (weekends and the calendar's holidays skipped) for business calendars."""
    m = re.fullmatch(r"(\d+)(\w+)", calendar.frequency)
    if not m:
        raise MonitorError(f"cannot step frequency {calendar.frequency!r}")
    k, unit = int(m.group(1)), m.group(2)
    if calendar.kind == "business":
        holidays = [dt.date.fromisoformat(h) for h in calendar.holidays]
        return ts.dt.add_business_days(-(n * k), holidays=holidays)
    return ts.dt.offset_by(pl.format("-{}" + unit, n * k))


def horizon_days(horizon: int, calendar: Calendar) -> int:
    """Whole days a forecast of ``horizon`` steps reaches past its origin (business: weekends included)."""
    m = re.fullmatch(r"(\d+)(\w+)", calendar.frequency)
    if not m:
        raise MonitorError(f"cannot step frequency {calendar.frequency!r}")
    k, unit = int(m.group(1)), m.group(2)
    n = horizon * k * (2 if calendar.kind == "business" else 1)  # 5 business days take at most 9 days
    start = dt.datetime(2000, 1, 1)
    end = pl.Series([start]).dt.offset_by(f"{n}{unit}").item()
    return -(-(end - start) // dt.timedelta(days=1))


def _pair_rows(actuals: pl.DataFrame, season: int, calendar: Calendar, start: dt.datetime | None) -> pl.DataFrame:
    """The actuals from ``start`` on (all when None), sorted, with ``|y_t - y_(t-m)|`` (``_dm``) and
    ``|y_t - y_(t-1)|`` (``_d1``): null where the value ``m`` (1) calendar steps back is not an actual."""
    a = actuals.select("series_id", "timestamp", "actual")
    prev = a.select("series_id", pl.col("timestamp").alias("_t"), pl.col("actual").alias("_p"))
    if start is not None:
        a = a.filter(pl.col("timestamp") >= start)
        prev = prev.filter(pl.col("_t") >= steps_back(pl.lit(start, dtype=pl.Datetime("us")),
                                                     pl.lit(max(season, 1)), calendar))
    a = a.sort("series_id", "timestamp")

    def diffs(m: int) -> pl.Series:
        return (a.with_columns(steps_back(pl.col("timestamp"), pl.lit(m), calendar).alias("_t"))
                .join(prev, on=["series_id", "_t"], how="left", maintain_order="left")
                .select((pl.col("actual") - pl.col("_p")).abs())).to_series()

    return a.with_columns(diffs(season).alias("_dm"), diffs(1).alias("_d1"))


def _sum_terms(over: str | None = None) -> list[pl.Expr]:
    """``SCALE_SUMS_SCHEMA``'s sums of ``_pair_rows``: per series (``over`` None, in a group_by) or running
    (``over="series_id"``: cumulative, each row's sums up to and including it)."""
    def run(e: pl.Expr) -> pl.Expr:
        return e.cum_sum().over(over) if over else e.sum()

    return [run(pl.col("_dm").fill_null(0.0)).alias("season_sum"),
            run(pl.col("_dm").is_not_null().cast(pl.Int64)).alias("season_n"),
            run(pl.col("_d1").fill_null(0.0)).alias("one_sum"),
            run(pl.col("_d1").is_not_null().cast(pl.Int64)).alias("one_n"),
            (pl.int_range(1, pl.len() + 1).over(over) if over else pl.len()).cast(pl.Int64).alias("rows"),
            run(pl.col("actual").abs().fill_null(0.0)).alias("level_sum")]


def _add_scale_sums(a: pl.DataFrame, b: pl.DataFrame) -> pl.DataFrame:
    return (pl.concat([a.select(list(SCALE_SUMS_SCHEMA)).cast(SCALE_SUMS_SCHEMA),
                       b.select(list(SCALE_SUMS_SCHEMA)).cast(SCALE_SUMS_SCHEMA)])
            .group_by("series_id").agg(pl.col(_SCALE_SUMS).sum()).sort("series_id"))


def advance_scale_sums(actuals: pl.DataFrame, season: int, calendar: Calendar, base: ScaleSums | None,
                       cut: dt.datetime) -> ScaleSums:
    """The scale sums up to ``cut``: ``base``'s and those of the actuals from its cut to ``cut``."""
    start = base.cut if base is not None else None
    if base is not None and cut <= base.cut:
        return base
    rows = _pair_rows(actuals, season, calendar, start).filter(pl.col("timestamp") < cut)
    new = rows.group_by("series_id").agg(_sum_terms())
    return ScaleSums(_add_scale_sums(base.sums, new) if base is not None else
                     new.select(list(SCALE_SUMS_SCHEMA)).cast(SCALE_SUMS_SCHEMA).sort("series_id"), cut)


def mase_scales(actuals: pl.DataFrame, origins: pl.DataFrame, season: int, calendar: Calendar,
                base: ScaleSums | None = None) -> pl.DataFrame:
    """Per (series_id, as_of) of ``origins``: the MASE denominator from the actuals before the end of as_of.

    The mean of ``|y_t - y_(t-m)|`` over pairs of actuals ``m`` calendar steps apart, both before the
    cut (cumulative sums per series, read at each cut by an as-of join), turned into a scale by
    ``mase_scale_rule`` (lag 1 for short series, the panel floor, 1.0 where undefined). With ``base``
    (sums up to its cut, no later than any origin's end) only the actuals from that cut on are read.
    """
    a = _pair_rows(actuals, season, calendar, base.cut if base is not None else None)
    cum = a.select("series_id", "timestamp", *_sum_terms(over="series_id")).sort("timestamp")
    cuts = origins.select("series_id", "as_of").unique().with_columns(_end_of(pl.col("as_of")).alias("_cut"))
    got = cuts.sort("_cut").join_asof(cum, left_on="_cut", right_on="timestamp", by="series_id",
                                      strategy="backward", allow_exact_matches=False, check_sortedness=False)
    names = _SCALE_SUMS
    if base is not None:
        got = got.join(base.sums.rename({c: f"_b_{c}" for c in names}), on="series_id", how="left")
        got = got.with_columns([(pl.col(c).fill_null(0) + pl.col(f"_b_{c}").fill_null(0)).alias(c) for c in names])
    col = {c: got[c].fill_null(0).to_numpy().astype(float) for c in names}
    level = col["level_sum"] / np.maximum(col["rows"], 1)
    scale = mase_scale_rule(col["season_sum"], col["season_n"], col["one_sum"], col["one_n"], col["rows"], level,
                            season)
    return got.select("series_id", "as_of").with_columns(pl.Series("scale", scale))


def join_actuals(forecasts: pl.DataFrame, actuals: Actuals, season: int, calendar: Calendar,
                 day: dt.date, scale_base: ScaleSums | None = None) -> pl.DataFrame:
    """Every forecast point due by the end of ``day``, with its actual, seasonal naive, scale and status.

    Due: its target time is before the end of ``day`` and not after the newest timestamp of the data
    (so the hours of a day the data has not reached yet are not due, rather than pending).
    """
    cutoff = _cutoff(day)
    newest = actuals.newest or dt.datetime.min
    due = forecasts.filter(pl.col("timestamp") < cutoff, pl.col("timestamp") <= newest, pl.col("as_of") <= day)
    vals = actuals.values.filter(pl.col("timestamp") < cutoff)
    seasons = seasonal_lag(pl.col("horizon").cast(pl.Int64), season)  # m·ceil(h/m), as the backtest's
    due = due.with_columns(steps_back(pl.col("timestamp"), seasons, calendar).alias("_ref"))
    oldest = due.select(pl.min_horizontal(pl.col("timestamp").min(), pl.col("_ref").min())).item()
    near = vals.filter(pl.col("timestamp") >= oldest) if oldest is not None else vals.head(0)  # what the points read
    pts = (due.join(near, on=["series_id", "timestamp"], how="left")
           .join(near.select("series_id", pl.col("timestamp").alias("_ref"), pl.col("actual").alias("snaive")),
                 on=["series_id", "_ref"], how="left")
           .join(actuals.quarantined.with_columns(pl.lit(True).alias("_q")), on=["series_id", "timestamp"],
                 how="left"))
    # known at the origin: a reference after the end of as_of would be look-ahead (never, on the grid)
    pts = pts.with_columns(pl.when(pl.col("_ref") < _end_of(pl.col("as_of"))).then(pl.col("snaive")).alias("snaive"))
    scales = mase_scales(vals, pts.select("series_id", "as_of"), season, calendar, scale_base)
    pts = pts.join(scales, on=["series_id", "as_of"], how="left")
    status = (pl.when(pl.col("actual").is_null() & pl.col("_q").fill_null(False)).then(pl.lit("quarantined"))
              .when(pl.col("actual").is_null()).then(pl.lit("pending"))
              .when(pl.col("snaive").is_null()).then(pl.lit("no_baseline"))
              .otherwise(pl.lit("scored")))
    return pts.select("series_id", "timestamp", "as_of", "model_version", "horizon", "method", "forecast",
                      "lower", "upper", "actual", "snaive", pl.col("scale").fill_null(1.0), status.alias("status"))


def _differs(column: str) -> pl.Expr:
    """Whether a point's ``column`` differs from its previous state's (the scale within ``SCALE_TOLERANCE``)."""
    now, before = pl.col(column), pl.col(f"{column}_prev")
    if column != "scale":
        return now.ne_missing(before)
    return (now.is_null() != before.is_null()) | ((now - before).abs() > SCALE_TOLERANCE * before.abs()).fill_null(False)


def track_changes(previous: pl.DataFrame, current: pl.DataFrame, model: str, day: dt.date,
                  recheck_from: dt.date) -> pl.DataFrame:
    """The change log of ``day``: the points of ``current`` whose state differs from ``previous``, and the
    points of ``previous`` (as_of >= ``recheck_from``) whose forecast is no longer stored."""
    old = previous.select(*KEY, *[pl.col(c).alias(f"{c}_prev") for c in [*_STATE, "revisions", "first_seen",
                                                                        "scored_on"]])
    j = current.join(old, on=KEY, how="full", coalesce=True, maintain_order="left_right")
    here, before = pl.col("status"), pl.col("status_prev")
    live = before.is_not_null() & (before != "dropped")
    scored, was_scored = here == "scored", before == "scored"
    differs = pl.any_horizontal([_differs(c) for c in _STATE])
    change = (pl.when(here.is_not_null() & ~live).then(pl.lit("new"))
              .when(here.is_not_null() & scored & before.is_in(UNSCORED)).then(pl.lit("late"))
              .when(here.is_not_null() & scored & was_scored & pl.col("actual").ne_missing(pl.col("actual_prev")))
              .then(pl.lit("revised"))
              .when(here.is_not_null() & was_scored & ~scored).then(pl.lit("withdrawn"))
              .when(here.is_not_null() & differs).then(pl.lit("updated"))
              .when(here.is_null() & live & (pl.col("as_of") >= recheck_from)).then(pl.lit("dropped")))
    rows = j.with_columns(change.alias("change")).filter(pl.col("change").is_not_null())
    gone = pl.col("change") == "dropped"
    day_lit = pl.lit(day, dtype=pl.Date)
    return rows.select(
        *KEY,
        *[pl.when(gone).then(pl.col(f"{c}_prev")).otherwise(pl.col(c)).alias(c) for c in _STATE[:-1]],
        pl.when(gone).then(pl.lit("dropped")).otherwise(here).alias("status"),
        "change",
        (pl.col("revisions_prev").fill_null(0) + (pl.col("change") == "revised").cast(pl.Int32))
        .cast(pl.Int32).alias("revisions"),
        pl.when(pl.col("change") == "new").then(day_lit).otherwise(pl.col("first_seen_prev")).alias("first_seen"),
        pl.when(scored & was_scored).then(pl.col("scored_on_prev")).when(scored).then(day_lit)
        .otherwise(pl.lit(None, dtype=pl.Date)).alias("scored_on"),
        pl.lit(model).alias("model"), day_lit.alias("date"),
    ).cast(POINTS_SCHEMA).sort(KEY)


def latest_state(logs: pl.DataFrame) -> pl.DataFrame:
    """Each point's newest row over change logs (stacked in any order): the state, one row per key."""
    return logs.sort("date", maintain_order=True).unique(KEY, keep="last", maintain_order=True).sort(KEY)


def _sum_exprs() -> list[pl.Expr]:
    a, f, sn, st = pl.col("actual"), pl.col("forecast"), pl.col("snaive"), pl.col("status")
    scored = st == "scored"
    interval = scored & pl.col("lower").is_not_null() & pl.col("upper").is_not_null()

    def sums(pred: pl.Expr, prefix: str) -> list[pl.Expr]:
        e = pred - a
        denom = a.abs() + pred.abs()
        terms = {"ase": e.abs() / pl.col("scale"), "smape": pl.when(denom > 0).then(200 * e.abs() / denom)
                 .otherwise(0.0), "se": e * e, "ae": e.abs(), "e": e}
        return [terms[m].filter(scored).sum().cast(pl.Float64).alias(f"{prefix}sum_{m}") for m in _METRIC_SUMS]

    return [scored.sum().cast(pl.Int64).alias("points"),
            (st == "pending").sum().cast(pl.Int64).alias("pending"),
            (st == "quarantined").sum().cast(pl.Int64).alias("quarantined"),
            (st == "no_baseline").sum().cast(pl.Int64).alias("no_baseline"),
            interval.sum().cast(pl.Int64).alias("interval_points"),
            ((pl.col("lower") <= a) & (a <= pl.col("upper"))).filter(interval).sum().cast(pl.Int64).alias("covered"),
            *sums(f, ""), *sums(sn, "snaive_")]


def group_sums(points: pl.DataFrame) -> pl.DataFrame:
    """``SUMS`` of the live points (not ``dropped``) overall and by each of ``DIMENSIONS``."""
    live = points.filter(pl.col("status") != "dropped")
    frames = [live.select(pl.lit("all").alias("dimension"), pl.lit("all").alias("key"), *_sum_exprs())]
    for dim in DIMENSIONS[1:]:
        frames.append(live.group_by(dim).agg(*_sum_exprs())
                      .select(pl.lit(dim).alias("dimension"), pl.col(dim).cast(pl.String).alias("key"),
                              pl.exclude(dim)))
    return pl.concat(frames, how="vertical_relaxed").cast(SUMS_SCHEMA)


def add_sums(*parts: pl.DataFrame) -> pl.DataFrame:
    """Sums of the same groups added (a group missing from a part counts zero)."""
    stacked = pl.concat([p.cast(SUMS_SCHEMA) for p in parts], how="vertical")
    return stacked.group_by("dimension", "key").agg(pl.exclude("dimension", "key").sum()).cast(SUMS_SCHEMA)


def summary_from_sums(sums: pl.DataFrame, model: str, day: dt.date) -> pl.DataFrame:
    """``MonitoringSummary`` from group sums: every metric a ratio of sums (null where a group has no scored
    point; coverage null where it has no interval), ordered by dimension, then key (steps by number)."""
    n = pl.col("points")

    def ratio(num: pl.Expr, den: pl.Expr) -> pl.Expr:
        return pl.when(den > 0).then(num / den.cast(pl.Float64))

    metrics = []
    for p in ("", "snaive_"):
        metrics += [ratio(pl.col(f"{p}sum_ase"), n).alias(f"{p}mase"), ratio(pl.col(f"{p}sum_smape"), n)
                    .alias(f"{p}smape"), ratio(pl.col(f"{p}sum_se"), n).sqrt().alias(f"{p}rmse"),
                    ratio(pl.col(f"{p}sum_ae"), n).alias(f"{p}mae"), ratio(pl.col(f"{p}sum_e"), n).alias(f"{p}bias")]
    order = pl.col("dimension").replace_strict(list(DIMENSIONS), list(range(len(DIMENSIONS))), return_dtype=pl.Int32)
    step = pl.when(pl.col("dimension") == "horizon").then(pl.col("key").cast(pl.Int64, strict=False))
    out = (sums.with_columns(*metrics, (pl.col("pending") + pl.col("quarantined")).alias("pending"),
                             ratio(pl.col("covered"), pl.col("interval_points")).alias("coverage"))
           .sort(order, step, "key", nulls_last=True))
    return out.select(pl.lit(model).alias("model"), pl.lit(day, dtype=pl.Date).alias("date"), "dimension", "key",
                      *[c for c in MonitoringSummary.to_schema().columns if c not in ("model", "date", "dimension",
                                                                                        "key")])


def test_span_mase(metrics: dict) -> float | None:
    """The served forecasts' test-span MASE from a bundle's ``metrics.json`` (None when absent)."""
    for row in metrics.get("test") or []:
        if row.get("model") == "served" and row.get("series_id") == "ALL" and row.get("mase") is not None:
            return float(row["mase"])
    return None


def decide_drift(state: pl.DataFrame, rule: DriftRule, champion: str | None, test_mase: float | None) -> Drift:
    """Judge the champion on its scored points from its newest ``rule.origins`` origins."""
    mine = state.filter(pl.col("model_version") == (champion or ""), pl.col("status") == "scored")
    origins = mine["as_of"].unique().sort(descending=True).head(rule.origins)
    pts = mine.filter(pl.col("as_of").is_in(origins.implode()))
    scale = pl.col("scale")
    got = pts.select(((pl.col("forecast") - pl.col("actual")).abs() / scale).mean().alias("m"),
                     ((pl.col("snaive") - pl.col("actual")).abs() / scale).mean().alias("s")).row(0)
    mase, snaive = got
    k, n = origins.len(), pts.height
    base = dict(champion=champion, origins=sorted(origins.to_list()), points=n, mase=mase, snaive_mase=snaive,
                test_mase=test_mase)
    if not rule.enabled:
        return Drift(False, "drift rule disabled", **base)
    if champion is None:
        return Drift(False, "no champion to judge", **base)
    if k < rule.min_origins or n < rule.min_points:
        return Drift(False, f"not judged: champion {champion} has {k} origin(s) and {n} point(s) with actuals; "
                            f"the rule needs {rule.min_origins} and {rule.min_points}", **base)
    fired = []
    if rule.vs_seasonal_naive is not None and mase > (1 + rule.vs_seasonal_naive) * snaive:
        fired.append(f"MASE {mase:.4f} over its newest {k} origin(s) ({n} points) is more than "
                     f"{rule.vs_seasonal_naive:.0%} worse than seasonal naive's {snaive:.4f} on the same points")
    if rule.vs_test_span is not None and test_mase is not None and mase > (1 + rule.vs_test_span) * test_mase:
        fired.append(f"MASE {mase:.4f} over its newest {k} origin(s) ({n} points) is more than "
                     f"{rule.vs_test_span:.0%} worse than its test-span MASE {test_mase:.4f}")
    if fired:
        return Drift(True, "; ".join(fired), **base)
    test = f", test span {test_mase:.4f}" if test_mase is not None else ""
    return Drift(False, f"no drift: MASE {mase:.4f} over {k} origin(s) ({n} points), seasonal naive "
                        f"{snaive:.4f}{test}", **base)


def _run_row(model: str, day: dt.date, partitions: int, actuals: Actuals, changes: pl.DataFrame,
             totals: pl.DataFrame, summary: pl.DataFrame, drift: Drift) -> pl.DataFrame:
    counts = changes.group_by("change").len()
    changed = dict(zip(counts["change"].to_list(), counts["len"].to_list()))
    everything = totals.filter(pl.col("dimension") == "all")
    held = everything.row(0, named=True) if everything.height else dict.fromkeys(SUMS_SCHEMA, 0)
    held["scored"] = held["points"]
    overall = summary.filter(pl.col("dimension") == "all").row(0, named=True)
    row = {"model": model, "date": day, "champion": drift.champion, "forecast_partitions": partitions,
           "points": sum(held[s] for s in ("scored", "pending", "quarantined", "no_baseline")),
           **{s: held[s] for s in ("scored", "pending", "quarantined", "no_baseline")},
           **{c: changed.get(c, 0) for c in ("new", "late", "revised", "updated", "withdrawn", "dropped")},
           "actual_rows": actuals.values.height, "duplicate_rows_dropped": actuals.duplicate_rows_dropped,
           "duplicate_keys_refused": actuals.duplicate_keys_refused,
           "mase": overall["mase"], "snaive_mase": overall["snaive_mase"], "coverage": overall["coverage"],
           "drift_origins": len(drift.origins), "drift_points": drift.points, "drift_mase": drift.mase,
           "drift_snaive_mase": drift.snaive_mase, "test_mase": drift.test_mase, "drift": drift.fired,
           "drift_reason": drift.reason}
    return pl.DataFrame([row], schema=_schema(MonitoringRun))


def assess(forecasts: pl.DataFrame, actuals: Actuals, previous: State, *, model: str, day: dt.date,
           season: int, calendar: Calendar, recheck_from: dt.date, partitions: int, rule: DriftRule,
           champion: str | None, test_mase: float | None) -> Assessment:
    """One monitoring date, from its inputs to what it writes: points, changes, state, summary, drift.

    Only the points of the recheck window are joined, compared and carried; points of the previous state
    whose origin left the window are folded into the frozen sums. A window never reopens: with a longer
    ``recheck_days`` than the previous run's, points already frozen stay frozen (``since`` only moves on).
    """
    since = recheck_from if previous.since is None else max(recheck_from, previous.since)
    after = pl.col("as_of") >= since
    carried = previous.active.filter(after).select(list(POINTS_SCHEMA))
    frozen = add_sums(previous.frozen, group_sums(previous.active.filter(~after)))
    current = join_actuals(forecasts.filter(after), actuals, season, calendar, day, previous.scales)
    changes = track_changes(carried, current, model, day, since)
    state = latest_state(pl.concat([carried, changes], how="vertical"))
    totals = add_sums(frozen, group_sums(state))
    summary = summary_from_sums(totals, model, day)
    drift = decide_drift(state, rule, champion, test_mase)
    run = _run_row(model, day, partitions, actuals, changes, totals, summary, drift)
    MonitoringPoints.validate(changes, lazy=True)
    MonitoringSummary.validate(summary, lazy=True)
    MonitoringRun.validate(run, lazy=True)
    scales = advance_scale_sums(actuals.values, season, calendar, previous.scales, _cutoff(since))  # since <= day
    return Assessment(changes, state, summary, run, drift, frozen.sort("dimension", "key"), since, scales)


# --- publishing -----------------------------------------------------------------------------------

def emit_drift_event(model: str, day: dt.date, drift: Drift, store_url: str, data: str) -> str | None:
    """``nightcast.drift.detected`` on resource ``nightcast.model.<name>``; the event id (None: not sent).

    The payload carries what a retrain needs (``store``, ``data``): the retrain deployment's trigger
    (deployments/prefect.yaml) passes them on, and a run from the API may only use the worker's
    configured locations anyway (``Settings.check_location``).
    """
    from prefect.events import emit_event

    event = emit_event(
        event=DRIFT_EVENT,
        resource={"prefect.resource.id": f"nightcast.model.{model}", "prefect.resource.name": model,
                  "nightcast.model.name": model, "nightcast.model.version": drift.champion or ""},
        payload={"model": model, "version": drift.champion, "date": day.isoformat(), "reason": drift.reason,
                 "mase": drift.mase, "seasonal_naive_mase": drift.snaive_mase, "test_mase": drift.test_mase,
                 "origins": [d.isoformat() for d in drift.origins], "points": drift.points,
                 "store": store_url, "data": data})
    return None if event is None else str(event.id)


def drift_event_key(model: str) -> str:
    """The last drift event sent for a model (one small JSON, replaced atomically)."""
    return f"monitoring/events/model={safe_key_part(model)}/drift.json"


def last_drift_event(store: Store, model: str) -> dict | None:
    try:
        return json.loads(store.read_bytes(drift_event_key(model)))
    except FileNotFoundError:
        return None


def record_drift_event(store: Store, model: str, day: dt.date, champion: str | None, event: str) -> None:
    store.write_bytes(drift_event_key(model), json.dumps(
        {"model": model, "date": day.isoformat(), "champion": champion, "event": event,
         "sent_at": dt.datetime.now(dt.timezone.utc).isoformat()}, indent=2).encode())


RETRAIN_FLOW = "retrain"


def retrains_in_flight(model: str) -> list[str]:
    """Names of ``retrain`` flow runs of ``model`` that are running, pending or due (queued behind the
    concurrency limit), on the Prefect API this process talks to. Future scheduled runs do not count."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState,
                                                FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType

    now = dt.datetime.now(dt.timezone.utc)
    states = [StateType.RUNNING, StateType.PENDING, StateType.SCHEDULED]
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[RETRAIN_FLOW])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=states))),
            limit=200)
    found = []
    for run in runs:
        params = run.parameters.get("params") or {}
        name = params.get("model_name", "lstm") if isinstance(params, dict) else "lstm"
        due = run.expected_start_time is None or run.expected_start_time <= now
        if name == model and (run.state_type != StateType.SCHEDULED or due):
            found.append(run.name)
    return found


def hold_drift_event(last: dict | None, champion: str | None, day: dt.date, cooldown_days: int,
                     in_flight: list[str]) -> str | None:
    """Why a drift event must not be sent now (``None``: send it): a retrain of the model is already queued
    or running, or one was asked for the same champion less than ``cooldown_days`` monitoring days ago."""
    if in_flight:
        return f"not sent: a retrain of this model is already queued or running ({', '.join(in_flight[:3])})"
    if last and cooldown_days and last.get("champion") == champion:
        then = dt.date.fromisoformat(last["date"])
        if abs((day - then).days) < cooldown_days:
            return (f"not sent: a retrain was asked for champion {champion} on {then} (event {last.get('event')}); "
                    f"cooldown of {cooldown_days} days for the same champion")
    return None


def worst_series(summary: pl.DataFrame, n: int = 10) -> pl.DataFrame:
    """The ``n`` series with the highest MASE (scored series only)."""
    return (summary.filter(pl.col("dimension") == "series_id", pl.col("points") > 0)
            .sort(["mase", "key"], descending=[True, False]).head(n))


def artifact_rows(summary: pl.DataFrame, worst: int = 10) -> list[dict]:
    """The table artifact: overall, by method and by horizon, then the worst series."""
    def rows(frame: pl.DataFrame, what: str | None = None) -> list[dict]:
        return [{"group": what or r["dimension"], "key": r["key"], "points": r["points"], "pending": r["pending"],
                 "MASE": _round(r["mase"]), "seasonal naive MASE": _round(r["snaive_mase"]),
                 "sMAPE %": _round(r["smape"]), "RMSE": _round(r["rmse"]), "bias": _round(r["bias"]),
                 "coverage %": _round(None if r["coverage"] is None else 100 * r["coverage"])}
                for r in frame.iter_rows(named=True)]

    top = summary.filter(pl.col("dimension").is_in(["all", "method", "horizon", "model_version"]))
    return rows(top) + rows(worst_series(summary, worst), "worst series")


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(float(x), digits)


def format_monitoring(out: dict) -> str:
    """The CLI's summary of a monitor run (``monitor_flow``'s return value)."""
    r = out["run"]
    lines = [f"monitoring {out['model']} on {out['date']}: {r['points']} due points, {r['scored']} scored, "
             f"{r['pending']} pending, {r['quarantined']} quarantined, {r['no_baseline']} without a baseline",
             f"this run: {r['new']} new, {r['late']} scored late, {r['revised']} revised, {r['updated']} updated, "
             f"{r['withdrawn']} withdrawn, {r['dropped']} dropped; duplicates: {r['duplicate_rows_dropped']} "
             f"exact rows dropped, {r['duplicate_keys_refused']} conflicting keys refused",
             f"{'group':<14}{'key':<22}{'points':>8}{'MASE':>9}{'sn. MASE':>10}{'sMAPE %':>9}{'RMSE':>10}"
             f"{'bias':>10}{'cover %':>9}"]
    for row in out["table"]:
        def f(v: float | None, w: int, p: int) -> str:
            return f"{'-':>{w}}" if v is None else f"{v:>{w}.{p}f}"
        lines.append(f"{row['group']:<14}{str(row['key'])[:21]:<22}{row['points']:>8}{f(row['MASE'], 9, 3)}"
                     f"{f(row['seasonal naive MASE'], 10, 3)}{f(row['sMAPE %'], 9, 2)}{f(row['RMSE'], 10, 3)}"
                     f"{f(row['bias'], 10, 3)}{f(row['coverage %'], 9, 1)}")
    drift = out["drift"]
    lines.append(f"drift: {'DETECTED' if drift['fired'] else 'no'} ({drift['reason']})"
                 + (f"; event {out['event']} sent" if out.get("event") else ""))
    lines += ["written:"] + [f"  {uri}" for uri in out["files"].values()]
    return "\n".join(lines)
