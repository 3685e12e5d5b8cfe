"""Cleaning a ragged catalogue: blanks at the ends, empty series, series on their own phase or span,
and the vectorised Hampel rule against the per-series reference."""

import datetime as dt

import numpy as np
import polars as pl
import pytest

from nightcast.schemas.frames import CleanSeries
from nightcast.schemas.params import CleanConfig
from nightcast.tasks.data.clean import (Calendar, _runs, _trailing_hampel, clean_observations, decide_calendar, fill_gaps, regularize,
                         treat_outliers)

NO_OUTLIERS = CleanConfig(outliers="none")
T0 = dt.datetime(2024, 1, 1)  # a Monday


def _series(stamps, values, sid="a") -> pl.DataFrame:
    return pl.DataFrame({"series_id": sid, "timestamp": pl.Series(stamps, dtype=pl.Datetime("us")),
                         "target": pl.Series(values, dtype=pl.Float64)})


def _hours(n, start=T0):
    return [start + dt.timedelta(hours=i) for i in range(n)]


def _wave(n, level=10.0):
    return (level + np.sin(np.arange(n) * 2 * np.pi / 24)).tolist()


def _of(clean: pl.DataFrame, sid: str) -> pl.DataFrame:
    return clean.filter(pl.col("series_id") == sid)


def _hampel(y: np.ndarray, window: int, k: float) -> tuple[np.ndarray, np.ndarray]:
    """The per-series reference (the implementation before vectorising), kept verbatim."""
    padded = np.concatenate([np.full(window, np.nan), y])
    past = np.lib.stride_tricks.sliding_window_view(padded[:-1], window)  # (n, window), a view
    enough = np.sum(~np.isnan(past), axis=1) >= 3
    med = np.full(len(y), np.nan)
    mad = np.full(len(y), np.nan)
    if enough.any():
        p = past[enough]
        med[enough] = np.nanmedian(p, axis=1)
        mad[enough] = 1.4826 * np.nanmedian(np.abs(p - med[enough][:, None]), axis=1)
    mad = np.maximum(mad, 1e-9 + 1e-6 * np.abs(med))
    lo, hi = med - k * mad, med + k * mad
    with np.errstate(invalid="ignore"):
        flag = ~np.isnan(y) & enough & ((y < lo) | (y > hi))
    return flag, np.clip(y, lo, hi)


# --- blanks at the ends, empty series -------------------------------------------------------------

def test_leading_blanks_are_dropped_and_counted_not_left_as_nulls():
    blanks = [None] * 3 + _wave(20)
    frame = pl.concat([_series(_hours(23), blanks, "a"), _series(_hours(23), _wave(23), "b")])
    clean, report, _ = clean_observations(frame, CleanConfig(), Calendar("1h"))
    CleanSeries.validate(clean, lazy=True)  # used to fail: "non-nullable column 'target' contains null values"
    a = _of(clean, "a")
    assert a["timestamp"][0] == T0 + dt.timedelta(hours=3) and a.height == 20
    assert report.leading_blanks_dropped == 3 and report.trailing_blanks_dropped == 0
    assert report.by_series["a"]["leading_blanks"] == 3 and report.by_series["b"]["leading_blanks"] == 0
    assert report.short_gaps_filled == 0 and report.off_grid_rows_dropped == 0


def test_trailing_blanks_are_dropped_and_counted():
    values = _wave(20) + [None] * 5
    clean, report, _ = clean_observations(_series(_hours(25), values), NO_OUTLIERS, Calendar("1h"))
    assert clean["timestamp"][-1] == T0 + dt.timedelta(hours=19) and clean.height == 20
    assert report.trailing_blanks_dropped == 5 and report.short_gaps_filled == 0
    assert not clean["in_long_gap"].any()  # used to become a 5-step long gap


def test_blanks_in_the_middle_stay_gaps():
    values = _wave(10) + [None] * 2 + _wave(10)
    clean, report, _ = clean_observations(_series(_hours(22), values), NO_OUTLIERS, Calendar("1h"))
    assert clean.height == 22 and report.short_gaps_filled == 2
    assert report.leading_blanks_dropped == report.trailing_blanks_dropped == report.off_grid_rows_dropped == 0


def test_an_all_blank_series_is_left_out_and_named():
    frame = pl.concat([_series(_hours(10), _wave(10), "a"), _series(_hours(10), [None] * 10, "blank"),
                       _series(_hours(10), _wave(10), "c")])
    clean, report, _ = clean_observations(frame, CleanConfig(), Calendar("1h"))
    CleanSeries.validate(clean, lazy=True)
    assert sorted(clean["series_id"].unique()) == ["a", "c"]
    assert report.empty_series == ["blank"] and report.empty_series_count == 1 and report.series == 2
    assert report.leading_blanks_dropped == 0  # an empty series' rows are not counted as blanks
    assert "blank" not in report.by_series


def test_empty_series_listing_is_capped_but_counted():
    empties = [_series(_hours(3), [None] * 3, f"e{i:02d}") for i in range(25)]
    frame = pl.concat([_series(_hours(10), _wave(10), "a"), *empties])
    _, report, _ = clean_observations(frame, NO_OUTLIERS, Calendar("1h"))
    assert report.empty_series_count == 25 and report.empty_series == [f"e{i:02d}" for i in range(20)]


