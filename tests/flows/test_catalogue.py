"""A ragged catalogue end to end: 2,000 series with blanks, late starts, early ends, off-phase
timestamps and short histories; every scoreable series is forecast and the reports say why not."""

import datetime as dt
import sys
from pathlib import Path

import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from nightcast.flows.retrain import retrain_flow  # noqa: E402
from nightcast.flows.score import score_flow  # noqa: E402
from nightcast.schemas.params import ModelConfig, RetrainParams, ScoreParams, TrainConfig, WindowConfig  # noqa: E402
from nightcast.tasks.serving.score import read_forecasts  # noqa: E402
from nightcast.tasks.ops.storage import open_store  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def test_a_ragged_catalogue_of_2000_series_retrains_and_scores_every_scoreable_series(tmp_path):
    from panel import make_panel

    raw = make_panel(2000, 600, seed=7)
    path = tmp_path / "catalogue.parquet"
    raw.write_parquet(path)
    params = RetrainParams(data=str(path), window=WindowConfig(horizon=24),
                           model=ModelConfig(hidden_size=16), train=TrainConfig(max_steps=30, steps_per_epoch=15))
    store = str(tmp_path / "store")
    out = retrain_flow(params, store=store)
    assert out["comparison"]["new"] < out["comparison"]["seasonal_naive"], out["comparison"]  # earned, not given
    assert out["cleaning"]["leading_blanks_dropped"] > 0 and out["cleaning"]["off_grid_rows_dropped"] == 0
    observed = raw.drop_nulls("target")
    last = observed["timestamp"].max()
    as_of = last.date()
    scored = score_flow(ScoreParams(data=str(path), as_of=as_of), store=store)
    frame = read_forecasts(open_store(store), "lstm", as_of)
    # by hand: a series is stale when its last observation is more than max_gap (3) hours before the newest
    ends = observed.group_by("series_id").agg(pl.col("timestamp").max().alias("end"))
    stale = set(ends.filter(pl.col("end") < last - dt.timedelta(hours=3, minutes=30))["series_id"])
    fresh = set(ends["series_id"]) - stale
    assert 0 < len(stale) < len(fresh)
    assert set(frame["series_id"]) == fresh - set(scored["skipped"])
    assert set(scored["skipped"]) >= stale
    assert all(why.startswith(("stale", "its last season")) for why in scored["skipped"].values())
    assert len(set(scored["skipped"]) - stale) < 0.01 * len(fresh)  # only a long gap in the last season
    assert scored["series"] == frame["series_id"].n_unique() and frame.height == 24 * scored["series"]
    # off-phase series are forecast on their own phase
    half = set(observed.filter(pl.col("timestamp").dt.minute() == 30)["series_id"])
    assert half and (frame.filter(pl.col("series_id").is_in(list(half)))["timestamp"].dt.minute() == 30).all()
    assert sum(scored["methods"].values()) == scored["series"]
