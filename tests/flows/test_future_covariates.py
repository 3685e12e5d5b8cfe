"""Known-future covariates at scoring: the rows after the origin carry them, the forecast follows them, and a
missing one is a clear error, not a silent fill."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from nightcast.flows.retrain import retrain_flow
from nightcast.flows.score import score_flow
from nightcast.schemas.params import ScoreParams, WindowConfig
from nightcast.tasks.serving.score import read_forecasts
from nightcast.tasks.ops.storage import open_store
from tests.conftest import fast_params

pytestmark = pytest.mark.usefixtures("prefect_harness")

AS_OF = dt.date(2026, 9, 14)


def _future(sample_raw: pl.DataFrame, promo: str, steps: int = 6) -> pl.DataFrame:
    """Rows after the sample's end (2026-09-14 23:00): no target yet, the promotion plan known."""
    ids = sample_raw["series_id"].unique().sort()
    stamps = [(dt.datetime(2026, 9, 15) + dt.timedelta(hours=h)).strftime("%Y-%m-%d %H:%M:%S") for h in range(steps)]
    return pl.DataFrame({"series_id": [s for s in ids for _ in stamps], "timestamp": stamps * len(ids),
                         "target": None, "temperature": None, "promo": promo},
                        schema={c: pl.String for c in sample_raw.columns})


def test_scoring_follows_the_known_future_covariates_it_is_given(tmp_path, sample_raw):
    train = tmp_path / "train.csv"
    sample_raw.write_csv(train)
    store = str(tmp_path / "store")
    params = fast_params(str(train), window=WindowConfig(lookback=24, horizon=6, future_covariates=["promo"]))
    retrain_flow(params, store=store)
    served = {}
    for promo in ("on", "off"):
        path = tmp_path / f"plan-{promo}.csv"
        pl.concat([sample_raw, _future(sample_raw, promo)]).write_csv(path)
        out = score_flow(ScoreParams(data=str(path), as_of=AS_OF), store=store)
        served[promo] = read_forecasts(open_store(store), "lstm", AS_OF).sort("series_id", "horizon")
        assert out["series"] >= 2
    assert served["on"]["timestamp"].equals(served["off"]["timestamp"])
    assert served["on"]["timestamp"].min() == dt.datetime(2026, 9, 15)
    # the same history, another promotion plan: another forecast
    assert (served["on"]["forecast"] - served["off"]["forecast"]).abs().max() > 1e-6

    short = tmp_path / "plan-short.csv"
    pl.concat([sample_raw, _future(sample_raw, "on", steps=5)]).write_csv(short)
    with pytest.raises(Exception, match=r"known-future covariates \['promo'\] are missing for \d+ forecast step"
                                        r".*at 2026-09-15 05:00:00; add those rows"):
        score_flow(ScoreParams(data=str(short), as_of=AS_OF), store=store)


def test_history_then_future_rows_are_gathered_in_series_then_time_order():
    from nightcast.tasks.serving.score import _then_future

    hist = pl.DataFrame({"series_id": ["a", "a", "a", "b", "c", "c"], "timestamp": [1, 2, 3, 5, 1, 2], "target": [1.0] * 6})
    fut = pl.DataFrame({"series_id": ["a", "a", "b", "b", "c", "c"], "timestamp": [4, 5, 6, 7, 3, 4]})
    out = _then_future(hist, fut, 2)
    assert out.select("series_id", "timestamp").equals(
        pl.concat([hist, fut], how="diagonal_relaxed").sort("series_id", "timestamp").select("series_id", "timestamp"))
    assert out.filter(pl.col("timestamp") >= 4, pl.col("series_id") == "a")["target"].is_null().all()  # a's future
    with pytest.raises(ValueError, match="not 2 for each of the 3 series"):
        _then_future(hist, fut.reverse(), 2)  # another series order is refused, not silently misplaced
