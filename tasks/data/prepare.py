"""Validated observations → clean frame → fitted features → windows, for training."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from dataclasses import dataclass

import numpy as np
import polars as pl

from nightcast.schemas.frames import CleanSeries
from nightcast.schemas.params import RetrainParams
from nightcast.tasks.data.clean import (Calendar, CleanReport, by_series, calendar_parts_for, clean_observations, decide_calendar,
                         decide_season, id_runs, regularize)
from nightcast.tasks.data.features import FeatureEncoder, FeatureState, fit_features
from nightcast.tasks.data.pages import on_small_pages
from nightcast.tasks.data.validate import ValidationResult
from nightcast.tasks.data.window import (WindowIndex, auto_lookback, make_windows, min_history, observed_origins, split_times,
                          thin_windows)


@dataclass
class Prepared:
    clean: pl.DataFrame
    report: CleanReport
    calendar: Calendar
    season_length: int
    train_end: dt.datetime
    val_end: dt.datetime
    state: FeatureState
    iqr_bounds: dict | None
    index: WindowIndex

    def preprocessing_json(self) -> dict:
        return {"features": self.state.to_json(), "iqr_bounds": self.iqr_bounds}


@dataclass
class Cleaned:
    """A catalogue cleaned elsewhere (``nightcast.tasks.data.sharded``: shard by shard on the run's workers):
    the clean rows training reads, the report of everything cleaned, and the calendar and season it was cleaned
    with. ``prepare_training`` then splits, fits and windows these rows without cleaning them again."""

    clean: pl.DataFrame
    report: CleanReport
    calendar: Calendar
    season_length: int


class _Hasher(io.RawIOBase):
    """A write-only file that feeds SHA-256: the frame is hashed as it is serialised, never held twice."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # noqa: ANN001 - bytes-like
        self.sha.update(b)
        return len(b)


def fingerprint(frame: pl.DataFrame) -> str:
    """SHA-256 of the validated data in a canonical order (columns by name, rows by key), as Arrow IPC."""
    canon = by_series(frame).select(sorted(frame.columns))
    sink = _Hasher()
    canon.write_ipc(sink, compression="uncompressed")
    return sink.sha.hexdigest()


@on_small_pages
def prepare_training(valid: ValidationResult, params: RetrainParams,
                     cuts: tuple[dt.datetime, dt.datetime] | None = None, cleaned: Cleaned | None = None) -> Prepared:
    """Clean, split in time, fit scalers/encoders on the training span, index the windows.

    ``cuts`` = (train_end, val_end) fixes the split (rolling-origin folds); by default
    it comes from the validation and test fractions. ``cleaned``: rows already cleaned (a sharded
    retrain's sample), split on their own grid; ``valid`` then gives only the covariates' kinds and notes.
    """
    w = params.window
    if cleaned is None:
        cleaned, iqr, (train_end, val_end) = _clean_and_split(valid, params, cuts)
    elif cuts is not None or params.clean.outliers == "iqr":
        raise ValueError("rows cleaned elsewhere are split on their own grid: no fixed cuts, no IQR bounds "
                         "(fitted on a training span that is not known while cleaning)")
    else:
        iqr, (train_end, val_end) = None, split_times(cleaned.clean, w.val_fraction, w.test_fraction, w.horizon)
    clean, report, calendar, season = cleaned.clean, cleaned.report, cleaned.calendar, cleaned.season_length
    CleanSeries.validate(clean, lazy=True)
    report.validation = dict(valid.notes)  # one report of what was read, dropped and filled, for the manifest
    f = params.features
    parts = f.calendar if f.calendar is not None else calendar_parts_for(calendar)
    state = fit_features(clean, train_end, params.clean.scaler, valid.numeric, valid.categorical,
                         w.past_covariates, w.future_covariates, parts, f.seasonal_lags, f.pca_components,
                         f.timezone)
    # the inputs are encoded straight into the window arrays; series with no training data keep their rows
    # (no window): the index reads the clean frame's columns in place
    encoder = FeatureEncoder(clean, state, drop_unknown=False)
    no_training_data = encoder.unknown
    lookback = w.lookback or auto_lookback(season, w.horizon)
    index = make_windows(encoder, state.past_columns, state.future_columns, lookback, w.horizon,
                         train_end, val_end, w.stride, min_input=min_history(lookback, season), season=season)
    for split in ("val", "test"):
        index.splits[split] = thin_windows(index, observed_origins(index, index.splits[split]), w.max_eval_windows)
    # Series with no observation in the training span have no scaler: not trainable either.
    index.short_series = sorted({*index.short_series, *no_training_data})
    return Prepared(clean, report, calendar, season, train_end, val_end, state, iqr, index)


def _clean_and_split(valid: ValidationResult, params: RetrainParams, cuts: tuple[dt.datetime, dt.datetime] | None
                     ) -> tuple[Cleaned, dict | None, tuple[dt.datetime, dt.datetime]]:
    """Decide the calendar and season, clean, and find the split: the cleaned rows, the IQR bounds, the cuts."""
    w = params.window
    runs = id_runs(valid.valid["series_id"])  # the validated ids' run lengths, read once for the calendar and placing
    calendar = decide_calendar(valid.valid, params.clean, runs)
    season = decide_season(valid.valid, params.clean, calendar, share=w.train_share)
    cfg = params.clean.model_copy(update={"season_length": season})  # cleaning's windows see the same season
    if cuts is not None:
        clean, report, iqr = clean_observations(valid.valid, cfg, calendar, cuts[0], runs=runs)
    elif params.clean.outliers != "iqr":  # nothing in cleaning is fitted: clean once, split on its grid
        clean, report, iqr = clean_observations(valid.valid, cfg, calendar, runs=runs)
        cuts = split_times(clean, w.val_fraction, w.test_fraction, w.horizon)
    else:  # IQR bounds are fitted on the training span: find it on the grid first
        placed, _ = regularize(valid.valid, calendar)
        cuts = split_times(placed, w.val_fraction, w.test_fraction, w.horizon)
        del placed
        clean, report, iqr = clean_observations(valid.valid, cfg, calendar, cuts[0])
    return Cleaned(clean, report, calendar, season), iqr, cuts


@on_small_pages
def index_with_state(clean: pl.DataFrame, state: FeatureState, network_args: dict,
                     train_end: dt.datetime, val_end: dt.datetime, lookback: int) -> WindowIndex:
    """Windows over an already-clean frame with someone else's fitted features (the champion's)."""
    season = int(network_args.get("season", 1))
    min_input = min_history(lookback, season) if network_args.get("mask") else None
    return make_windows(FeatureEncoder(clean, state, drop_unknown=False), state.past_columns, state.future_columns, lookback,
                        network_args["horizon"], train_end, val_end, min_input=min_input, season=season)


def window_keys(index: WindowIndex, split: str = "test") -> pl.DataFrame:
    """(series_id, origin timestamp, position) for each window of a split, to match windows across models."""
    starts = index.splits[split]
    origins = index.origin(starts)
    return pl.DataFrame({"series_id": index.series_of(starts),
                         "origin": index.timestamps[origins], "pos": np.arange(len(starts))},
                        schema={"series_id": pl.String, "origin": pl.Datetime("us"), "pos": pl.Int64})


@on_small_pages
def prepare_refit(prepared: Prepared, valid: ValidationResult, params: RetrainParams) -> Prepared:
    """The same cleaned history with everything refit on all of it, up to the forecast origin: scalers and
    encoders fitted on every step, every window a training window. What the served network trains on."""
    end = prepared.clean["timestamp"].max()
    clean, iqr = prepared.clean, prepared.iqr_bounds
    if params.clean.outliers == "iqr":  # the bounds are fitted too: refit them on all history
        cfg = params.clean.model_copy(update={"season_length": prepared.season_length})
        clean, _, iqr = clean_observations(valid.valid, cfg, prepared.calendar, end)
    f, w = params.features, params.window
    state = fit_features(clean, end, params.clean.scaler, valid.numeric, valid.categorical,
                         w.past_covariates, w.future_covariates, prepared.state.calendar, f.seasonal_lags,
                         f.pca_components, f.timezone)
    encoder = FeatureEncoder(clean, state, drop_unknown=False)
    no_training_data = encoder.unknown
    lookback, season = prepared.index.lookback, prepared.season_length
    index = make_windows(encoder, state.past_columns, state.future_columns, lookback, w.horizon, end, end, w.stride,
                         min_input=min_history(lookback, season), season=season)
    index.short_series = sorted({*index.short_series, *no_training_data})
    return Prepared(clean, prepared.report, prepared.calendar, season, end, end, state, iqr, index)
