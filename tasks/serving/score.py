"""Forecast H steps per series from the champion bundle and the data up to ``as_of``."""

from __future__ import annotations

import datetime as dt
import io
import re
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import polars as pl

from nightcast.schemas.frames import FORECASTS_LAYOUT, Forecasts
from nightcast.schemas.params import CleanConfig
from nightcast.tasks.data.clean import (Calendar, _runs, by_series, outlier_window, clean_tails, decide_calendar,
                                        series_tails)
from nightcast.tasks.forecast.evaluate import NETWORK
from nightcast.tasks.data.features import FeatureEncoder, FeatureState, inverse_scale, scale_values, with_new_series
from nightcast.tasks.data.pages import on_small_pages
from nightcast.tasks.forecast.intervals import bounds
from nightcast.tasks.forecast.predict import predict_seeds
from nightcast.tasks.data.window import make_windows, min_history
from nightcast.tasks.ops.registry import Bundle
from nightcast.tasks.ops.storage import Store, safe_key_part


class ScoreError(ValueError):
    """Scoring cannot produce a forecast for the request."""


@dataclass
class ScoreReport:
    series_scored: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # series_id -> why
    methods: dict[str, int] = field(default_factory=dict)  # method -> series served by it


def partition_key(model: str, as_of: dt.date) -> str:
    return f"forecasts/model={safe_key_part(model)}/as_of={as_of.isoformat()}"


def forecasts_key(model: str, as_of: dt.date) -> str:
    """The one object of a partition: it exists only when the partition is complete."""
    return f"{partition_key(model, as_of)}/forecasts.parquet"


@dataclass
class ScorePart:
    """One shard's share of a scoring run, before the shards are put together."""

    forecasts: pl.DataFrame | None  # None: no series of this shard could be scored
    report: ScoreReport
    last_seen: pl.DataFrame  # series_id, last_seen of every series that reached cleaning
    clean_last: dt.datetime | None  # the newest cleaned timestamp the shard saw
    staged: str | None = None  # store key of the forecasts once a shard has staged them


def forecast_from_bundle(bundle: Bundle, observations: pl.DataFrame,
                         as_of: dt.date) -> tuple[pl.DataFrame, ScoreReport]:
    """Clean the history up to ``as_of`` as training did; forecast every series with its served method.

    The network forecasts every series from its last window (a series unseen in training is scaled by
    its own recent history, ``with_new_series``: new series get the global model too); each series is
    served the bundle's combination for it (unseen series: the pooled weights; first-generation
    bundles: the network). Series the network cannot forecast (too short, a long gap in the
    window) still get a baseline when their own history allows one, so the output never
    goes blank. All steps run on stacked frames and arrays, never per series.
    """
    part = forecast_part(bundle, observations, as_of)
    if part.forecasts is None:
        raise ScoreError(f"no series could be scored for as_of {as_of}: {_first(part.report.skipped)}")
    return part.forecasts, part.report


def score_calendar(bundle: Bundle, observations: pl.DataFrame, as_of: dt.date) -> Calendar:
    """The calendar a run scores on: the model's frequency and kind, holidays re-read from every series.

    Checks that the data covers ``as_of``. A sharded run decides it once, on the whole catalogue,
    so that every shard places its series on the same grid as a single-process run would.
    """
    return _history(bundle, observations, as_of).calendar


class _History(NamedTuple):
    rows: pl.DataFrame  # the recent history scoring cleans
    present: pl.Series  # the series with a row in it
    gone: list[str]  # the series with none (stale)
    since: dt.datetime  # where that span starts
    calendar: Calendar


def _history(bundle: Bundle, observations: pl.DataFrame, as_of: dt.date,
             calendar: Calendar | None = None) -> _History:
    """The recent history scoring cleans, the series in it, the stale series, where that span starts, and
    the calendar.

    With no ``calendar`` this is a whole run: the data must cover ``as_of`` and hold recent rows.
    With one it is a shard, whose recent history may be empty.
    """
    clean_cfg = CleanConfig(**bundle.config["params"]["clean"])
    cutoff, steps, trained = _span(bundle, as_of)
    if calendar is None:
        first, last = observations["timestamp"].min(), observations["timestamp"].max()
        if as_of < first.date() or as_of > last.date():
            raise ScoreError(f"unknown as_of {as_of}: the data covers {first.date()} to {last.date()}")
    history, present, gone, since = _recent(observations, cutoff, trained, steps, strict=calendar is None)
    if calendar is None:
        # Holidays are re-read from the data (new ones appear); frequency and kind are the model's.
        calendar = decide_calendar(history, clean_cfg.model_copy(update={"frequency": trained.frequency,
                                                                         "calendar": trained.kind}))
    return _History(history, present, gone, since, calendar)


