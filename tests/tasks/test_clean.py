import datetime as dt

import numpy as np
import polars as pl
import pytest

from nightcast.schemas.params import CleanConfig
from nightcast.tasks.data.clean import (Calendar, clean_observations, decide_calendar, infer_frequency,
                         season_length_for)
from nightcast.tasks.serving.score import future_steps


def _series(stamps, values, sid="a") -> pl.DataFrame:
    return pl.DataFrame({"series_id": sid, "timestamp": pl.Series(stamps, dtype=pl.Datetime("us")),
                         "target": pl.Series(values, dtype=pl.Float64)})


def _hourly(n, start=dt.datetime(2024, 1, 1)):
    return [start + dt.timedelta(hours=i) for i in range(n)]


@pytest.mark.parametrize("step, freq", [(dt.timedelta(hours=1), "1h"), (dt.timedelta(minutes=30), "30m"),
                                        (dt.timedelta(days=1), "1d"), (dt.timedelta(weeks=1), "1w")])
def test_infer_frequency(step, freq):
    stamps = [dt.datetime(2024, 1, 1) + i * step for i in range(20)]
    assert infer_frequency(_series(stamps, list(range(20)))) == freq


def test_infer_frequency_takes_the_most_common_step_and_the_smallest_on_a_tie():
    """The mode of every positive within-series step: a sample's mode is used only when it holds a majority,
    so a mode without one (and a tie) is still found exactly; steps across series and repeats never count."""
    hours = [dt.datetime(2024, 1, 1) + dt.timedelta(hours=h) for h in (0, 1, 2, 3, 5, 7, 9, 11)]  # 3 x 1h, 4 x 2h
    assert infer_frequency(_series(hours, list(range(8)))) == "2h"
    tie = [dt.datetime(2024, 1, 1) + dt.timedelta(hours=h) for h in (0, 1, 2, 4, 6)]  # 2 x 1h, 2 x 2h
    assert infer_frequency(_series(tie, list(range(5)))) == "1h"
    two = pl.concat([_series(_hourly(3), [1.0, 2.0, 3.0]).with_columns(pl.lit("b").alias("series_id")),
                     _series([dt.datetime(2024, 1, 1) + dt.timedelta(days=d) for d in range(4)], [1.0] * 4),
                     _series([dt.datetime(2024, 1, 1)] * 2, [1.0, 1.0])])  # days win; a repeat is no step
    assert infer_frequency(two) == "1d"
    # a sample of every other step sees only 1h steps, but 2h is the mode: the majority check catches it
    steps = np.r_[np.tile([1, 2], 100_000), 2] * 3_600_000_000
    stamps = np.datetime64("2024-01-01", "us") + np.r_[0, np.cumsum(steps)].astype("timedelta64[us]")
    assert infer_frequency(pl.DataFrame({"series_id": "a", "timestamp": stamps, "target": 1.0})) == "2h"
    dates = pl.DataFrame({"series_id": "a", "target": [1.0] * 4,
                          "timestamp": [dt.date(2024, 1, d) for d in (1, 2, 3, 5)]})  # a Date column
    assert infer_frequency(dates) == "1d"


