"""Validated observations → clean frame → fitted features → windows, for training."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

import numpy as np
import polars as pl

from schemas.frames import CleanSeries
from schemas.params import RetrainParams
from tasks.clean import Calendar, CleanReport, clean_observations, decide_calendar, regularize, season_length_for
from tasks.features import FeatureState, fit_features, transform_features
from tasks.validate import ValidationResult
from tasks.window import WindowIndex, make_windows, split_times


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


def fingerprint(frame: pl.DataFrame) -> str:
    """SHA-256 of the validated data in a canonical order and text form."""
    canon = frame.sort("series_id", "timestamp").select(sorted(frame.columns))
    return hashlib.sha256(canon.write_csv().encode()).hexdigest()


def prepare_training(valid: ValidationResult, params: RetrainParams,
                     cuts: tuple[dt.datetime, dt.datetime] | None = None) -> Prepared:
    """Clean, split in time, fit scalers/encoders on the training span, index the windows.

    ``cuts`` = (train_end, val_end) fixes the split (rolling-origin folds); by default
    it comes from the validation and test fractions.
    """
    calendar = decide_calendar(valid.valid, params.clean)
    season = params.clean.season_length or season_length_for(calendar)
    w = params.window
    if cuts is None:
        placed, _ = regularize(valid.valid, calendar)
        train_end, val_end = split_times(placed, w.val_fraction, w.test_fraction, w.horizon)
    else:
        train_end, val_end = cuts
    clean, report, iqr = clean_observations(valid.valid, params.clean, calendar, train_end)
    CleanSeries.validate(clean, lazy=True)
    f = params.features
    state = fit_features(clean, train_end, params.clean.scaler, valid.numeric, valid.categorical,
                         w.past_covariates, w.future_covariates, f.calendar, f.seasonal_lags, f.pca_components)
    frame, no_training_data = transform_features(clean, state)
    index = make_windows(frame, state.past_columns, state.future_columns, w.lookback, w.horizon,
                         train_end, val_end, w.stride)
    # Series with no observation in the training span have no scaler: not trainable either.
    index.short_series = sorted({*index.short_series, *no_training_data})
    return Prepared(clean, report, calendar, season, train_end, val_end, state, iqr, index)


def index_with_state(clean: pl.DataFrame, state: FeatureState, lookback: int, horizon: int,
                     train_end: dt.datetime, val_end: dt.datetime) -> WindowIndex:
    """Windows over an already-clean frame with someone else's fitted features (the champion's)."""
    frame, _ = transform_features(clean, state)
    return make_windows(frame, state.past_columns, state.future_columns, lookback, horizon, train_end, val_end)


def window_keys(index: WindowIndex, split: str = "test") -> pl.DataFrame:
    """(series_id, origin timestamp, position) for each window of a split, to match windows across models."""
    starts = index.splits[split]
    origins = index.origin(starts)
    return pl.DataFrame({"series_id": index.series_of(starts),
                         "origin": index.timestamps[origins], "pos": np.arange(len(starts))},
                        schema={"series_id": pl.String, "origin": pl.Datetime("us"), "pos": pl.Int64})