def _clean_config(bundle: Bundle) -> tuple[CleanConfig, int]:
    """The cleaning the model was trained with, and its season (decided at training, maybe from the data)."""
    cfg = bundle.config
    season = int(cfg.get("season_length") or cfg["network_args"].get("season", 1))
    return CleanConfig(**cfg["params"]["clean"]).model_copy(update={"season_length": season}), season


def _span(bundle: Bundle, as_of: dt.date) -> tuple[dt.datetime, int, Calendar]:
    """Where scoring as of ``as_of`` cuts the data, how many calendar steps before that it cleans and
    windows (``_recent`` takes twice that), and the calendar the model was trained on."""
    cfg = bundle.config
    clean_cfg, season = _clean_config(bundle)
    lookback = cfg["params"]["window"]["lookback"]
    keep = _keep(lookback, season, FeatureState.from_json(bundle.preprocessing["features"]), bundle)
    cutoff = dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time())
    return cutoff, keep + outlier_window(clean_cfg, season) + clean_cfg.max_gap, Calendar.from_json(
        cfg["calendar"])


def _keep(lookback: int, season: int, state: FeatureState, bundle: Bundle) -> int:
    """Steps of cleaned history the last window needs (the window, its seasonal base and its lags), and the
    classical candidate's fitting tail when the bundle combines one."""
    from nightcast.models.classical import CLASSICAL, tail_length

    need = lookback + max([season, *state.lags])
    combination = bundle.preprocessing.get("combination") or {}
    if any(m in CLASSICAL for m in combination.get("candidates", [])):
        need = max(need, tail_length(season, int(bundle.config["network_args"]["horizon"])))
    return need


def covariate_kinds(bundle: Bundle) -> dict[str, str]:
    """How the bundle's model reads each covariate ("categorical" or "numeric"): what validating
    scoring input must type them as, whatever one day's or one shard's values look like."""
    state = FeatureState.from_json(bundle.preprocessing["features"])
    return {**dict.fromkeys(state.numeric_stats, "numeric"), **dict.fromkeys(state.categories, "categorical")}


def scoring_span_start(bundle: Bundle, as_of: dt.date) -> dt.datetime:
    """The oldest timestamp scoring as of ``as_of`` with this bundle looks at (older rows only tell
    that a series exists, and is stale)."""
    cutoff, steps, trained = _span(bundle, as_of)
    return _steps_before(cutoff, trained, 2 * steps)


def keep_for_scoring(observations: pl.DataFrame, since: dt.datetime) -> pl.DataFrame:
    """What scoring from any ``as_of`` whose span starts at or after ``since`` needs of these rows:
    every row from ``since`` on (later known-future covariates included) and each series' last row
    before it, which is all ``_recent`` needs to name a series stale. Forecasts from the kept rows
    equal those from all of them."""
    older = observations.filter(pl.col("timestamp") < since)
    last = older.sort("series_id", "timestamp").group_by("series_id", maintain_order=True).tail(1)
    return pl.concat([last, observations.filter(pl.col("timestamp") >= since)]).sort("series_id", "timestamp")


