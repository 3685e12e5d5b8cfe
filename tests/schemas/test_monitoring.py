"""The monitoring frames and parameters: a passing and a failing example of each."""

import datetime as dt

import polars as pl
import pytest
from pandera.errors import SchemaErrors
from pydantic import ValidationError

from nightcast.schemas.monitoring import DriftRule, MonitoringPoints, MonitoringRun, MonitoringSummary, MonitorParams
from nightcast.tasks.ops.monitor import POINTS_SCHEMA, _schema

DAY = dt.date(2026, 3, 5)


def _points(**over) -> pl.DataFrame:
    base = {"series_id": ["a", "b"], "timestamp": [dt.datetime(2026, 3, 5)] * 2, "as_of": [DAY, DAY],
            "model_version": "v1", "horizon": [1, 1], "method": ["lstm", "naive"], "forecast": [1.0, 2.0],
            "lower": [0.5, None], "upper": [1.5, None], "actual": [1.2, None], "snaive": [1.1, 2.2],
            "scale": [1.0, 0.5], "status": ["scored", "pending"], "change": ["new", "new"], "revisions": [0, 0],
            "first_seen": DAY, "scored_on": [DAY, None], "model": "m", "date": DAY}
    base.update(over)
    return pl.DataFrame(base).cast(POINTS_SCHEMA)


def test_points_pass():
    MonitoringPoints.validate(_points(), lazy=True)


@pytest.mark.parametrize("over, check", [
    ({"status": ["scored", "scored"]}, "scored_has_actual_and_baseline"),  # b has no actual
    ({"status": ["scored", "late"]}, "isin"),
    ({"change": ["new", "rescored"]}, "isin"),
    ({"scale": [1.0, 0.0]}, "greater_than"),
    ({"series_id": ["a", "a"]}, "multiple_fields_uniqueness"),
])
def test_points_fail(over, check):
    with pytest.raises(SchemaErrors) as err:
        MonitoringPoints.validate(_points(**over), lazy=True)
    assert any(c.startswith(check) for c in err.value.failure_cases["check"].to_list())


def _summary(**over) -> pl.DataFrame:
    base = {"model": "m", "date": DAY, "dimension": ["all", "horizon"], "key": ["all", "1"], "points": [1, 1],
            "pending": [0, 0], "no_baseline": [0, 0], "mase": [0.5, 0.5], "smape": [3.0, 3.0], "rmse": [1.0, 1.0],
            "mae": [1.0, 1.0], "bias": [-1.0, -1.0], "coverage": [1.0, None], "interval_points": [1, 0],
            "snaive_mase": [1.0, 1.0], "snaive_smape": [5.0, 5.0], "snaive_rmse": [2.0, 2.0],
            "snaive_mae": [2.0, 2.0], "snaive_bias": [2.0, 2.0]}
    base.update(over)
    return pl.DataFrame(base).cast(_schema(MonitoringSummary))


def test_summary_pass_and_fail():
    MonitoringSummary.validate(_summary(), lazy=True)
    with pytest.raises(SchemaErrors):
        MonitoringSummary.validate(_summary(dimension=["all", "weekday"]), lazy=True)
    with pytest.raises(SchemaErrors):
        MonitoringSummary.validate(_summary(coverage=[1.5, None]), lazy=True)


def test_run_rejects_extra_columns_and_negative_counts():
    schema = _schema(MonitoringRun)
    row = {n: (0 if t == pl.Int64 else None) for n, t in schema.items()}
    row.update(model="m", date=DAY, drift=False, drift_reason="drift rule disabled")
    good = pl.DataFrame([row], schema=schema)
    MonitoringRun.validate(good, lazy=True)
    with pytest.raises(SchemaErrors):
        MonitoringRun.validate(good.with_columns(pl.lit(-1, dtype=pl.Int64).alias("late")), lazy=True)
    with pytest.raises(SchemaErrors):
        MonitoringRun.validate(good.with_columns(pl.lit(1).alias("extra")), lazy=True)


def test_drift_rule_and_params():
    assert DriftRule().vs_seasonal_naive == 0.1 and DriftRule().vs_test_span is None
    with pytest.raises(ValidationError, match="min_origins"):
        DriftRule(origins=2, min_origins=3)
    with pytest.raises(ValidationError):
        DriftRule(vs_seasonal_naive=-0.1)
    with pytest.raises(ValidationError):
        MonitorParams(model_name="../x")
    assert MonitorParams.model_validate({"as_of": "2026-03-05"}).as_of == DAY
