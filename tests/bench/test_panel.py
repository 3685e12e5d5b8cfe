"""bench/panel.py: a seeded ragged hourly panel with the defects a real catalogue has."""

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from bench.panel import main, make_panel

N, T = 400, 2000


@pytest.fixture(scope="module")
def panel() -> pl.DataFrame:
    return make_panel(N, T, seed=3)


@pytest.fixture(scope="module")
def per_series(panel: pl.DataFrame) -> pl.DataFrame:
    minute = pl.col("timestamp").dt.minute()
    return panel.group_by("series_id").agg(
        pl.len().alias("rows"), pl.col("timestamp").min().alias("first"), pl.col("timestamp").max().alias("last"),
        pl.col("target").first().is_null().alias("starts_blank"), (minute == 30).all().alias("off_phase"),
        (minute == 30).any().alias("any_off_phase"), pl.col("segment").n_unique().alias("segments"))


def test_long_format_with_a_categorical_covariate(panel):
    assert panel.schema == pl.Schema({"series_id": pl.String, "timestamp": pl.Datetime("us"),
                                      "target": pl.Float64, "segment": pl.String})
    assert panel["series_id"].n_unique() == N
    assert set(panel["segment"].unique()) == {"a", "b", "c"}
    assert panel.select(pl.struct("series_id", "timestamp").is_unique().all()).item()


def test_same_seed_same_frame_other_seed_other_frame():
    assert_frame_equal(make_panel(30, 200, seed=7), make_panel(30, 200, seed=7))
    assert not make_panel(30, 200, seed=7).equals(make_panel(30, 200, seed=8))


def test_blank_targets_and_outliers(panel):
    assert 0.015 < panel["target"].null_count() / panel.height < 0.03
    assert panel["target"].is_nan().sum() == 0  # blanks are nulls, not NaN
    local = pl.col("target").rolling_median(25, center=True, min_samples=5).over("series_id")
    spikes = panel.select((pl.col("target") / local > 2.5).mean()).item()
    assert 0.0003 < spikes < 0.003  # ~0.1 % outliers (x3 to x6)


def test_ragged_like_a_catalogue(panel, per_series):
    start = panel["timestamp"].min()
    end = panel.filter(pl.col("timestamp").dt.minute() == 0)["timestamp"].max()
    on_hour = pl.col("first").dt.truncate("1h"), pl.col("last").dt.truncate("1h")
    shares = per_series.select(
        pl.col("starts_blank").mean().alias("starts_blank"), pl.col("off_phase").mean().alias("off_phase"),
        (on_hour[0] > start).mean().alias("late"), (on_hour[1] < end).mean().alias("early"),
        (pl.col("rows") < 500).mean().alias("short")).row(0, named=True)
    assert 0.02 <= shares["starts_blank"] < 0.10  # ~2 % start with a run of blanks (+ a blank first row by chance)
    assert 0.0025 <= shares["off_phase"] < 0.04  # ~1 % at :30
    assert 0.06 < shares["late"] < 0.16  # ~10 % start late (short series too)
    assert 0.02 < shares["early"] < 0.10  # ~5 % end early
    assert 0.0025 <= shares["short"] < 0.05  # ~2 % with a few hundred points
    short = per_series.filter(pl.col("rows") < 500)["rows"]
    assert short.min() >= 200 and short.max() <= 500
    assert per_series["off_phase"].equals(per_series["any_off_phase"])  # a whole series is off phase, or none of it
    assert per_series["segments"].max() == 1  # the covariate is fixed per series


def test_command_line_writes_parquet_or_csv(tmp_path, capsys):
    assert main(["5", "50", str(tmp_path / "p.parquet"), "--seed", "1"]) == 0
    assert main(["5", "50", str(tmp_path / "p.csv"), "--seed", "1"]) == 0
    assert "rows, 5 series ->" in capsys.readouterr().out
    assert_frame_equal(pl.read_parquet(tmp_path / "p.parquet"), make_panel(5, 50, seed=1))
    assert pl.read_csv(tmp_path / "p.csv").height == pl.read_parquet(tmp_path / "p.parquet").height


def test_streamed_panel_equals_the_whole_one(tmp_path, capsys):
    """``--stream`` writes a block of series at a time (for millions of series) and the same rows."""
    assert main(["1201", "40", str(tmp_path / "s.parquet"), "--seed", "2", "--stream"]) == 0  # 3 blocks, the last short
    assert "rows, 1201 series ->" in capsys.readouterr().out
    assert_frame_equal(pl.read_parquet(tmp_path / "s.parquet"), make_panel(1201, 40, seed=2))