@on_small_pages  # one section: each step's freed temporaries serve the next (tasks/data/pages.py)
def forecast_part(bundle: Bundle, observations: pl.DataFrame, as_of: dt.date,
                  calendar: Calendar | None = None) -> ScorePart:
    """``forecast_from_bundle`` on some series: with ``calendar`` (from ``score_calendar`` on the whole
    data) one shard of a run, whose staleness ``assemble_parts`` settles against every shard."""
    cfg = bundle.config
    clean_cfg, season = _clean_config(bundle)
    lookback, horizon = cfg["params"]["window"]["lookback"], cfg["params"]["window"]["horizon"]
    state = FeatureState.from_json(bundle.preprocessing["features"])
    keep = _keep(lookback, season, state, bundle)
    history, present, gone, since, calendar = _history(bundle, observations, as_of, calendar)
    report = ScoreReport(skipped={sid: f"stale: no observed target since {since}" for sid in gone})
    none = pl.DataFrame(schema={"series_id": pl.String, "last_seen": pl.Datetime("us")})
    if history.height == 0:
        return ScorePart(None, report, none, None)
    clean = clean_tails(history, clean_cfg, calendar, keep, iqr_bounds=bundle.preprocessing.get("iqr_bounds"))
    del history
    series = _series_status(clean, calendar, clean_cfg.max_gap, lookback, season)
    empty = present.to_frame().join(series.select("series_id"), on="series_id", how="anti")  # cleaning left none
    report.skipped.update(dict.fromkeys(empty["series_id"].to_list(), f"no observed target since {since}"))
    for r in series.filter(pl.col("skip").is_not_null()).select("series_id", "skip").iter_rows():
        report.skipped[r[0]] = r[1]
    live = series.filter(pl.col("skip").is_null())
    if live.height == 0:
        return ScorePart(None, report, series.select("series_id", "last_seen"), clean["timestamp"].max())
    state = with_new_series(state, clean)  # series the bundle never saw get scalers from their history here
    future = future_steps(live.select("series_id", "last_seen", "dom"), calendar, horizon)
    ids = live["series_id"].to_list()
    if live.height < series.height:
        clean = clean.filter(pl.col("series_id").is_in(live["series_id"].implode()))
    net = _network_forecasts(bundle, clean, live, future, observations, state, lookback, horizon)
    candidates = _candidates(bundle, clean, net, season, horizon)
    out, methods = _serve(bundle, candidates, np.asarray(ids, dtype=str))
    conformal = bundle.preprocessing.get("conformal") or {}
    if bundle.preprocessing.get("combination") is None:  # bundles from before combinations: widths per method
        widths = conformal.get("by_method") or ({NETWORK: conformal["half_widths"]} if conformal else {})
        lower, upper = _intervals(out, methods, widths, state, ids)
    else:
        lower, upper = _combined_intervals(out, conformal.get("half_widths"), state, ids)
    each = pl.Series(np.repeat(np.arange(len(ids), dtype=np.int64), horizon))  # each forecast row's series
    frame = pl.DataFrame({
        "series_id": live["series_id"].cast(pl.String).gather(each),  # gathers: no text array per row
        "timestamp": future.sort("series_id", "horizon")["timestamp"],
        "horizon": np.tile(np.arange(1, horizon + 1, dtype=np.int32), len(ids)),
        "forecast": out.ravel(), "lower": lower.ravel(), "upper": upper.ravel(),
        "method": pl.Series(methods, dtype=pl.String).gather(each),
        "model": bundle.name, "model_version": bundle.version, "as_of": as_of,
    }).with_columns(pl.col("horizon").cast(pl.Int32), pl.col("as_of").cast(pl.Date),
                    pl.col("lower", "upper").fill_nan(None))
    Forecasts.validate(frame, lazy=True)
    report.series_scored = len(ids)
    report.methods = _method_counts(methods)
    return ScorePart(frame, report, series.select("series_id", "last_seen"), clean["timestamp"].max())


def _method_counts(methods: np.ndarray) -> dict[str, int]:
    return {str(m): int(n) for m, n in zip(*np.unique(methods, return_counts=True))}


