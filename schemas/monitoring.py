"""Accuracy on actuals: the monitor's parameters, its drift rule and the frames it writes.

The monitoring layout (version ``MONITORING_LAYOUT``) is five tables under ``monitoring/`` in the
store, each partitioned by model and monitoring date, one Parquet object per partition:

``monitoring/points/model=<m>/date=<D>/points.parquet`` (``MonitoringPoints``)
    A change log: the forecast points whose state the run for date ``D`` changed (new, scored late,
    revised, ...). The state of a point ``(series_id, timestamp, as_of, model_version)`` on day D is
    its row in the newest partition dated D or earlier; ``nightcast.tasks.ops.monitor.read_points`` returns that,
    each point once.
``monitoring/summary/model=<m>/date=<D>/summary.parquet`` (``MonitoringSummary``)
    Metrics of every scored point known on day D (all origins), for the model and for seasonal naive
    on the same points, overall and by origin, model version, served method, horizon step and series.
``monitoring/active/model=<m>/date=<D>/active.parquet`` (``MonitoringPoints``) and
``monitoring/frozen/model=<m>/date=<D>/frozen.parquet`` (``nightcast.tasks.ops.monitor.SUMS_SCHEMA``)
    The state the next run starts from: every point of the recheck window once, and the additive
    sums, by summary group, of the points older than it (``nightcast.active_since`` in the metadata).
    Kept for the newest runs only.
``monitoring/runs/model=<m>/date=<D>/run.parquet`` (``MonitoringRun``)
    One row: what the run for D read and changed, the overall metrics, and the drift decision;
    written last, so a date with a run row has every other file whole.

Every file carries ``nightcast.monitoring_layout`` (and ``nightcast.model``, ``nightcast.date``)
in its Parquet metadata. The layout changes only with a change a reader would notice.
"""

from __future__ import annotations

import datetime as dt

import pandera.polars as pa
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from nightcast.schemas.frames import FORECAST_METHODS
from nightcast.schemas.params import RunOnData

MONITORING_LAYOUT = "1"
"""Version of the ``monitoring/`` layout (these three frames and their keys)."""

STATUSES = ("scored", "pending", "quarantined", "no_baseline", "dropped")
"""What a due forecast point is on a given day:

- ``scored``: its actual and the seasonal-naive reference are known; it counts in every metric.
- ``pending``: no actual yet (no row for its series and timestamp, or a blank target). Counted, not
  scored; a later run scores it when the actual arrives.
- ``quarantined``: the actual's row(s) exist but validation quarantined them (conflicting
  duplicates for one series and timestamp, a non-finite value, ...). Counted, not scored, until the
  input is fixed.
- ``no_baseline``: the actual is known but the seasonal-naive reference (the value one season
  before, known at the origin) is missing: the point cannot be compared on equal terms, so it is
  counted and not scored.
- ``dropped``: the forecast is no longer stored (its ``as_of`` partition was re-scored by another
  model version); kept in the log so a reader sees why it vanished, never scored.
"""

CHANGES = ("new", "late", "revised", "updated", "withdrawn", "dropped")
"""Why a point is in a day's change log:

- ``new``: first seen (its target time passed since the last run), in whatever status.
- ``late``: scored now, pending / quarantined / without a baseline before: its actual arrived late.
- ``revised``: scored before and now, with another actual value: re-scored, ``revisions`` + 1.
- ``updated``: anything else changed (the baseline's reference or the MASE scale, through a late
  or revised earlier actual; a re-written forecast of the same version).
- ``withdrawn``: scored before, its actual is gone now (removed, or quarantined); not scored.
- ``dropped``: see ``STATUSES``.
"""

DIMENSIONS = ("all", "as_of", "model_version", "method", "horizon", "series_id")
"""How ``MonitoringSummary`` groups the points: ``key`` is the group's value as text
(``all``: ``"all"``; ``as_of``: ISO date; ``horizon``: the step number)."""


