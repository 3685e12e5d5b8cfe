"""Forecast H steps per series from the champion bundle and the data up to ``as_of``."""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import torch

from schemas.frames import FORECASTS_LAYOUT, Forecasts
from schemas.params import CleanConfig
from tasks.clean import Calendar, clean_observations, decide_calendar, next_steps
from tasks.features import FeatureState, inverse_scale, transform_features
from tasks.intervals import bounds
from tasks.registry import Bundle
from tasks.storage import Store, safe_key_part


class ScoreError(ValueError):
    """Scoring cannot produce a forecast for the request."""


@dataclass
class ScoreReport:
    series_scored: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # series_id -> why


def partition_key(model: str, as_of: dt.date) -> str:
    return f"forecasts/model={safe_key_part(model)}/as_of={as_of.isoformat()}"


def forecasts_key(model: str, as_of: dt.date) -> str:
    """The one object of a partition: it exists only when the partition is complete."""
    return f"{partition_key(model, as_of)}/forecasts.parquet"


def forecast_from_bundle(bundle: Bundle, observations: pl.DataFrame, as_of: dt.date,
                         created_at: dt.datetime | None = None) -> tuple[pl.DataFrame, ScoreReport]:
    """Clean the history up to ``as_of`` as training did, take each series' last window, forecast."""
    cfg = bundle.config
    clean_cfg = CleanConfig(**cfg["params"]["clean"])
    lookback, horizon = cfg["params"]["window"]["lookback"], cfg["params"]["window"]["horizon"]
    cutoff = dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time())
    first, last = observations["timestamp"].min(), observations["timestamp"].max()
    if as_of < first.date() or as_of > last.date():
        raise ScoreError(f"unknown as_of {as_of}: the data covers {first.date()} to {last.date()}")
    history = observations.filter(pl.col("timestamp") < cutoff)
    trained = Calendar.from_json(cfg["calendar"])
    # Holidays are re-read from the data (new ones appear); frequency and kind are the model's.
    calendar = decide_calendar(history, clean_cfg.model_copy(update={"frequency": trained.frequency,
                                                                     "calendar": trained.kind}))
    clean, _, _ = clean_observations(history, clean_cfg, calendar,
                                     iqr_bounds=bundle.preprocessing.get("iqr_bounds"))
    state = FeatureState.from_json(bundle.preprocessing["features"])
    frame, unknown = transform_features(clean, state)
    report = ScoreReport(skipped={s: "series not seen in training" for s in unknown})
    global_last = frame["timestamp"].max()
    pasts, futures, ids, stamps = [], [], [], []
    for (sid,), part in frame.sort("timestamp").partition_by("series_id", as_dict=True).items():
        tail = part.tail(lookback)
        if tail.height < lookback:
            report.skipped[sid] = f"only {tail.height} steps of history, lookback is {lookback}"
            continue
        if tail["in_long_gap"].any():
            report.skipped[sid] = "its last window contains a long gap"
            continue
        last_seen = tail["timestamp"][-1]
        behind = sum(t <= global_last for t in next_steps(last_seen, calendar, clean_cfg.max_gap + 1))
        if behind > clean_cfg.max_gap:
            report.skipped[sid] = (f"stale: last observation {last_seen} is more than "
                                   f"{clean_cfg.max_gap} steps before {global_last}")
            continue
        when = next_steps(last_seen, calendar, horizon)
        pasts.append(tail.select(state.past_columns).to_numpy())
        futures.append(_future_covariates(observations, state, sid, when))
        ids.append(sid)
        stamps.append(when)
    if not ids:
        raise ScoreError(f"no series could be scored for as_of {as_of}: {report.skipped}")
    net = bundle.network()
    with torch.no_grad():
        scaled = net(torch.from_numpy(np.stack(pasts).astype(np.float32)),
                     torch.from_numpy(np.stack(futures).astype(np.float32))).numpy()
    values = inverse_scale(scaled.astype(np.float64), ids, state)
    conformal = bundle.preprocessing.get("conformal")
    if conformal:
        lower, upper = bounds(scaled, conformal["half_widths"], ids, state)
    else:
        lower = upper = np.full(values.shape, np.nan)
    out = pl.DataFrame({
        "series_id": np.repeat(ids, horizon),
        "timestamp": pl.Series([t for row in stamps for t in row], dtype=pl.Datetime("us")),
        "horizon": np.tile(np.arange(1, horizon + 1, dtype=np.int32), len(ids)),
        "forecast": values.ravel(),
        "lower": lower.ravel(),
        "upper": upper.ravel(),
        "model": bundle.name,
        "model_version": bundle.version,
        "as_of": as_of,
    }).with_columns(pl.col("horizon").cast(pl.Int32), pl.col("as_of").cast(pl.Date),
                    pl.col("lower", "upper").fill_nan(None))
    Forecasts.validate(out, lazy=True)
    report.series_scored = len(ids)
    return out, report


def _future_covariates(observations: pl.DataFrame, state: FeatureState, sid: str,
                       when: list[dt.datetime]) -> np.ndarray:
    if not state.future_columns:
        return np.zeros((len(when), 0), np.float32)
    rows = (pl.DataFrame({"timestamp": pl.Series(when, dtype=pl.Datetime("us"))})
            .join(observations.filter(pl.col("series_id") == sid), on="timestamp", how="left"))
    missing = (rows.filter(pl.any_horizontal(pl.col(state.future_covariates).is_null()))["timestamp"]
               if state.future_covariates else pl.Series([], dtype=pl.Datetime("us")))
    if missing.len():
        raise ScoreError(f"series {sid!r}: known-future covariates {state.future_covariates} are missing "
                         f"for {missing.len()} forecast step(s), first {missing[0]}; add those rows to the input")
    encoded, _ = transform_features(rows.with_columns(pl.lit(sid).alias("series_id")), state)
    return encoded.select(state.future_columns).to_numpy()


def write_forecasts(store: Store, forecasts: pl.DataFrame, model: str, as_of: dt.date) -> str:
    """Replace the partition for (model, as_of) with one atomic object; nothing else is touched."""
    prefix = partition_key(model, as_of)
    buf = io.BytesIO()
    versions = forecasts["model_version"].unique().sort().to_list()
    forecasts.write_parquet(buf, metadata={"nightcast.forecasts_layout": FORECASTS_LAYOUT,
                                           "nightcast.model_version": ",".join(versions)})
    key = forecasts_key(model, as_of)
    store.write_bytes(key, buf.getvalue())
    for stale in store.list(prefix + "/"):
        if stale != key:
            store.delete(stale)
    return key