def assemble_parts(parts: list[ScorePart], max_gap: int, calendar: Calendar, as_of: dt.date,
                   frames: list[pl.LazyFrame] | None = None) -> tuple[pl.LazyFrame, ScoreReport]:
    """The forecasts (lazy, in no particular order) and report of a whole run from its shards, as one process
    would have made them; ``frames``: the parts' forecasts when they are not in ``parts`` (staged files).

    Staleness is measured from the newest cleaned timestamp of the whole catalogue; a shard only
    saw its own, so series stale against the newest of all shards are dropped (and named) here. Only the
    parts' first steps are read here; ``write_forecasts_sorted`` reads the rest in slices.
    """
    lasts = [p.clean_last for p in parts if p.clean_last is not None]
    report = ScoreReport()
    for p in parts:
        report.skipped.update(p.report.skipped)
    if frames is None:
        frames = [p.forecasts.lazy() for p in parts if p.forecasts is not None]
    if not frames or not lasts:
        raise ScoreError(f"no series could be scored for as_of {as_of}: {_first(report.skipped)}")
    global_last = max(lasts)
    seen = pl.concat([p.last_seen for p in parts])
    stale = _stale(seen, calendar, max_gap, global_last).filter(pl.col("skip").is_not_null())
    report.skipped.update(dict(stale.select("series_id", "skip").iter_rows()))
    frame = pl.concat(frames, how="vertical").filter(~pl.col("series_id").is_in(stale["series_id"].implode()))
    methods = frame.filter(pl.col("horizon") == 1).select("method").collect()["method"].to_numpy()
    if len(methods) == 0:
        raise ScoreError(f"no series could be scored for as_of {as_of}: {_first(report.skipped)}")
    report.series_scored = len(methods)
    report.methods = _method_counts(methods)
    report.skipped = dict(sorted(report.skipped.items()))
    return frame, report


def _recent(observations: pl.DataFrame, cutoff: dt.datetime, calendar: Calendar,
            steps: int, strict: bool = True) -> tuple[pl.DataFrame, pl.Series, list[str], dt.datetime]:
    """The observations of the last ``2·steps`` calendar steps before ``cutoff`` (what cleaning and
    the last window need), the series with some there, those with none (stale), and where that span starts."""
    since = _steps_before(cutoff, calendar, 2 * steps)
    recent = observations.filter((pl.col("timestamp") < cutoff) & (pl.col("timestamp") >= since))
    if recent.height == 0 and strict:
        raise ScoreError(f"no observations between {since} and {cutoff}: nothing recent enough to forecast from")
    last = (observations.lazy().filter(pl.col("timestamp") < cutoff)  # one grouped max, not two distinct-id passes
            .group_by("series_id").agg(pl.col("timestamp").max()).collect())
    gone = last.filter(pl.col("timestamp") < since)["series_id"]
    return recent, last.filter(pl.col("timestamp") >= since)["series_id"], sorted(gone.to_list()), since


def _step(calendar: Calendar) -> tuple[int, str]:
    """The calendar's step as (count, polars unit): "3mo" -> (3, "mo")."""
    m = re.fullmatch(r"(\d+)(\w+)", calendar.frequency)
    if not m:
        raise ScoreError(f"cannot step frequency {calendar.frequency!r}")
    return int(m.group(1)), m.group(2)


def _steps_before(when: dt.datetime, calendar: Calendar, n: int) -> dt.datetime:
    """A time at least ``n`` calendar steps before ``when`` (business days count 7 for 5, plus holidays)."""
    k, unit = _step(calendar)
    n = n * 2 if calendar.kind == "business" else n
    return pl.Series([when]).dt.offset_by(f"-{n * k}{unit}").item()


def _first(skipped: dict[str, str], n: int = 5) -> str:
    items = list(skipped.items())
    more = f" (and {len(items) - n} more)" if len(items) > n else ""
    return "; ".join(f"{k}: {v}" for k, v in items[:n]) + more


_MONTHS = {"mo": 1, "q": 3, "y": 12}