def test_no_observed_target_at_all_is_an_error():
    with pytest.raises(ValueError, match="observed target"):
        clean_observations(_series(_hours(5), [None] * 5), NO_OUTLIERS, Calendar("1h"))


def test_a_series_whose_every_value_is_dropped_as_an_outlier_is_left_out():
    frame = pl.concat([_series(_hours(10), _wave(10), "a"), _series(_hours(10), _wave(10, level=500.0), "b")])
    cfg = CleanConfig(outliers="iqr", outlier_action="drop")
    clean, report, _ = clean_observations(frame, cfg, Calendar("1h"), iqr_bounds={"a": [0, 20], "b": [0, 20]})
    CleanSeries.validate(clean, lazy=True)
    assert clean["series_id"].unique().to_list() == ["a"] and report.empty_series == ["b"]


# --- each series on its own phase and span --------------------------------------------------------

def test_off_phase_weekly_series_keeps_its_rows():
    mondays = [T0 + dt.timedelta(weeks=i) for i in range(12)]
    wednesdays = [T0 + dt.timedelta(days=2, weeks=i) for i in range(12)]
    thursday = T0 + dt.timedelta(days=3, weeks=5)  # off the Wednesday grid: dropped and counted
    frame = pl.concat([_series(mondays, range(12), "mon"),
                       _series(wednesdays[:6] + [thursday] + wednesdays[6:], [*range(6), 99, *range(6, 12)], "wed")])
    clean, report, _ = clean_observations(frame, NO_OUTLIERS, Calendar("1w"))
    wed = _of(clean, "wed")
    assert wed["timestamp"].to_list() == wednesdays and wed["observed"].all()  # used to be emptied
    assert _of(clean, "mon")["timestamp"].to_list() == mondays
    assert report.off_grid_rows_dropped == 1 and report.off_grid_by_series == {"wed": 1}
    assert report.off_grid_series == 1 and report.by_series["wed"]["off_grid"] == 1


def test_off_phase_hourly_series_at_half_past_keeps_its_rows():
    frame = pl.concat([_series(_hours(48), _wave(48), "on_the_hour"),
                       _series(_hours(48, T0 + dt.timedelta(minutes=30)), _wave(48), "half_past")])
    clean, report, _ = clean_observations(frame, CleanConfig(), Calendar("1h"))
    half = _of(clean, "half_past")
    assert half.height == 48 and half["observed"].all() and (half["timestamp"].dt.minute() == 30).all()
    assert report.off_grid_rows_dropped == 0 and report.off_grid_by_series == {}


def test_off_grid_report_names_the_worst_series_first():
    frames = [_series(_hours(6) + [T0 + dt.timedelta(minutes=10 + j) for j in range(i + 1)],
                      list(range(6 + i + 1)), f"s{i:02d}") for i in range(25)]
    clean, report, _ = clean_observations(pl.concat(frames), NO_OUTLIERS, Calendar("1h"))
    assert clean.height == 25 * 6
    assert report.off_grid_series == 25 and report.off_grid_rows_dropped == sum(range(1, 26))
    assert list(report.off_grid_by_series) == [f"s{i:02d}" for i in range(24, 4, -1)]
    assert report.off_grid_by_series["s24"] == 25


def test_a_blank_row_on_the_grid_is_a_gap_not_off_grid():
    values = _wave(5) + [None] + _wave(5)
    _, off_grid = regularize(_series(_hours(11), values), Calendar("1h"))
    assert off_grid == 0  # the old count took every blank row for an off-grid one


def test_series_that_start_late_and_end_early_get_only_their_own_span():
    long = _series(_hours(100), _wave(100), "long")
    inner = _series(_hours(30, T0 + dt.timedelta(hours=40)), _wave(30), "inner")
    clean, report, _ = clean_observations(pl.concat([long, inner]), CleanConfig(), Calendar("1h"))
    got = _of(clean, "inner")
    assert got["timestamp"].min() == T0 + dt.timedelta(hours=40) and got.height == 30
    assert not clean["in_long_gap"].any() and report.short_gaps_filled == 0


def test_a_short_series_among_long_ones():
    frame = pl.concat([_series(_hours(200), _wave(200), "long"),
                       _series(_hours(3, T0 + dt.timedelta(hours=50)), [1.0, 50.0, 2.0], "short"),
                       _series(_hours(1, T0 + dt.timedelta(hours=80)), [7.0], "single")])
    clean, report, _ = clean_observations(frame, CleanConfig(), Calendar("1h"))
    CleanSeries.validate(clean, lazy=True)
    assert _of(clean, "short")["target"].to_list() == [1.0, 50.0, 2.0]  # fewer than 3 values before: no verdict
    assert _of(clean, "single")["target"].to_list() == [7.0]
    assert report.outliers == 0 and report.series == 3


def test_unsorted_input_gives_the_sorted_result():
    frame = pl.concat([_series(_hours(30), _wave(30), "b"), _series(_hours(20, T0 + dt.timedelta(minutes=30)),
                                                                     _wave(20), "a")])
    ordered, _, _ = clean_observations(frame.sort("series_id", "timestamp"), CleanConfig(), Calendar("1h"))
    shuffled, _, _ = clean_observations(frame.sample(fraction=1.0, shuffle=True, seed=4), CleanConfig(),
                                        Calendar("1h"))
    assert shuffled.equals(ordered)
    assert ordered["series_id"].is_sorted()


