"""pandera (polars backend) contracts for the frames that cross a boundary.

Always validate eager ``pl.DataFrame``s: on a ``LazyFrame`` pandera checks
only the schema and bad values pass silently.
"""

from __future__ import annotations

import polars as pl
import pandera.polars as pa


class RawObservations(pa.DataFrameModel):
    """Observations after column mapping and type coercion, before cleaning.

    ``_timestamp_raw`` / ``_target_raw`` hold the text as read, so a value that
    could not be parsed is reported as unparseable rather than as missing.
    A null ``target`` is a missing observation (a gap to fill).
    """

    series_id: str = pa.Field(nullable=False, str_length={"min_value": 1})
    timestamp: pl.Datetime = pa.Field(nullable=False)
    target: float = pa.Field(nullable=True)
    timestamp_raw: str = pa.Field(nullable=True, alias="_timestamp_raw")
    target_raw: str = pa.Field(nullable=True, alias="_target_raw")

    @pa.check("target", name="finite")
    def target_finite(cls, data: pa.PolarsData) -> pl.LazyFrame:
        col = pl.col(data.key)
        return data.lazyframe.select(col.is_null() | col.is_finite())

    @pa.dataframe_check(name="timestamp_parseable")
    def timestamp_parseable(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(
            pl.col("_timestamp_raw").is_null() | pl.col("timestamp").is_not_null()
        )

    @pa.dataframe_check(name="target_numeric")
    def target_numeric(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(
            pl.col("_target_raw").is_null() | pl.col("target").is_not_null()
        )

    class Config:
        unique = ["series_id", "timestamp"]
        strict = False  # covariates ride along


class CleanSeries(pa.DataFrameModel):
    """Each series on a regular grid, finite targets, flags for what cleaning did."""

    series_id: str = pa.Field(nullable=False)
    timestamp: pl.Datetime = pa.Field(nullable=False)
    target: float = pa.Field(nullable=False)
    observed: bool = pa.Field(nullable=False)
    is_outlier: bool = pa.Field(nullable=False)
    in_long_gap: bool = pa.Field(nullable=False)

    @pa.check("target", name="finite")
    def target_finite(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col(data.key).is_finite())

    class Config:
        unique = ["series_id", "timestamp"]
        strict = False


FORECASTS_LAYOUT = "3"
"""Version of the forecasts layout (this schema + the ``forecasts/model=/as_of=`` keys).

Written into every partition's Parquet metadata as ``nightcast.forecasts_layout``;
bumped on any change a downstream reader would notice. 3 added ``method`` (which
forecaster produced the series: ``lstm``, ``seasonal_naive`` or ``naive``); layout 2
partitions read through ``tasks.score.read_forecasts`` get ``method = "lstm"``.
"""

FORECAST_METHODS = ("lstm", "seasonal_naive", "naive")


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