def future_steps(last: pl.DataFrame, calendar: Calendar, n: int) -> pl.DataFrame:
    """The ``n`` calendar steps after each series' ``last_seen``: series_id, horizon (1..n), timestamp.

    One cross join and one offset over all series. Month, quarter and year steps keep each series'
    day of the month (``dom``, its largest day seen, when ``last`` has it; else ``last_seen``'s day),
    clamped to short months: a month-end series stays on month ends after Feb 29 or Apr 30. Business
    calendars skip weekends (future holidays are unknown).
    """
    k, unit = _step(calendar)
    business = calendar.kind == "business"
    candidates = n + 2 * (n // 5) + 4 if business else n
    steps = pl.DataFrame({"_k": np.arange(1, candidates + 1, dtype=np.int64)})
    out = last.join(steps, how="cross")
    if unit in _MONTHS:
        dom = pl.col("dom") if "dom" in last.columns else pl.col("last_seen").dt.day()
        month = pl.col("last_seen").dt.month_start().dt.offset_by(pl.format("{}mo", pl.col("_k") * k * _MONTHS[unit]))
        day = month.dt.offset_by(pl.format("{}d", dom.cast(pl.Int64) - 1))
        out = out.with_columns(pl.min_horizontal(day, month.dt.month_end()).alias("timestamp"))
    else:
        out = out.with_columns(
            pl.col("last_seen").dt.offset_by(pl.format("{}" + unit, pl.col("_k") * k)).alias("timestamp"))
    if business:
        out = out.filter(pl.col("timestamp").dt.weekday() <= 5)
    return (out.sort("series_id", "_k").with_columns(pl.int_range(1, pl.len() + 1).over("series_id").alias("horizon"))
            .filter(pl.col("horizon") <= n).select("series_id", pl.col("horizon").cast(pl.Int32),
                                                   pl.col("timestamp").cast(pl.Datetime("us"))))


def _series_status(clean: pl.DataFrame, calendar: Calendar, max_gap: int, lookback: int,
                   season: int) -> pl.DataFrame:
    """Per series: last_seen, rows, whether the window tails hold a long gap, and why it is skipped."""
    per = clean.group_by("series_id", maintain_order=True).agg(
        pl.col("timestamp").last().alias("last_seen"), pl.col("timestamp").dt.day().max().alias("dom"),
        pl.len().alias("rows"),
        pl.col("in_long_gap").tail(lookback).any().alias("gap_in_window"),
        pl.col("in_long_gap").tail(season).any().alias("gap_in_season"))
    stale = _stale(per.select("series_id", "last_seen"), calendar, max_gap, clean["timestamp"].max())
    return per.join(stale, on="series_id", how="left", maintain_order="left").with_columns(
        pl.when(pl.col("skip").is_null() & pl.col("gap_in_season"))
        .then(pl.lit("its last season contains a long gap")).otherwise(pl.col("skip")).alias("skip"))


def _stale(last_seen: pl.DataFrame, calendar: Calendar, max_gap: int, global_last: dt.datetime) -> pl.DataFrame:
    """series_id and, for a series more than ``max_gap`` steps behind ``global_last``, why it is stale."""
    behind = (future_steps(last_seen, calendar, max_gap + 1)
              .filter(pl.col("timestamp") <= global_last).group_by("series_id").len("behind"))
    per = last_seen.join(behind, on="series_id", how="left", maintain_order="left").with_columns(
        pl.col("behind").fill_null(0))
    return per.select("series_id", pl.when(pl.col("behind") > max_gap)
                      .then(pl.format("stale: last observation {} is more than " + str(max_gap) + " steps before "
                                      + str(global_last), pl.col("last_seen")))
                      .alias("skip"))


def _candidates(bundle: Bundle, clean: pl.DataFrame, net: tuple[np.ndarray, np.ndarray], season: int,
                horizon: int) -> dict[str, np.ndarray]:
    """(n, H) forecasts of every candidate the bundle combines, for the live series in ``clean`` (sorted
    by series, each series' last row its origin): the network (NaN where it cannot forecast a series),
    the baselines and the classical model, from the same stacked arrays the backtest used. The classical
    model is fitted only for the series it has a weight for (the rest get NaN, which serving skips)."""
    from nightcast.models.baselines import naive, seasonal_naive
    from nightcast.models.classical import classical_forecasts, tail_length
    from nightcast.tasks.forecast.backtest import champion_weights

    clean = by_series(clean)
    y = clean["target"].to_numpy().astype(np.float64)
    lengths = clean.group_by("series_id", maintain_order=True).len()["len"].to_numpy().astype(np.int64)
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    origins = first + lengths - 1
    values, usable = net
    out = {NETWORK: np.where(usable[:, None], values, np.nan),
           "seasonal_naive": seasonal_naive(y, origins, horizon, season, first), "naive": naive(y, origins, horizon)}
    weights = champion_weights(bundle)
    wanted = weights.candidates
    classical = [m for m in wanted if m not in out]
    if classical:  # fitted at the origin, only where it has a weight (a zero weight adds nothing to the mean)
        rows = weights.rows(clean["series_id"].unique(maintain_order=True).to_numpy())
        tail = np.minimum(lengths, tail_length(season, horizon))
        recent = np.arange(len(y)) >= np.repeat(origins - tail + 1, lengths)
    for model in classical:
        fit = rows[:, wanted.index(model)] > 0 if weights.mode != "median" else np.ones(len(lengths), bool)
        out[model] = np.full((len(lengths), horizon), np.nan)
        if fit.any():
            keep = recent & np.repeat(fit, lengths)
            out[model][fit] = classical_forecasts(y[keep], tail[fit], horizon, season, model)
    return {m: out[m] for m in wanted}


def _serve(bundle: Bundle, candidates: dict[str, np.ndarray], ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each series' served forecast and what made it: the bundle's combination weights over the candidates
    a series has (a series the network cannot forecast is served by the rest), or, for bundles from
    before combinations, its per-series choice (as one-hot weights)."""
    from nightcast.tasks.forecast.backtest import champion_weights
    from nightcast.tasks.forecast.combine import combine, method_names

    weights = champion_weights(bundle)
    rows = weights.rows(ids)
    out = combine(candidates, rows, weights.mode)
    have = np.stack([np.isfinite(candidates[m]).all(axis=1) for m in weights.candidates], axis=1)  # (n, C)
    effective = np.where(have, rows, 0.0)
    if weights.mode == "switch":  # the chosen candidate is missing: seasonal naive serves
        lost = effective.sum(axis=1) == 0
        effective[lost, weights.candidates.index("seasonal_naive")] = 1.0
        out[lost] = candidates["seasonal_naive"][lost]
    return out, method_names(effective / np.maximum(effective.sum(axis=1, keepdims=True), 1e-12),
                             weights.candidates).astype(str)


def _combined_intervals(out: np.ndarray, half_widths: list[float] | None, state: FeatureState,
                        ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Conformal bounds of the served forecast: per-horizon widths in each series' scaled units; NaN for a
    series without a scaler (``state`` has one for every series with an observed value in the scoring history)."""
    lower, upper = np.full(out.shape, np.nan), np.full(out.shape, np.nan)
    if not half_widths:
        return lower, upper
    ids_arr = np.asarray(ids, dtype=str)
    sel = np.flatnonzero(state.has_scaler(ids_arr))
    if len(sel):
        lower[sel], upper[sel] = bounds(scale_values(out[sel], ids_arr[sel], state), half_widths, ids_arr[sel], state)
    return lower, upper


def _network_forecasts(bundle: Bundle, clean: pl.DataFrame, live: pl.DataFrame, future: pl.DataFrame,
                       observations: pl.DataFrame, state: FeatureState, lookback: int,
                       horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, usable mask) of the network for every live series, from its last window."""
    args = bundle.config["network_args"]
    n = live.height
    values = np.full((n, horizon), np.nan)
    need = min_history(lookback, int(args.get("season", 1))) if args.get("mask") else lookback
    usable = live.filter(state.scaled() & (pl.col("rows") >= need)
                         & ~pl.col("gap_in_window"))
    if usable.height == 0:
        return values, np.zeros(n, bool)
    ids = usable["series_id"].implode()
    fut = future.filter(pl.col("series_id").is_in(ids))
    if state.future_covariates:
        fut = fut.join(observations.select("series_id", "timestamp", *state.future_covariates),
                       on=["series_id", "timestamp"], how="left", maintain_order="left")
        missing = fut.filter(pl.any_horizontal(pl.col(state.future_covariates).is_null()))
        if missing.height:
            first = missing.row(0, named=True)
            raise ScoreError(f"known-future covariates {state.future_covariates} are missing for {missing.height} "
                             f"forecast step(s) of {missing['series_id'].n_unique()} series, first series "
                             f"{first['series_id']!r} at {first['timestamp']}; add those rows to the input")
    # the last window's steps and the lags they read: the rest of the cleaned tail is the classical fits'
    steps = lookback + max([0, *state.lags])
    hist = series_tails(clean if usable.height == n else clean.filter(pl.col("series_id").is_in(ids)), steps)
    rows = _then_future(hist, fut.drop("horizon").with_columns(
        pl.lit(None, dtype=pl.Float64).alias("target"), pl.lit(False).alias("observed"),
        pl.lit(False).alias("is_outlier"), pl.lit(False).alias("in_long_gap")), horizon)
    encoder = FeatureEncoder(rows.with_columns(pl.col("target").fill_null(0.0)), state)
    index = make_windows(encoder, state.past_columns, state.future_columns, lookback, horizon,
                         min_input=need if args.get("mask") else None, season=int(args.get("season", 1)))
    index.splits = {}
    # the origin of each series' forecast: its last history row, just before its H future rows
    origins = index.offsets[1:] - horizon - 1
    starts = origins - lookback + 1
    got = np.median(np.stack([inverse_scale(p.astype(np.float64), index.series_ids, state)
                              for p in _predict_fixed_batches(bundle.networks(), index, starts)]), axis=0)
    pos = live.with_row_index("_i").join(pl.DataFrame({"series_id": index.series_ids}), on="series_id",
                                         how="inner", maintain_order="right")["_i"].to_numpy()
    values[pos] = got
    ok = np.zeros(n, bool)
    ok[pos] = True
    return values, ok


def _then_future(hist: pl.DataFrame, fut: pl.DataFrame, horizon: int) -> pl.DataFrame:
    """Each series' history rows, then its ``horizon`` future rows, sorted by series then time as windowing
    needs them, by one gather (not a sort of every row): ``hist`` is sorted by series then time, ``fut`` holds
    ``horizon`` rows per series in time order, for the same series in the same order."""
    s, firsts, names = _runs(hist["series_id"])
    counts = np.diff(np.r_[firsts, len(s)])
    if len(counts) * horizon != fut.height or not names.equals(fut["series_id"].gather_every(horizon),
                                                               check_names=False):
        raise ScoreError(f"the future rows ({fut.height}) are not {horizon} for each of the {len(counts)} series "
                         "of the history, in its order")
    ends = np.cumsum(counts)
    dest = np.empty(hist.height + fut.height, np.int64)  # where each row of [hist; fut] goes
    dest[:hist.height] = np.arange(hist.height) + np.repeat(np.arange(len(counts)) * horizon, counts)
    j = np.arange(fut.height)
    dest[hist.height:] = np.repeat(ends + np.arange(len(counts)) * horizon, horizon) + j % horizon
    order = np.empty_like(dest)
    order[dest] = np.arange(len(dest))
    return pl.concat([hist, fut], how="diagonal_relaxed")[pl.Series(order)]


SCORE_BATCH = 128
"""Windows per forward pass when scoring; every pass has exactly this many (padded). The LSTM's forward
runs as fast per window in passes of 128 as of 512 on one core (measured: 0.59 s a seed for 9,728
windows either way), and a part pads at most 127 windows: a shard of 1,190 series padded to 1,536 at
512 did 29 % more forward work than its series needed."""


def _predict_fixed_batches(nets: list, index, starts: np.ndarray) -> list[np.ndarray]:
    """``predict_seeds`` with every batch the same shape, so that a series' forecast does not depend on
    which other series share its batch: CPU kernels choose their blocking by batch size, and with
    ragged batches the last float32 digits moved with the shard a series fell in (measured). Same
    hardware and libraries give bit-identical forecasts, sharded or not, on any number of threads."""
    n = len(starts)
    padded = np.concatenate([starts, np.repeat(starts[:1], -n % SCORE_BATCH)])
    return [p[:n] for p in predict_seeds(nets, index, padded, batch_size=SCORE_BATCH)]


def _intervals(out: np.ndarray, methods: np.ndarray, widths: dict[str, list[float]], state: FeatureState,
               ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Conformal bounds per method (in each series' scaled units); NaN where a method has none."""
    lower, upper = np.full(out.shape, np.nan), np.full(out.shape, np.nan)
    ids_arr = np.asarray(ids, dtype=str)
    known = state.has_scaler(ids_arr)
    for method, w in widths.items():
        sel = np.flatnonzero((methods == method) & known)
        if len(sel):
            sids = ids_arr[sel]
            lower[sel], upper[sel] = bounds(scale_values(out[sel], sids, state), w, sids, state)
    return lower, upper


TIMESTAMPS_META = "nightcast.timestamps"
"""Parquet metadata key: what the forecast timestamps are (``timestamps_zone``)."""


def timestamps_zone(notes: dict) -> str:
    """What the forecast timestamps of input with these validation notes are: ``UTC`` (naive UTC, offsets
    converted), or ``local dates`` (date-level input stamped at local midnight with an offset, read as its
    local dates: the forecasts fall on local dates at midnight)."""
    return "local dates" if notes.get("timestamps_local_midnight_read_as_dates") else "UTC"


def forecasts_metadata(versions: list[str], zone: str) -> dict[str, str]:
    """The key-value metadata of every forecasts file: its layout, model versions and timestamps' zone."""
    return {"nightcast.forecasts_layout": FORECASTS_LAYOUT, "nightcast.model_version": ",".join(sorted(versions)),
            TIMESTAMPS_META: zone}


def write_forecasts(store: Store, forecasts: pl.DataFrame, model: str, as_of: dt.date, zone: str = "UTC") -> str:
    """Replace the partition for (model, as_of) with one atomic object; nothing else is touched. ``zone``
    (``timestamps_zone``) is recorded in the file's metadata."""
    buf = io.BytesIO()
    forecasts.write_parquet(buf, metadata=forecasts_metadata(forecasts["model_version"].unique().to_list(), zone))
    return _replace_partition(store, model, as_of, lambda key: store.write_bytes(key, buf.getvalue()))


ROWS_PER_SLICE = 2_000_000
"""Rows ``write_forecasts_sorted`` sorts at a time: the assemble's memory, whatever the catalogue's size."""


def write_forecasts_sorted(store: Store, forecasts: pl.LazyFrame, model: str, as_of: dt.date, zone: str = "UTC",
                           rows_per_slice: int = ROWS_PER_SLICE) -> tuple[str, int]:
    """``write_forecasts`` for a lazy frame of any size, rows sorted by series and horizon as a whole-frame sort
    would leave them, without ever holding the whole frame: the series ids (one column of the first steps) are
    cut into ranges of about ``rows_per_slice`` rows, each range is read (predicate pushdown), sorted and
    appended to a local Parquet file as its own row groups, and the file goes to the store in one atomic
    upload. Returns the key and the rows written."""
    import tempfile
    from pathlib import Path

    import pyarrow.parquet as pq

    if rows_per_slice < 1:
        raise ValueError(f"rows_per_slice must be at least 1, got {rows_per_slice}")
    firsts, steps = pl.collect_all([forecasts.filter(pl.col("horizon") == 1).select("series_id", "model_version"),
                                    forecasts.select(pl.col("horizon").max())])  # collected together
    ids = firsts["series_id"].sort()
    horizon = max(1, int(steps.item() or 1))
    slices = max(1, -(-len(ids) * horizon // rows_per_slice))
    cuts = [ids[len(ids) * k // slices] for k in range(1, slices)]
    meta = forecasts_metadata(firsts["model_version"].unique().to_list(), zone)
    with tempfile.TemporaryDirectory(prefix="nightcast-assemble-") as tmp:
        path = Path(tmp) / "forecasts.parquet"
        writer, rows = None, 0
        try:
            for k in range(slices):
                keep = pl.lit(True)
                if k > 0:
                    keep &= pl.col("series_id") >= cuts[k - 1]
                if k < slices - 1:
                    keep &= pl.col("series_id") < cuts[k]
                table = forecasts.filter(keep).sort("series_id", "horizon").collect().to_arrow()
                if writer is None:
                    writer = pq.ParquetWriter(path, table.schema.with_metadata(meta), compression="zstd")
                writer.write_table(table.replace_schema_metadata(meta))
                rows += table.num_rows
        finally:
            if writer is not None:
                writer.close()
        return _replace_partition(store, model, as_of, lambda key: store.upload_from(key, path)), rows


def _replace_partition(store: Store, model: str, as_of: dt.date, put) -> str:  # noqa: ANN001 - put(key)
    """Write the partition's one object with ``put(key)``, then delete anything else under the partition."""
    key = forecasts_key(model, as_of)
    put(key)
    for stale in store.list(partition_key(model, as_of) + "/"):
        if stale != key:
            store.delete(stale)
    return key


def read_forecasts(store: Store, model: str, as_of: dt.date) -> pl.DataFrame:
    """One partition as a frame in the current layout; layout-2 partitions (no ``method``) read as the network's."""
    frame = pl.read_parquet(io.BytesIO(store.read_bytes(forecasts_key(model, as_of))))
    if "method" not in frame.columns:
        frame = frame.with_columns(pl.lit(NETWORK).alias("method"))
    return frame.select(list(Forecasts.to_schema().columns))
