"""Forecast timestamps: month and quarter ends stay ends, business days stay business days, local dates stay local."""

import datetime as dt

import polars as pl

from nightcast.schemas.params import CleanConfig
from nightcast.tasks.data.clean import Calendar, clean_observations, decide_calendar
from nightcast.tasks.serving.score import _series_status, future_steps
from nightcast.tasks.data.validate import coerce_observations


def _future(history: list[dt.datetime], calendar: Calendar, n: int) -> list[dt.datetime]:
    """The future steps scoring would use for a one-series history (last_seen and day of month from it)."""
    frame = pl.DataFrame({"series_id": "a", "timestamp": history, "target": [1.0] * len(history)},
                         schema_overrides={"timestamp": pl.Datetime("us")})
    clean, _, _ = clean_observations(frame, CleanConfig(outliers="none"), calendar)
    status = _series_status(clean, calendar, 3, 2, 1)
    return future_steps(status.select("series_id", "last_seen", "dom"), calendar, n)["timestamp"].to_list()


def _month_ends(year: int, months: list[int]) -> list[dt.datetime]:
    out = []
    for m in months:  # 0 = January
        nxt = dt.datetime(year + (m + 1) // 12, (m + 1) % 12 + 1, 1)
        out.append(nxt - dt.timedelta(days=1))
    return out


def test_a_monthly_history_ending_on_feb_29_is_forecast_on_month_ends():
    history = _month_ends(2023, [9, 10, 11]) + _month_ends(2024, [0, 1])  # Oct 31 ... Jan 31, Feb 29
    assert history[-1] == dt.datetime(2024, 2, 29)
    assert _future(history, Calendar("1mo"), 3) == [dt.datetime(2024, 3, 31), dt.datetime(2024, 4, 30),
                                                    dt.datetime(2024, 5, 31)]


def test_a_monthly_history_ending_on_apr_30_stays_on_month_ends_and_quarters_too():
    history = _month_ends(2024, [0, 1, 2, 3])  # Jan 31 ... Apr 30
    assert _future(history, Calendar("1mo"), 2) == [dt.datetime(2024, 5, 31), dt.datetime(2024, 6, 30)]
    quarters = [dt.datetime(2023, 9, 30), dt.datetime(2023, 12, 31), dt.datetime(2024, 3, 31), dt.datetime(2024, 6, 30)]
    assert _future(quarters, Calendar("3mo"), 2) == [dt.datetime(2024, 9, 30), dt.datetime(2024, 12, 31)]


def test_a_series_on_the_30th_keeps_its_day_after_a_short_february():
    history = [dt.datetime(2023, 12, 30), dt.datetime(2024, 1, 30), dt.datetime(2024, 2, 29)]
    assert _future(history, Calendar("1mo"), 2) == [dt.datetime(2024, 3, 30), dt.datetime(2024, 4, 30)]


def test_business_days_stamped_at_local_midnight_with_an_offset_stay_business_days():
    days = [d for d in (dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(40)) if d.weekday() < 5]
    raw = pl.DataFrame({"series_id": "a", "timestamp": [f"{d.isoformat()}T00:00:00+01:00" for d in days],
                        "target": [str(float(i)) for i in range(len(days))]})
    notes: dict = {}
    typed = coerce_observations(raw, notes=notes)
    assert typed["timestamp"].dt.date().to_list() == days  # local dates, not 23:00 of the day before
    assert notes["timestamps_local_midnight_read_as_dates"] == len(days)
    calendar = decide_calendar(typed, CleanConfig())
    assert calendar.kind == "business"
    last = typed["timestamp"].max()  # Friday 2024-02-09
    got = future_steps(pl.DataFrame({"series_id": ["a"], "last_seen": [last]}), calendar, 3)["timestamp"].to_list()
    assert [d.weekday() for d in got] == [0, 1, 2] and got[0] == dt.datetime(2024, 2, 12)


def test_times_of_day_with_an_offset_are_still_converted_to_utc():
    raw = pl.DataFrame({"series_id": "a", "timestamp": ["2024-01-02T01:00:00+01:00", "2024-01-02T02:00:00+01:00"],
                        "target": ["1", "2"]})
    typed = coerce_observations(raw)
    assert typed["timestamp"].to_list() == [dt.datetime(2024, 1, 2, 0), dt.datetime(2024, 1, 2, 1)]


def test_forecasts_record_what_their_timestamps_are(tmp_path):
    """Date-level input with offsets is forecast on local dates, anything else in UTC: the partition's
    Parquet metadata says which."""
    from nightcast.tasks.serving.score import TIMESTAMPS_META, timestamps_zone, write_forecasts
    from nightcast.tasks.ops.storage import open_store

    local, utc = {}, {}
    coerce_observations(pl.DataFrame({"series_id": "a", "timestamp": ["2024-01-02T00:00:00+01:00"], "target": ["1"]}),
                        notes=local)
    coerce_observations(pl.DataFrame({"series_id": "a", "timestamp": ["2024-01-02T01:00:00+01:00"], "target": ["1"]}),
                        notes=utc)
    assert timestamps_zone(local) == "local dates" and timestamps_zone(utc) == "UTC"
    frame = pl.DataFrame({"series_id": ["a"], "timestamp": [dt.datetime(2024, 1, 3)], "horizon": [1],
                          "forecast": [1.0], "model_version": ["v1"]})
    store = open_store(str(tmp_path))
    for zone in ("local dates", "UTC"):
        key = write_forecasts(store, frame, "lstm", dt.date(2024, 1, 2), zone)
        assert pl.read_parquet_metadata(tmp_path / key)[TIMESTAMPS_META] == zone
