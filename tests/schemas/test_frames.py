import datetime as dt

import polars as pl
import pytest
from pandera.errors import SchemaErrors

from nightcast.schemas.frames import CleanSeries, Forecasts, RawObservations


def _forecasts(**over) -> pl.DataFrame:
    base = {"series_id": ["a", "a"], "timestamp": [dt.datetime(2024, 1, 1, 1), dt.datetime(2024, 1, 1, 2)],
            "horizon": pl.Series([1, 2], dtype=pl.Int32), "forecast": [1.0, 2.0],
            "lower": [0.5, 1.5], "upper": [1.5, 2.5], "method": "lstm", "model": "lstm",
            "model_version": "v1", "as_of": dt.date(2024, 1, 1)}
    base.update(over)
    return pl.DataFrame(base).with_columns(pl.col("timestamp").cast(pl.Datetime("us")))


def test_forecasts_pass():
    Forecasts.validate(_forecasts(), lazy=True)
    no_intervals = pl.Series([None, None], dtype=pl.Float64)
    Forecasts.validate(_forecasts(lower=no_intervals, upper=no_intervals), lazy=True)


@pytest.mark.parametrize("over, check", [
    ({"forecast": [1.0, float("nan")]}, "finite"),
    ({"horizon": pl.Series([0, 1], dtype=pl.Int32)}, "greater_than_or_equal_to"),
    ({"lower": [1.5, 1.5]}, "lower_le_forecast_le_upper"),
    ({"timestamp": [dt.datetime(2024, 1, 1, 1)] * 2}, "multiple_fields_uniqueness"),
    ({"method": ["lstm", "arima"]}, "isin"),
])
def test_forecasts_fail(over, check):
    with pytest.raises(SchemaErrors) as err:
        Forecasts.validate(_forecasts(**over), lazy=True)
    assert any(c.startswith(check) for c in err.value.failure_cases["check"].to_list())


def test_forecasts_reject_extra_columns():
    with pytest.raises(SchemaErrors):
        Forecasts.validate(_forecasts().with_columns(pl.lit(1).alias("extra")), lazy=True)


def _clean(**over) -> pl.DataFrame:
    base = {"series_id": ["a", "a"], "timestamp": [dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 2)],
            "target": [1.0, 2.0], "observed": [True, False], "is_outlier": [False, False],
            "in_long_gap": [False, False]}
    base.update(over)
    return pl.DataFrame(base).with_columns(pl.col("timestamp").cast(pl.Datetime("us")))


def test_clean_series_pass_and_fail():
    CleanSeries.validate(_clean(), lazy=True)
    with pytest.raises(SchemaErrors):
        CleanSeries.validate(_clean(target=[1.0, None]), lazy=True)
    with pytest.raises(SchemaErrors):
        CleanSeries.validate(_clean(target=[1.0, float("inf")]), lazy=True)


@pytest.mark.parametrize("series, stamps", [
    (["a", "a"], [dt.datetime(2024, 1, 2), dt.datetime(2024, 1, 1)]),  # time runs backwards
    (["a", "a"], [dt.datetime(2024, 1, 1)] * 2),  # a duplicated key
    (["b", "a"], [dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 2)]),  # series out of order
])
def test_clean_series_must_be_sorted_and_unique(series, stamps):
    CleanSeries.validate(_clean(series_id=["a", "b"]), lazy=True)  # two series, each starting afresh
    with pytest.raises(SchemaErrors) as err:
        CleanSeries.validate(_clean(series_id=series, timestamp=stamps), lazy=True)
    assert "sorted_unique_series_timestamp" in err.value.failure_cases["check"].to_list()


def test_raw_observations_pass_and_fail():
    ok = pl.DataFrame({"series_id": ["a"], "timestamp": [dt.datetime(2024, 1, 1)], "target": [None],
                       "_timestamp_raw": ["2024-01-01"], "_target_raw": [None]},
                      schema_overrides={"target": pl.Float64, "_target_raw": pl.String,
                                        "timestamp": pl.Datetime("us")})
    RawObservations.validate(ok, lazy=True)  # a null target is a gap, not an error
    with pytest.raises(SchemaErrors):
        RawObservations.validate(ok.with_columns(pl.lit("").alias("series_id")), lazy=True)


def test_raw_observations_from_typed_input_need_no_text_columns():
    typed = pl.DataFrame({"series_id": ["a", "a"], "timestamp": [dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 2)],
                          "target": [1.0, None]}, schema_overrides={"timestamp": pl.Datetime("us")})
    RawObservations.validate(typed, lazy=True)
    with pytest.raises(SchemaErrors) as err:
        RawObservations.validate(typed.with_columns(pl.lit(float("nan")).alias("target")), lazy=True)
    assert set(err.value.failure_cases["check"]) == {"finite"}