def test_covariates_carry_within_a_series_only():
    a = _series(_hours(4), [1.0, None, None, 4.0], "a").with_columns(pl.Series("x", [1.0, None, None, None]))
    b = _series(_hours(3, T0 + dt.timedelta(hours=5)), [None, 2.0, 3.0], "b").with_columns(
        pl.Series("x", [9.0, None, 5.0]))
    placed, _ = regularize(pl.concat([a, b]), Calendar("1h"))
    assert placed.columns == ["series_id", "timestamp", "target", "x", "observed"]
    assert _of(placed, "a")["x"].to_list() == [1.0, 1.0, 1.0, 1.0]
    assert _of(placed, "b")["x"].to_list() == [5.0, 5.0]  # the leading blank row (x = 9) is gone, not carried


# --- calendars ------------------------------------------------------------------------------------

def test_business_calendar_per_series_with_holidays():
    days = [d for d in (T0 + dt.timedelta(days=i) for i in range(40)) if d.weekday() < 5]
    holiday = dt.datetime(2024, 1, 15)
    days = [d for d in days if d != holiday]
    late = [d for d in days if d >= dt.datetime(2024, 1, 10)]  # starts on a Wednesday
    gap = dt.datetime(2024, 1, 19)  # a Friday, missing from "late" only: the gap is one step, not three
    frame = pl.concat([_series(days, np.arange(len(days)), "a"),
                       _series([d for d in late if d != gap], np.arange(len(late) - 1), "late")])
    cal = decide_calendar(frame, CleanConfig())
    assert cal.kind == "business" and cal.holidays == ("2024-01-15",)
    clean, report, _ = clean_observations(frame, NO_OUTLIERS, cal)
    got = _of(clean, "late")
    assert got["timestamp"].to_list() == late
    assert got.filter(~pl.col("observed"))["timestamp"].to_list() == [gap]
    assert report.short_gaps_filled == 1 and report.off_grid_rows_dropped == 0


def test_business_calendar_drops_weekend_rows_as_off_grid():
    days = [d for d in (T0 + dt.timedelta(days=i) for i in range(14))]  # every day, weekends included
    clean, report, _ = clean_observations(_series(days, np.arange(14.0)), NO_OUTLIERS, Calendar("1d", "business"))
    assert (clean["timestamp"].dt.weekday() <= 5).all() and clean.height == 10
    assert report.off_grid_rows_dropped == 4 and clean["observed"].all()


def test_monthly_series_each_on_its_own_day_of_the_month():
    firsts = [dt.datetime(2023, m, 1) for m in range(1, 13)]
    ends = [dt.datetime(2024, 2, 29), dt.datetime(2024, 3, 31), dt.datetime(2024, 4, 30), dt.datetime(2024, 5, 31),
            dt.datetime(2024, 6, 30), dt.datetime(2024, 8, 31)]  # month ends from a short month; July missing
    thirtieths = [dt.datetime(2024, 1, 30), dt.datetime(2024, 2, 29), dt.datetime(2024, 3, 30),
                  dt.datetime(2024, 4, 30), dt.datetime(2024, 5, 30)]
    frame = pl.concat([_series(firsts, range(12), "first"), _series(ends, range(6), "end"),
                       _series(thirtieths, range(5), "30th")])
    clean, report, _ = clean_observations(frame, NO_OUTLIERS, Calendar("1mo"))
    assert report.off_grid_rows_dropped == 0
    assert _of(clean, "first")["timestamp"].to_list() == firsts
    end = _of(clean, "end")
    assert end["timestamp"].to_list() == ends[:5] + [dt.datetime(2024, 7, 31), ends[5]]
    assert end.filter(~pl.col("observed"))["timestamp"].to_list() == [dt.datetime(2024, 7, 31)]
    assert _of(clean, "30th")["timestamp"].to_list() == thirtieths  # Feb 29 stands in for the 30th