def test_infer_monthly():
    stamps = [dt.datetime(2020 + i // 12, i % 12 + 1, 1) for i in range(30)]
    assert infer_frequency(_series(stamps, list(range(30)))) == "1mo"


def test_trading_days_get_a_business_calendar_without_weekends_or_holidays():
    days = [d for d in (dt.datetime(2024, 1, 1) + dt.timedelta(days=i) for i in range(60)) if d.weekday() < 5]
    holiday = dt.datetime(2024, 1, 15)
    days = [d for d in days if d != holiday]
    gap_day = dt.datetime(2024, 2, 6)  # missing from one series only: a real gap
    frame = pl.concat([_series(days, np.arange(len(days)), "a"),
                       _series([d for d in days if d != gap_day], np.arange(len(days) - 1), "b")])
    cal = decide_calendar(frame, CleanConfig())
    assert cal.kind == "business" and cal.holidays == ("2024-01-15",)
    assert season_length_for(cal) == 5
    clean, report, _ = clean_observations(frame, CleanConfig(), cal)
    assert clean.filter(pl.col("timestamp").dt.weekday() >= 6).height == 0  # no invented weekends
    assert clean.filter(pl.col("timestamp") == holiday).height == 0  # no invented holiday
    b = clean.filter(pl.col("series_id") == "b")
    assert b.filter(pl.col("timestamp") == gap_day)["observed"].to_list() == [False]
    assert report.short_gaps_filled == 1
    nxt = future_steps(pl.DataFrame({"series_id": ["a"], "last_seen": [dt.datetime(2024, 2, 9)]}), cal, 2)
    assert nxt["timestamp"].to_list() == [dt.datetime(2024, 2, 12), dt.datetime(2024, 2, 13)]


def test_short_gaps_interpolated_long_gaps_flagged():
    y = np.arange(40, dtype=float)
    keep = np.ones(40, bool)
    keep[[5, 6]] = False  # short gap
    keep[20:30] = False  # long gap
    stamps = np.array(_hourly(40))[keep].tolist()
    clean, report, _ = clean_observations(_series(stamps, y[keep]), CleanConfig(max_gap=3, outliers="none"),
                                          Calendar("1h"))
    assert clean.height == 40
    assert clean["target"][5] == pytest.approx(5.0) and clean["target"][6] == pytest.approx(6.0)
    assert clean["in_long_gap"].sum() == 10 and report.long_gap_steps == 10 and report.short_gaps_filled == 2
    assert clean["target"].is_finite().all()


def test_hampel_clips_spikes_and_counts_them():
    rng = np.random.default_rng(0)
    y = 10 + np.sin(np.arange(200) * 2 * np.pi / 24) + rng.normal(0, 0.1, 200)
    y[[50, 120]] = [60.0, -40.0]
    clean, report, _ = clean_observations(_series(_hourly(200), y), CleanConfig(), Calendar("1h"))
    assert report.outliers == 2
    assert clean["is_outlier"].arg_true().to_list() == [50, 120]
    assert 5 < clean["target"][50] < 15 and 5 < clean["target"][120] < 15


def test_drop_action_turns_outliers_into_filled_gaps():
    y = np.full(100, 5.0) + np.sin(np.arange(100))
    y[60] = 500.0
    clean, _, _ = clean_observations(_series(_hourly(100), y), CleanConfig(outlier_action="drop"), Calendar("1h"))
    assert clean["target"][60] == pytest.approx((y[59] + y[61]) / 2)


def test_iqr_bounds_come_from_the_training_span_only():
    y = np.concatenate([np.sin(np.arange(100)), np.sin(np.arange(100)) + 1000])  # level shift after training
    stamps = _hourly(200)
    cfg = CleanConfig(outliers="iqr", outlier_threshold=3.0)
    _, _, bounds = clean_observations(_series(stamps, y), cfg, Calendar("1h"), train_end=stamps[99])
    lo, hi = bounds["a"]
    assert hi < 10  # fitted without the shifted values
    _, _, bounds_later = clean_observations(_series(stamps, y * 0 + y[:100].tolist() * 2), cfg, Calendar("1h"),
                                            train_end=stamps[99])
    assert bounds_later["a"] == pytest.approx(bounds["a"])


def test_off_grid_rows_are_counted_not_invented():
    stamps = _hourly(10) + [dt.datetime(2024, 1, 1, 3, 30)]
    clean, report, _ = clean_observations(_series(stamps, list(range(11))), CleanConfig(outliers="none"), Calendar("1h"))
    assert report.off_grid_rows_dropped == 1 and clean.height == 10


def _yearly_panel(period: int | None, n_series: int = 6, years: int = 120, seed: int = 0) -> pl.DataFrame:
    """Yearly series with a trend and noise, and a shared cycle of ``period`` years (phase per series)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_series):
        t = np.arange(years)
        y = 50 + 0.3 * t + rng.normal(0, 2, years)
        if period:
            y += 20 * np.sin(2 * np.pi * t / period + i)
        else:
            y += np.cumsum(rng.normal(0, 3, years))  # a random walk: no cycle
        rows.append(pl.DataFrame({"series_id": f"s{i}", "timestamp": [dt.datetime(1800 + k, 1, 1) for k in t],
                                  "target": y}))
    return pl.concat(rows)


def test_a_yearly_cycle_is_found_and_a_random_walk_has_none():
    from nightcast.tasks.data.clean import decide_season, detect_cycle

    assert detect_cycle(_yearly_panel(11)) == 11
    assert detect_cycle(_yearly_panel(None)) is None
    cal = Calendar("1y")
    assert decide_season(_yearly_panel(11), CleanConfig(), cal) == 11
    assert decide_season(_yearly_panel(None), CleanConfig(), cal) == 1
    assert decide_season(_yearly_panel(11), CleanConfig(season_length=3), cal) == 3  # what the user says wins
    # a calendar with its own season keeps it, whatever the data shows
    assert decide_season(_yearly_panel(11), CleanConfig(), Calendar("1mo")) == 12


def test_the_cycle_is_read_on_the_oldest_share_only():
    from nightcast.tasks.data.clean import decide_season

    # a cycle that only exists in the newest 30 % of each series (the evaluation spans) is not seen
    old, new = _yearly_panel(None, years=84), _yearly_panel(7, years=120, seed=1)
    frame = pl.concat([old, new.filter(pl.col("timestamp") >= dt.datetime(1884, 1, 1))])
    assert decide_season(frame, CleanConfig(), Calendar("1y"), share=0.7) == 1


def _sort_spy(monkeypatch) -> list:
    """Records every ``DataFrame.sort`` (a sort copies every column; a frame kept as it is shares them)."""
    sorts, real = [], pl.DataFrame.sort
    monkeypatch.setattr(pl.DataFrame, "sort", lambda self, *a, **k: sorts.append(1) or real(self, *a, **k))
    return sorts


def test_by_series_returns_a_sorted_frame_itself_and_sorts_the_rest(monkeypatch):
    """Catalogue-sized frames are sorted only when they are not already (a sort copies every column); a frame
    found in order comes back as itself, its ids marked sorted, and is then not checked id by id again."""
    import datetime as dt

    from nightcast.tasks.data.clean import by_series

    t = [dt.datetime(2026, 1, 1, h) for h in range(3)]
    done = pl.DataFrame({"series_id": ["a"] * 3 + ["b"] * 3, "timestamp": t + t, "target": range(6)})
    sorts = _sort_spy(monkeypatch)
    assert not done["series_id"].flags["SORTED_ASC"]
    assert by_series(done) is done and not sorts and done["series_id"].flags["SORTED_ASC"]  # marked in place
    shuffled = done.sample(fraction=1.0, shuffle=True, seed=3)
    assert by_series(shuffled).equals(done)
    interleaved = done.sort("timestamp")  # grouped by time, not by series
    assert by_series(interleaved).equals(done)


def test_by_series_is_itself_exactly_when_the_rows_are_in_order_on_random_frames(monkeypatch):
    """The order check (sorted ids, ids compared only where time does not move forward) agrees with a full
    sort on frames with ids out of order, a series in two runs, repeated or backward times inside a series,
    and times that fall or rise across a series boundary; the series numbers of ``_runs`` match rle_id."""
    import datetime as dt

    from nightcast.tasks.data.clean import _runs, by_series

    rng = np.random.default_rng(11)
    sorts = _sort_spy(monkeypatch)
    for case in range(300):
        n = int(rng.integers(0, 12))
        ids = sorted(rng.choice(["a", "b", "c", "d"], n).tolist())
        hours = rng.integers(0, 5, n).tolist()
        stamps = pl.Series([dt.datetime(2026, 1, 1, h) for h in hours], dtype=pl.Datetime("us"))
        frame = pl.DataFrame({"series_id": pl.Series(ids, dtype=pl.String), "timestamp": stamps,
                              "target": np.arange(n, dtype=float)})
        if case % 3 == 0:  # keep it sorted
            frame = frame.sort("series_id", "timestamp").unique(["series_id", "timestamp"], maintain_order=True)
        elif case % 3 == 1:
            frame = frame.sample(fraction=1.0, shuffle=True, seed=case)
        sid, ts = pl.col("series_id"), pl.col("timestamp")
        ok = (sid > sid.shift()) | ((sid == sid.shift()) & (ts > ts.shift()))  # the next series, or later in time
        in_order = frame.height < 2 or frame.with_columns(ok=ok)["ok"].slice(1).all()
        sorts.clear()
        got = by_series(frame)
        assert (not sorts) == in_order, (case, frame)  # kept as it is exactly when in order
        assert got.equals(frame.sort("series_id", "timestamp", maintain_order=True)) or (
            not in_order and got.select("series_id", "timestamp").equals(
                frame.sort("series_id", "timestamp").select("series_id", "timestamp")))
        s, starts, names = _runs(frame["series_id"])
        assert np.array_equal(s, frame["series_id"].rle_id().to_numpy())
        assert names.to_list() == frame["series_id"].gather(starts).to_list()


def test_concat_by_series_moves_whole_series_into_id_order_as_a_sort_would():
    from nightcast.tasks.data.clean import concat_by_series

    rng = np.random.default_rng(3)
    ids = [f"s{i:03d}" for i in rng.permutation(60)]
    t0 = dt.datetime(2026, 1, 1)
    rows = pl.DataFrame({"series_id": np.repeat(ids, rng.integers(1, 9, 60)).tolist()}).with_columns(
        (pl.lit(t0) + pl.duration(hours=pl.int_range(pl.len()).over("series_id"))).alias("timestamp"),
        pl.int_range(pl.len()).cast(pl.Float64).alias("target"))
    keyed = rows.with_columns((pl.col("series_id").str.slice(1).cast(pl.Int64) % 4).alias("shard"))
    shards = [part.drop("shard").sort("series_id", "timestamp")  # disjoint series, each shard sorted
              for part in keyed.partition_by("shard")]
    expected = rows.sort("series_id", "timestamp")
    real_sort = pl.DataFrame.sort
    try:  # by one gather: a sort here would mean the blocks came out of order
        pl.DataFrame.sort = lambda *a, **k: pytest.fail("concat_by_series sorted")
        merged = concat_by_series(shards)
    finally:
        pl.DataFrame.sort = real_sort
    assert merged.equals(expected)
    assert concat_by_series(shards[:1]).equals(shards[0])
    # a series in two frames (not shards of one layout): still sorted, the long way
    split = [rows.filter(pl.col("target") < 100).sort("series_id", "timestamp"),
             rows.filter(pl.col("target") >= 100).sort("series_id", "timestamp")]
    assert concat_by_series(split).equals(rows.sort("series_id", "timestamp"))


def test_frequency_steps_never_cross_series_whatever_the_row_order():
    """Five series of two rows, steps 1 h to 5 h, each starting a day after the previous one ends: a step taken
    across series (always 1 day) would be the most common one."""
    ids, stamps, start = [], [], dt.datetime(2024, 1, 1)
    for i in range(5):
        ids += [f"s{i}"] * 2
        stamps += [start, start + dt.timedelta(hours=i + 1)]
        start = stamps[-1] + dt.timedelta(days=1)
    frame = pl.DataFrame({"series_id": ids, "timestamp": stamps, "target": [1.0] * 10})
    assert infer_frequency(frame) == "1h"
    assert infer_frequency(frame.sample(fraction=1.0, shuffle=True, seed=3)) == "1h"
