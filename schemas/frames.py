"""pandera (polars backend) contracts for the frames that cross a boundary.

Always validate eager ``pl.DataFrame``s: on a ``LazyFrame`` pandera checks
only the schema and bad values pass silently.
"""

from __future__ import annotations

from typing import Optional

import polars as pl
import pandera.polars as pa


class RawObservations(pa.DataFrameModel):
    """Observations after column mapping and type coercion, before cleaning.

    ``_timestamp_raw`` / ``_target_raw`` hold the text as read, so a value that
    could not be parsed is reported as unparseable rather than as missing; they
    exist only for text input (typed input, such as Parquet, has nothing to parse).
    A null ``target`` is a missing observation (a gap to fill); coercion has already turned
    NaN and missing-value markers ("NA", "null", ...) into nulls, so ``finite`` fails on ±inf.
    """

    series_id: str = pa.Field(nullable=False, str_length={"min_value": 1})
    timestamp: pl.Datetime = pa.Field(nullable=False)
    target: float = pa.Field(nullable=True)
    timestamp_raw: Optional[str] = pa.Field(nullable=True, alias="_timestamp_raw")
    target_raw: Optional[str] = pa.Field(nullable=True, alias="_target_raw")

    @pa.check("target", name="finite")
    def target_finite(cls, data: pa.PolarsData) -> pl.LazyFrame:
        col = pl.col(data.key)
        return data.lazyframe.select(col.is_null() | col.is_finite())

    @pa.dataframe_check(name="timestamp_parseable")
    def timestamp_parseable(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return _text_parsed(data.lazyframe, "_timestamp_raw", "timestamp")

    @pa.dataframe_check(name="target_numeric")
    def target_numeric(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return _text_parsed(data.lazyframe, "_target_raw", "target")

    class Config:
        unique = ["series_id", "timestamp"]
        strict = False  # covariates ride along


def _text_parsed(frame: pl.LazyFrame, text: str, typed: str) -> pl.LazyFrame:
    """Per row: no text was given, or it parsed; every row passes when there is no text column."""
    if text not in frame.collect_schema().names():
        return frame.select(pl.repeat(True, pl.len()).alias(typed))
    return frame.select(pl.col(text).is_null() | pl.col(typed).is_not_null())


class CleanSeries(pa.DataFrameModel):
    """Each series on a regular grid, finite targets, flags for what cleaning did."""

    series_id: str = pa.Field(nullable=False)
    timestamp: pl.Datetime = pa.Field(nullable=False)
    target: float = pa.Field(nullable=False)
    observed: bool = pa.Field(nullable=False)
    is_outlier: bool = pa.Field(nullable=False)
    in_long_gap: bool = pa.Field(nullable=False)
    raw: Optional[float] = pa.Field(nullable=True)  # the value as observed, before clipping or filling (NaN: none)

    @pa.check("target", name="finite")
    def target_finite(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col(data.key).is_finite())

    @pa.dataframe_check(name="sorted_unique_series_timestamp")
    def sorted_unique(cls, data: pa.PolarsData) -> pl.LazyFrame:
        # sorted by (series_id, timestamp) with strictly increasing timestamps within a series: the
        # windows rely on the order, and it implies uniqueness in one pass (no hash of 20M keys)
        same = pl.col("series_id") == pl.col("series_id").shift(1)
        return data.lazyframe.select(
            pl.col("series_id").shift(1).is_null()
            | (pl.col("series_id") > pl.col("series_id").shift(1))
            | (same & (pl.col("timestamp") > pl.col("timestamp").shift(1))))

    class Config:
        strict = False


FORECASTS_LAYOUT = "4"
"""Version of the forecasts layout (this schema + the ``forecasts/model=/as_of=`` keys).

Written into every partition's Parquet metadata as ``nightcast.forecasts_layout``;
bumped on any change a downstream reader would notice. 3 added ``method`` (which
forecaster produced the series: ``lstm``, ``seasonal_naive`` or ``naive``); 4 added the
classical candidates and ``combination`` (a weighted mean of several, the usual case); layout 2
partitions read through ``nightcast.tasks.serving.score.read_forecasts`` get ``method = "lstm"``.
"""

FORECAST_METHODS = ("lstm", "seasonal_naive", "naive", "theta", "optimized_theta", "autotheta", "autoets",
                    "combination")


class Forecasts(pa.DataFrameModel):
    """What ``score`` writes: one row per series, timestamp and horizon step."""

    series_id: str = pa.Field(nullable=False)
    timestamp: pl.Datetime = pa.Field(nullable=False)
    horizon: pl.Int32 = pa.Field(ge=1)
    forecast: float = pa.Field(nullable=False)
    lower: float = pa.Field(nullable=True)  # prediction interval; null when the model has none
    upper: float = pa.Field(nullable=True)
    method: str = pa.Field(nullable=False, isin=list(FORECAST_METHODS))  # who made this series' forecast
    model: str = pa.Field(nullable=False)
    model_version: str = pa.Field(nullable=False)
    as_of: pl.Date = pa.Field(nullable=False)

    @pa.check("forecast", name="finite")
    def forecast_finite(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col(data.key).is_finite())

    @pa.dataframe_check(name="lower_le_forecast_le_upper")
    def interval_contains_forecast(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(
            pl.col("lower").is_null() | pl.col("upper").is_null()
            | ((pl.col("lower") <= pl.col("forecast")) & (pl.col("forecast") <= pl.col("upper"))))

    class Config:
        unique = ["series_id", "timestamp"]
        strict = True