class MonitoringPoints(pa.DataFrameModel):
    """One forecast point joined with its actual and the seasonal-naive forecast from the same origin."""

    series_id: str = pa.Field(nullable=False)
    timestamp: pl.Datetime = pa.Field(nullable=False)  # the forecast's target time, UTC naive
    as_of: pl.Date = pa.Field(nullable=False)  # the forecast's origin date (data up to its end)
    model_version: str = pa.Field(nullable=False)
    horizon: pl.Int32 = pa.Field(ge=1)
    method: str = pa.Field(nullable=False, isin=list(FORECAST_METHODS))
    forecast: float = pa.Field(nullable=False)
    lower: float = pa.Field(nullable=True)
    upper: float = pa.Field(nullable=True)
    actual: float = pa.Field(nullable=True)  # the validated target at ``timestamp``; null: not known
    snaive: float = pa.Field(nullable=True)  # seasonal naive from the same origin; null: no reference
    scale: float = pa.Field(nullable=False, gt=0)  # the MASE denominator of the series at this origin
    status: str = pa.Field(nullable=False, isin=list(STATUSES))
    change: str = pa.Field(nullable=False, isin=list(CHANGES))
    revisions: pl.Int32 = pa.Field(ge=0)  # times its actual was revised after it was first scored
    first_seen: pl.Date = pa.Field(nullable=False)  # the monitoring date it first became due
    scored_on: pl.Date = pa.Field(nullable=True)  # the date it became scored (null: not scored)
    model: str = pa.Field(nullable=False)
    date: pl.Date = pa.Field(nullable=False)  # the monitoring date that wrote this row

    @pa.dataframe_check(name="scored_has_actual_and_baseline")
    def scored_complete(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(
            (pl.col("status") != "scored") | (pl.col("actual").is_not_null() & pl.col("snaive").is_not_null()
                                              & pl.col("scored_on").is_not_null()))

    class Config:
        unique = ["series_id", "timestamp", "as_of", "model_version"]
        strict = True


class MonitoringSummary(pa.DataFrameModel):
    """Metrics over the scored points of one group; ``snaive_*``: seasonal naive on the same points.

    ``mase``: mean of |forecast − actual| / scale; ``smape``: mean of 200·|e| / (|actual| + |forecast|)
    (0 where both are 0), in %; ``rmse``; ``mae``; ``bias``: mean of forecast − actual (positive:
    over-forecast); ``coverage``: share of the points with an interval whose actual lies in it.
    Null when the group has no scored point (or, for coverage, no interval).
    """

    model: str = pa.Field(nullable=False)
    date: pl.Date = pa.Field(nullable=False)
    dimension: str = pa.Field(nullable=False, isin=list(DIMENSIONS))
    key: str = pa.Field(nullable=False)
    points: pl.Int64 = pa.Field(ge=0)  # scored
    pending: pl.Int64 = pa.Field(ge=0)  # pending + quarantined
    no_baseline: pl.Int64 = pa.Field(ge=0)
    mase: float = pa.Field(nullable=True)
    smape: float = pa.Field(nullable=True)
    rmse: float = pa.Field(nullable=True)
    mae: float = pa.Field(nullable=True)
    bias: float = pa.Field(nullable=True)
    coverage: float = pa.Field(nullable=True, ge=0, le=1)
    interval_points: pl.Int64 = pa.Field(ge=0)
    snaive_mase: float = pa.Field(nullable=True)
    snaive_smape: float = pa.Field(nullable=True)
    snaive_rmse: float = pa.Field(nullable=True)
    snaive_mae: float = pa.Field(nullable=True)
    snaive_bias: float = pa.Field(nullable=True)

    class Config:
        unique = ["dimension", "key"]
        strict = True


class MonitoringRun(pa.DataFrameModel):
    """What one monitoring run read, changed and decided (one row)."""

    model: str = pa.Field(nullable=False)
    date: pl.Date = pa.Field(nullable=False)
    champion: str = pa.Field(nullable=True)  # the champion version when the run judged drift
    forecast_partitions: pl.Int64 = pa.Field(ge=0)  # as_of partitions re-joined (the recheck window)
    points: pl.Int64 = pa.Field(ge=0)  # due points known (dropped excluded)
    scored: pl.Int64 = pa.Field(ge=0)
    pending: pl.Int64 = pa.Field(ge=0)
    quarantined: pl.Int64 = pa.Field(ge=0)
    no_baseline: pl.Int64 = pa.Field(ge=0)
    new: pl.Int64 = pa.Field(ge=0)  # this run's changes, by kind (CHANGES)
    late: pl.Int64 = pa.Field(ge=0)
    revised: pl.Int64 = pa.Field(ge=0)
    updated: pl.Int64 = pa.Field(ge=0)
    withdrawn: pl.Int64 = pa.Field(ge=0)
    dropped: pl.Int64 = pa.Field(ge=0)
    actual_rows: pl.Int64 = pa.Field(ge=0)  # validated rows with a target, up to the end of ``date``
    duplicate_rows_dropped: pl.Int64 = pa.Field(ge=0)  # exact repeats of a row (the first is kept)
    duplicate_keys_refused: pl.Int64 = pa.Field(ge=0)  # (series, timestamp) with conflicting rows: all quarantined
    mase: float = pa.Field(nullable=True)  # every scored point, any version
    snaive_mase: float = pa.Field(nullable=True)
    coverage: float = pa.Field(nullable=True)
    drift_origins: pl.Int64 = pa.Field(ge=0)  # the champion's origins the rule judged
    drift_points: pl.Int64 = pa.Field(ge=0)
    drift_mase: float = pa.Field(nullable=True)  # the champion on those points
    drift_snaive_mase: float = pa.Field(nullable=True)  # seasonal naive on the same points
    test_mase: float = pa.Field(nullable=True)  # the champion's test-span served MASE (metrics.json)
    drift: bool = pa.Field(nullable=False)
    drift_reason: str = pa.Field(nullable=False)

    class Config:
        strict = True


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DriftRule(_Config):
    """When the champion's accuracy on actuals calls for a retrain (``nightcast.drift.detected``).

    The champion is judged on its own scored points from its newest ``origins`` origins (as_of
    dates with at least one scored point of the champion's version). The rule fires when either
    enabled condition holds; it needs ``min_origins`` such origins and ``min_points`` points, so a
    freshly promoted champion is not judged before it has forecasts with actuals.
    """

    enabled: bool = Field(True, description="emit the drift event when the rule holds")
    origins: int = Field(7, ge=1, le=366, description="judge the champion's newest N origins with scored points")
    min_origins: int = Field(3, ge=1, description="judge only once the champion has this many such origins")
    min_points: int = Field(20, ge=1, description="judge only once those origins hold this many scored points")
    vs_seasonal_naive: float | None = Field(
        0.1, ge=0, description="fire when the champion's MASE exceeds seasonal naive's on the same points by "
                               "more than this share (0.1 = 10 % worse); empty: off")
    vs_test_span: float | None = Field(
        None, ge=0, description="fire when the champion's MASE exceeds its own test-span served MASE "
                                "(metrics.json) by more than this share; empty: off")
    cooldown_days: int = Field(
        7, ge=0, le=366,
        description="after a drift event, send none for the same champion for this many monitoring days: the "
                    "retrain it asked for either promoted a new champion (judged afresh) or did not win, and "
                    "retraining again on nearly the same data would not either. 0: no cooldown")

    @model_validator(mode="after")
    def _consistent(self) -> "DriftRule":
        if self.min_origins > self.origins:
            raise ValueError(f"min_origins {self.min_origins} is more than origins {self.origins}")
        return self


class MonitorParams(RunOnData):
    """Everything ``monitor_flow`` needs besides the settings."""

    as_of: dt.date | None = Field(
        None, description="the monitoring date: actuals up to the end of this date; empty: the newest date in the data")
    recheck_days: int = Field(
        28, ge=1, le=3660,
        description="re-join forecasts whose as_of is at most this many days before the monitoring date with "
                    "the actuals (late, revised actuals); older points keep their last state. Never less than "
                    "the days the champion's horizon reaches, so every point is scored once it falls due")
    drift: DriftRule = DriftRule()