def test_quarterly_series_on_its_own_phase():
    q1 = [dt.datetime(2020 + i // 4, 3 * (i % 4) + 1, 1) for i in range(8)]
    q2 = [dt.datetime(2020 + i // 4, 3 * (i % 4) + 2, 15) for i in range(8)]
    clean, report, _ = clean_observations(pl.concat([_series(q1, range(8), "a"), _series(q2, range(8), "b")]),
                                          NO_OUTLIERS, Calendar("3mo"))
    assert report.off_grid_rows_dropped == 0 and _of(clean, "b")["timestamp"].to_list() == q2


# --- outliers on the stacked frame ----------------------------------------------------------------

def _random_catalogue(seed: int, n_series: int = 40) -> tuple[pl.DataFrame, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    frames, values = [], []
    for i in range(n_series):
        n = int(rng.integers(1, 120))
        y = rng.normal(size=n) * rng.uniform(0.1, 10) + rng.uniform(-5, 5)
        y[rng.random(n) < rng.uniform(0, 0.4)] = np.nan  # gaps, some long
        y[rng.random(n) < 0.05] *= 40  # spikes
        values.append(y)
        frames.append(_series(_hours(n), y.tolist(), f"s{i:02d}").with_columns(pl.col("target").fill_nan(None)))
    return pl.concat(frames), values


@pytest.mark.parametrize("window, k", [(3, 1.0), (7, 3.0), (24, 4.0), (50, 2.0)])
@pytest.mark.parametrize("chunk_values", [64, 1 << 21])  # many chunks, each cut mid-series, and one
@pytest.mark.parametrize("threads", [1, 3])  # blocks of chunks on threads: the same values, bit for bit
def test_stacked_hampel_equals_the_per_series_reference(window, k, chunk_values, threads):
    frame, values = _random_catalogue(seed=window)
    s, starts, _ = _runs(frame["series_id"])
    flag, clipped = _trailing_hampel(frame["target"].to_numpy(), s, starts, window, k, chunk_values, threads)
    reference = [_hampel(y, window, k) for y in values]
    assert np.array_equal(flag, np.concatenate([f for f, _ in reference]))
    expected = np.concatenate([np.where(f, c, y) for y, (f, c) in zip(values, reference)])
    assert np.array_equal(clipped, expected, equal_nan=True)  # bit for bit
    assert flag.any()


def test_a_hampel_window_under_three_values_flags_nothing():
    frame, _ = _random_catalogue(seed=5)
    s, starts, _ = _runs(frame["series_id"])
    y = frame["target"].to_numpy()
    for window in (1, 2):
        flag, clipped = _trailing_hampel(y, s, starts, window, 1.0)
        assert not flag.any() and np.array_equal(clipped, y, equal_nan=True)


@pytest.mark.parametrize("window, k", [(3, 1.0), (7, 3.0), (24, 2.0), (24, 4.0)])
def test_hampel_with_ties_and_values_on_the_band_edge_equals_the_reference(window, k):
    # Few distinct values: windows full of ties, MADs of 0 (the floor), values exactly on med ± k·MAD.
    # Only rows that may be outliers get their MAD computed; these catalogues put the most rows near
    # that screen's edge, and the flags and clipped values must still be the per-series reference's.
    rng = np.random.default_rng(window)
    values = [rng.choice([0.0, 1.0, 2.0, 3.0, 8.0], size=int(n), p=[.3, .3, .2, .15, .05])
              for n in rng.integers(1, 150, size=40)]
    for y in values[::3]:
        y[rng.random(len(y)) < 0.2] = np.nan
    frame = pl.concat([_series(_hours(len(y)), y.tolist(), f"s{i:02d}") for i, y in enumerate(values)])
    frame = frame.with_columns(pl.col("target").fill_nan(None))
    s, starts, _ = _runs(frame["series_id"])
    flag, clipped = _trailing_hampel(frame["target"].to_numpy(), s, starts, window, k, 1 << 10)
    reference = [_hampel(y, window, k) for y in values]
    assert np.array_equal(flag, np.concatenate([f for f, _ in reference]))
    expected = np.concatenate([np.where(f, c, y) for y, (f, c) in zip(values, reference)])
    assert np.array_equal(clipped, expected, equal_nan=True)
    assert flag.any() and not flag.all()


@pytest.mark.parametrize("action", ["clip", "drop"])
def test_treat_outliers_matches_the_reference_per_series(action):
    frame, values = _random_catalogue(seed=11)
    cfg = CleanConfig(outlier_window=12, outlier_threshold=3.0, outlier_action=action)
    got = treat_outliers(frame, cfg, season_length=24)
    reference = [_hampel(y, 12, 3.0) for y in values]
    flags = np.concatenate([f for f, _ in reference])
    fill = (lambda f, c, y: np.where(f, c, y)) if action == "clip" else (lambda f, c, y: np.where(f, np.nan, y))
    expected = np.concatenate([fill(f, c, y) for y, (f, c) in zip(values, reference)])
    assert got["is_outlier"].to_numpy().tolist() == flags.tolist()
    assert np.array_equal(got["target"].to_numpy(), expected, equal_nan=True)


def test_hampel_window_does_not_look_into_the_previous_series():
    # "b" starts with three values far from "a"'s level: with a window crossing the boundary they
    # would be flagged against "a"; on their own they have fewer than 3 values before them.
    frame = pl.concat([_series(_hours(50), _wave(50), "a"), _series(_hours(4), [500.0, 501.0, 502.0, 503.0], "b")])
    out = treat_outliers(frame, CleanConfig(), season_length=24)
    assert not out["is_outlier"].any()


def test_iqr_bounds_apply_per_series_and_unknown_series_pass():
    frame = pl.concat([_series(_hours(4), [1.0, 2.0, 30.0, None], "a"), _series(_hours(3), [100.0, 1.0, 2.0], "b"),
                       _series(_hours(2), [1e6, -1e6], "new")])
    out = treat_outliers(frame, CleanConfig(outliers="iqr"), 24, iqr_bounds={"a": [0.0, 10.0], "b": [0.0, 50.0]})
    assert out["is_outlier"].to_list() == [False, False, True, False, True, False, False, False, False]
    assert out["target"].to_list() == [1.0, 2.0, 10.0, None, 50.0, 1.0, 2.0, 1e6, -1e6]


def test_iqr_bounds_ignore_series_without_training_data():
    frame = pl.concat([_series(_hours(10), _wave(10), "a"),
                       _series(_hours(5, T0 + dt.timedelta(hours=20)), _wave(5), "later")])
    cfg = CleanConfig(outliers="iqr")
    clean, _, bounds = clean_observations(frame, cfg, Calendar("1h"), train_end=T0 + dt.timedelta(hours=9))
    assert list(bounds) == ["a"] and _of(clean, "later").height == 5


# --- everything at once ---------------------------------------------------------------------------

def test_a_ragged_catalogue_cleans_without_failing_the_schema():
    frames = [
        _series(_hours(120), _wave(120), "regular"),
        _series(_hours(60), [None] * 4 + _wave(50) + [None] * 6, "blank_ends"),
        _series(_hours(10), [None] * 10, "all_blank"),
        _series(_hours(80, T0 + dt.timedelta(minutes=30)), _wave(80), "half_past"),
        _series(_hours(30, T0 + dt.timedelta(hours=45)), _wave(30), "late"),
        _series(_hours(2, T0 + dt.timedelta(hours=7)), [3.0, 4.0], "tiny"),
    ]
    clean, report, _ = clean_observations(pl.concat(frames), CleanConfig(), Calendar("1h"))
    CleanSeries.validate(clean, lazy=True)
    assert report.series == 5 and report.empty_series == ["all_blank"]
    assert report.leading_blanks_dropped == 4 and report.trailing_blanks_dropped == 6
    assert report.off_grid_rows_dropped == 0 and report.rows_on_grid == 120 + 50 + 80 + 30 + 2
    assert set(report.to_json()) >= {"off_grid_by_series", "leading_blanks_dropped", "empty_series"}


def test_covariates_carry_forward_then_back_within_each_series_on_the_grid():
    """A missing step takes its series' covariate from the step before it; a covariate the input left null
    takes the last value before it (the first one after it at a series' start); never another series'."""
    rng = np.random.default_rng(5)
    frames, expected = [], {}
    for i in range(30):
        n = int(rng.integers(3, 40))
        steps = np.sort(rng.choice(np.arange(2 * n), size=n, replace=False))
        steps -= steps[0]  # the first row starts the grid
        promo = [None if rng.random() < 0.3 else f"p{i}-{j}" for j in range(n)]
        temp = [None if rng.random() < 0.3 else float(i * 100 + j) for j in range(n)]
        stamps = [T0 + dt.timedelta(hours=int(k)) for k in steps]
        frames.append(_series(stamps, rng.normal(size=n).tolist(), f"s{i:02d}")
                      .with_columns(pl.Series("promo", promo, dtype=pl.String), pl.Series("temp", temp, dtype=pl.Float64)))
        grid = pl.DataFrame({"timestamp": pl.Series(_hours(int(steps[-1]) + 1), dtype=pl.Datetime("us"))})
        ref = grid.join(frames[-1].select("timestamp", "promo", "temp"), on="timestamp", how="left")
        expected[f"s{i:02d}"] = ref.with_columns(pl.col("promo", "temp").forward_fill().backward_fill())
    clean, _, _ = clean_observations(pl.concat(frames), NO_OUTLIERS, Calendar("1h"))
    for sid, ref in expected.items():
        got = _of(clean, sid).select("timestamp", "promo", "temp")
        assert got.equals(ref), sid
    assert clean.filter(pl.col("promo").is_null() | pl.col("temp").is_null()).height == sum(
        r.filter(pl.col("promo").is_null() | pl.col("temp").is_null()).height for r in expected.values())


def test_series_tails_keeps_the_last_rows_of_each_series_in_order():
    from nightcast.tasks.data.clean import series_tails

    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 12, 30)
    frame = pl.DataFrame({"series_id": np.repeat([f"s{i:02d}" for i in range(30)], lengths),
                          "timestamp": np.concatenate([np.arange(n) for n in lengths]).astype("datetime64[D]")
                          .astype("datetime64[us]"),
                          "target": rng.normal(size=int(lengths.sum()))}).sample(fraction=1.0, shuffle=True, seed=2)
    for n in (1, 4, 20):
        expected = frame.sort("series_id", "timestamp").group_by("series_id", maintain_order=True).tail(n)
        assert series_tails(frame, n).equals(expected)


def test_the_cleaning_report_lists_the_series_cleaning_touched_most_as_before():
    """``to_json(worst)`` equals the whole report with ``by_series`` cut to the most touched series (first in
    catalogue order on a tie), and copies what it returns."""
    import dataclasses

    from nightcast.tasks.data.clean import CleanReport

    rng = np.random.default_rng(3)
    by = {f"s{i:03d}": {"filled": int(rng.integers(0, 3)), "outliers": int(rng.integers(0, 2))} for i in range(200)}
    report = CleanReport(series=200, by_series=by, empty_series=["x"], validation={"notes": [1, 2]})
    whole = dataclasses.asdict(report)
    assert report.to_json() == whole
    cut = report.to_json(worst=20)
    top = sorted(by.items(), key=lambda kv: sum(kv[1].values()), reverse=True)[:20]
    assert cut == {**whole, "by_series": dict(top), "by_series_listed": "the 20 of 200 series cleaning touched most"}
    assert list(cut) == [*whole, "by_series_listed"]  # the same key order
    cut["by_series"][top[0][0]]["filled"] = 99
    cut["validation"]["notes"].append(3)
    assert by[top[0][0]]["filled"] != 99 and report.validation == {"notes": [1, 2]}  # a copy, not the report's own


def test_the_cleaning_report_names_the_series_cleaning_touched_most():
    """``by_series`` holds the 20 series with the most cleaned steps (most first, catalogue order on a tie):
    series ``sNN`` has NN filled steps, so the 20 highest are listed, and the counts still cover every series."""
    frames = []
    for i in range(30):
        values = _wave(60)
        for j in range(i % 25):  # i % 25 single-step gaps (0..24, then 0..4 again: ties)
            values[2 + 2 * j] = None
        frames.append(_series(_hours(60), values, f"s{i:02d}"))
    clean, report, _ = clean_observations(pl.concat(frames), CleanConfig(outliers="none", max_gap=1), Calendar("1h"))
    filled = {f"s{i:02d}": i % 25 for i in range(30)}
    want = sorted(filled, key=lambda sid: -filled[sid])[:20]  # stable: catalogue order on a tie
    assert list(report.by_series) == want
    assert all(report.by_series[sid]["filled"] == filled[sid] for sid in want)
    assert report.short_gaps_filled == sum(filled.values()) and report.series == 30
    assert report.to_json(worst=20)["by_series"] == report.by_series
    few = clean_observations(pl.concat(frames[:3][::-1]), CleanConfig(outliers="none", max_gap=1), Calendar("1h"))[1]
    assert list(few.by_series) == ["s00", "s01", "s02"]  # 20 or fewer: every series, in catalogue order, as before


# --- gaps and placement on the stacked frame ------------------------------------------------------

@pytest.mark.parametrize("method", ["interpolate", "ffill"])
@pytest.mark.parametrize("max_gap", [0, 1, 3])
@pytest.mark.parametrize("blank_edges", [False, True])  # True: some series start or end on a gap
def test_gaps_filled_on_the_catalogue_equal_each_series_filled_alone(method, max_gap, blank_edges):
    # With values at every series' edges the fills run over the whole column at once; no fill may then
    # reach across a series boundary. With a blank edge (outliers dropped there) they run per series.
    rng = np.random.default_rng(max_gap)
    frames = []
    for i in range(60):
        y = rng.normal(size=int(rng.integers(1, 40)))
        y[rng.random(len(y)) < rng.uniform(0, 0.6)] = np.nan
        if not blank_edges or i % 7:
            y[0], y[-1] = 1.0 + i, -1.0 - i
        frames.append(_series(_hours(len(y)), y.tolist(), f"s{i:02d}").with_columns(pl.col("target").fill_nan(None)))
    frames = [f for f in frames if f["target"].null_count() < f.height]  # cleaning drops all-blank series first
    together = fill_gaps(pl.concat(frames), max_gap, method)
    alone = pl.concat([fill_gaps(f, max_gap, method) for f in frames])
    assert together.equals(alone)
    assert together["target"].null_count() == 0
    if max_gap == 0:  # every gap is a long one
        assert together["in_long_gap"].sum() == sum(f["target"].null_count() for f in frames)


def test_placing_without_gathers_equals_placing_with_them():
    # Regular data is placed as it came; with an off-grid row the rows kept are filtered; with a missing
    # step every column is gathered onto the grid. The three paths must agree row for row.
    frames = [_series(_hours(30), _wave(30, level=i), f"s{i}").with_columns(
        pl.Series("promo", [None, *range(29)], dtype=pl.Float64)) for i in range(3)]
    regular = pl.concat(frames)
    placed, off = regularize(regular, Calendar("1h"))
    assert off == 0 and placed.drop("observed").equals(regular.with_columns(pl.col("promo").fill_null(0.0)))
    odd = pl.concat([regular, regular.head(1).with_columns(pl.col("timestamp") + dt.timedelta(minutes=30))])
    filtered, off = regularize(odd, Calendar("1h"))
    assert off == 1 and filtered.equals(placed)
    gap = regular.with_row_index().filter(pl.col("index") != 40).drop("index")  # s1's 11th hour missing
    gathered, off = regularize(gap, Calendar("1h"))
    expected = placed.with_columns(
        pl.when(pl.int_range(pl.len()) == 40).then(None).otherwise(pl.col("target")).alias("target"),
        (pl.int_range(pl.len()) != 40).alias("observed"),
        pl.when(pl.int_range(pl.len()) == 40).then(pl.col("promo").shift(1)).otherwise(pl.col("promo")).alias("promo"))
    assert off == 0 and gathered.equals(expected)


@pytest.mark.parametrize("method", ["interpolate", "ffill"])
@pytest.mark.parametrize("max_gap", [0, 1, 3, 12])
def test_gap_fill_equals_polars_interpolate_bit_for_bit(method, max_gap):
    """The fill computed on the missing steps alone gives polars' own values, to the last bit and the sign of
    zero: a gap of up to ``max_gap`` steps is ``interpolate``d (or forward-filled), a longer one forward-filled
    and flagged, each series on its own (the reference groups by series)."""
    rng = np.random.default_rng(max_gap + 7)
    frames = []
    for i in range(80):
        y = rng.normal(size=int(rng.integers(2, 300))) * 10.0 ** int(rng.integers(-3, 7))
        y[rng.random(len(y)) < rng.uniform(0, 0.7)] = np.nan
        for _ in range(int(rng.integers(0, 3))):  # long gaps
            a = int(rng.integers(0, len(y)))
            y[a:a + int(rng.integers(1, 30))] = np.nan
        y[0], y[-1] = rng.normal(), -0.0 if i % 5 == 0 else rng.normal()
        frames.append(_series(_hours(len(y)), y.tolist(), f"s{i:02d}").with_columns(pl.col("target").fill_nan(None)))
    frame = pl.concat(frames)
    got = fill_gaps(frame, max_gap, method)
    missing = pl.col("target").is_null()
    run = pl.struct(pl.col("series_id"), missing).rle_id()
    short = missing & (run.rle().struct.field("len").gather(run) <= max_gap)
    filled = pl.col("target").interpolate() if method == "interpolate" else pl.col("target").forward_fill()
    want = frame.with_columns(pl.when(short).then(filled.over("series_id")).otherwise(pl.col("target"))
                              .forward_fill().over("series_id").alias("target"), (missing & ~short).alias("in_long_gap"))
    a, b = got["target"].to_numpy(), want["target"].to_numpy()
    assert np.array_equal(a, b) and np.array_equal(np.signbit(a), np.signbit(b))
    assert got["in_long_gap"].equals(want["in_long_gap"]) and got["in_long_gap"].any() == (max_gap < 29)


@pytest.mark.parametrize("freq,hours", [("1h", 1), ("2h", 2), ("1d", 24), ("1w", 168)])
def test_a_fixed_step_places_rows_without_building_the_grid_as_the_grid_does(freq, hours, monkeypatch):
    """For a fixed step the rows on each series' grid are found arithmetically (``_on_fixed_grid``) and, when no
    step is missing (``_whole``), the rows kept are the placed frame; when every row is one step after the one
    before it (``_every_step``) neither test runs: the same rows, and the same placed frame, counts and run
    lengths of the placed ids, as building the grid (``_on_grid``) gives, on ragged series with gaps, off-grid
    rows, repeated stamps, blank edges and a series with nothing observed."""
    import nightcast.tasks.data.clean as clean

    rng = np.random.default_rng(hours)
    real, told = clean._whole, []
    monkeypatch.setattr(clean, "_whole", lambda *a: told.append(real(*a)) or told[-1])
    every, regular = clean._every_step, []
    monkeypatch.setattr(clean, "_every_step", lambda *a: regular.append(every(*a)) or regular[-1])
    for trial in range(40):
        frames = []
        for i in range(int(rng.integers(1, 10))):
            n = int(rng.integers(1, 50))
            k = np.arange(n) if rng.random() < 0.7 else np.sort(rng.choice(2 * n, n, replace=rng.random() < 0.2))
            stamps = [T0 + dt.timedelta(hours=int(j) * hours, minutes=15 * (i % 3)) for j in k]
            if rng.random() < 0.3:  # off-grid rows
                stamps = [s + dt.timedelta(minutes=7) if rng.random() < 0.1 else s for s in stamps]
            if rng.random() < 0.3:  # off-grid rows between steps, every step still there
                extra = sorted(rng.choice(n, min(n, int(rng.integers(1, 4))), replace=False).tolist(), reverse=True)
                for j in extra:
                    stamps.insert(j + 1, stamps[j] + dt.timedelta(minutes=7))
                n = len(stamps)
            y = rng.normal(size=n)
            y[rng.random(n) < (1.0 if i == 4 else rng.uniform(0, 0.5))] = np.nan  # series 4: nothing observed
            frames.append(_series(stamps, y.tolist(), f"s{i}").with_columns(pl.col("target").fill_nan(None)))
        f, s, names, t = clean._in_series_order(pl.concat(frames))
        obs = f["target"].is_not_null().to_numpy()
        on = clean._on_fixed_grid(s, t, obs, hours * 3_600_000_000, names.len())
        assert np.array_equal(on, clean._on_grid(f, s, t, obs, Calendar(freq))[3]), trial
        placed, placing, runs = clean._place(f, Calendar(freq))
        with monkeypatch.context() as m:  # the grid built whatever the rows: every step placed from it
            m.setattr(clean, "_whole", lambda *a: False)
            m.setattr(clean, "_every_step", lambda *a: False)
            built, built_placing, _ = clean._place(f, Calendar(freq))
        assert placed.equals(built) and placing.equals(built_placing), trial
        if runs is not None:  # the run lengths _place derived from its counts: a pass over the placed ids'
            want = clean._runs(placed["series_id"])
            assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(runs[:2], want[:2])), trial
            assert runs[2].equals(want[2]) and runs[2].name == want[2].name, trial
    assert any(told) and not all(told)  # both: grids with no step missing, and grids with missing steps filled
    assert any(regular) and not all(regular)  # inputs with every step in place, and others


def test_every_step_in_place_places_as_the_grid_does_with_blanks_and_an_empty_series(monkeypatch):
    """Input with every row one step after the one before it in its series (``_every_step``): blank rows
    before and after each series' observations, a series with nothing observed among the others, a series of
    one row, and a series without blanks; the placed frame, counts and run lengths equal those of building
    the grid."""
    import nightcast.tasks.data.clean as clean

    nan = float("nan")
    f = pl.concat([
        _series(_hours(6), [nan, nan, 1.0, nan, 2.0, nan], "a"),
        _series(_hours(4, T0 + dt.timedelta(hours=3)), [nan] * 4, "b"),  # nothing observed: empty, no blank counted
        _series(_hours(1), [5.0], "c"),
        _series(_hours(5, T0 + dt.timedelta(hours=1)), [1.0, 2.0, 3.0, 4.0, 5.0], "d"),
        _series(_hours(3), [nan, 7.0, nan], "e"),
    ]).with_columns(pl.col("target").fill_nan(None))
    spy = []
    real = clean._place_every_step
    monkeypatch.setattr(clean, "_place_every_step", lambda *a: spy.append(1) or real(*a))
    placed, placing, runs = clean._place(f, Calendar("1h"))
    assert spy  # the fast path ran
    with monkeypatch.context() as m:
        m.setattr(clean, "_every_step", lambda *a: False)
        m.setattr(clean, "_whole", lambda *a: False)
        built, built_placing, _ = clean._place(f, Calendar("1h"))
    assert placed.equals(built) and placing.equals(built_placing)
    assert placing.select("series_id", "leading_blanks", "trailing_blanks", "empty").rows() == [
        ("a", 2, 1, False), ("b", 0, 0, True), ("c", 0, 0, False), ("d", 0, 0, False), ("e", 1, 1, False)]
    want = clean._runs(placed["series_id"])
    assert all(np.array_equal(a, b) for a, b in zip(runs[:2], want[:2])) and runs[2].equals(want[2])


def test_run_lengths_handed_to_placing_and_inference_are_used_only_for_rows_in_series_order():
    """``_place`` and ``infer_frequency`` take the ids' run lengths from a caller only when the frame needs no
    sort: handed the runs of a shuffled frame (which describe its shuffled rows), they read the sorted rows'
    own and give what they give without them."""
    import nightcast.tasks.data.clean as clean

    nan = float("nan")
    f = pl.concat([_series(_hours(6), [nan, 1.0, 2.0, nan, 3.0, 4.0], "a"),
                   _series(_hours(5, T0 + dt.timedelta(hours=2)), [1.0, 2.0, 3.0, 4.0, nan], "b")]
                  ).with_columns(pl.col("target").fill_nan(None))
    for frame in (f, f.sample(fraction=1.0, shuffle=True, seed=1)):
        runs = clean.id_runs(frame["series_id"])
        got, want = clean._place(frame, Calendar("1h"), runs), clean._place(frame, Calendar("1h"))
        assert got[0].equals(want[0]) and got[1].equals(want[1])
        assert clean.infer_frequency(frame, runs) == clean.infer_frequency(frame) == "1h"


# --- scoring's tails: the outlier rule judges only the rows the tails depend on -------------------------

@pytest.mark.parametrize("window", [3, 24])
def test_hampel_on_chosen_rows_gives_those_rows_the_whole_pass_values(window):
    frame, _ = _random_catalogue(seed=3)
    s, starts, _ = _runs(frame["series_id"])
    y = frame["target"].to_numpy()
    whole_flag, whole = _trailing_hampel(y, s, starts, window, 2.0, 1 << 10)
    rows = np.flatnonzero(np.random.default_rng(0).random(len(y)) < 0.3)  # rows under the window included
    assert rows[0] < window
    flag, clipped = _trailing_hampel(y, s, starts, window, 2.0, 1 << 10, threads=2, rows=rows)
    assert np.array_equal(flag[rows], whole_flag[rows]) and whole_flag[rows].any()
    assert np.array_equal(clipped[rows], whole[rows], equal_nan=True)
    others = np.setdiff1d(np.arange(len(y)), rows)
    assert not flag[others].any() and np.array_equal(clipped[others], y[others], equal_nan=True)


def _gap_into_the_tail() -> pl.DataFrame:
    """Series "a": a spike, then a long gap running into the last 10 rows; its fill is the spike's clipped value,
    judged 14 rows before the tail. "b": random values with short gaps and spikes."""
    a = _wave(60)
    a[40] = 500.0  # the spike the long gap is filled from
    stamps = _hours(60)
    keep = [i for i in range(60) if not 41 <= i <= 53]  # 13 missing steps: a long gap, rows 41..53
    rng = np.random.default_rng(1)
    b = (10 + rng.normal(size=80)).tolist()
    b[70], b[75] = 90.0, -60.0
    b_keep = [i for i in range(80) if i not in (71, 72, 77)]
    return pl.concat([_series([stamps[i] for i in keep], [a[i] for i in keep], "a"),
                      _series([_hours(80)[i] for i in b_keep], [b[i] for i in b_keep], "b")])


@pytest.mark.parametrize("fill", ["interpolate", "ffill"])
@pytest.mark.parametrize("action", ["clip", "drop"])
@pytest.mark.parametrize("tail", [0, 1, 10, 30, 500])
def test_clean_tails_equal_the_tails_of_the_whole_clean(fill, action, tail):
    from nightcast.tasks.data.clean import clean_tails, series_tails

    frame = pl.concat([_gap_into_the_tail(), _random_catalogue(seed=8)[0]])
    cfg = CleanConfig(outlier_window=12, outlier_threshold=3.0, outlier_action=action, fill=fill, max_gap=3)
    whole = series_tails(clean_observations(frame, cfg, Calendar("1h"))[0], tail)
    got = clean_tails(frame, cfg, Calendar("1h"), tail)
    assert got.equals(whole)
    if tail == 10 and action == "clip":  # the tail of "a" is filled from the clipped spike, judged before the tail
        a = _of(got, "a")
        assert a["in_long_gap"].head(4).all() and a["target"].head(4).n_unique() == 1
        assert 10 < a["target"][0] < 500
