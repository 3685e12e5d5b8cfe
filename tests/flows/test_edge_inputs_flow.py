"""One small ragged CSV panel with every broken-input case at once, retrained and scored by the real
flows: every good series is forecast, on its own phase, and the broken ones are named."""

import datetime as dt
import json

import numpy as np
import polars as pl
import pytest

from nightcast.flows.retrain import retrain_flow
from nightcast.flows.score import score_flow
from nightcast.schemas.params import ScoreParams
from nightcast.tasks.serving.score import read_forecasts
from nightcast.tasks.ops.storage import open_store
from tests.conftest import fast_params

pytestmark = pytest.mark.usefixtures("prefect_harness")

T0 = dt.datetime(2024, 1, 1)
N = 24 * 14  # two weeks of hours


def _series(sid: str, n: int = N, start: dt.datetime = T0, fmt: str = "%Y-%m-%d %H:%M:%S",
            seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    y = 20 + 5 * np.sin(np.arange(n) * 2 * np.pi / 24) + rng.normal(0, 0.3, n)
    return pl.DataFrame({"series_id": sid,
                         "timestamp": [(start + dt.timedelta(hours=i)).strftime(fmt) for i in range(n)],
                         "target": [f"{v:.3f}" for v in y]})


def _set(frame: pl.DataFrame, rows: list[int], value: str | None) -> pl.DataFrame:
    at = pl.int_range(pl.len()).is_in(rows)
    return frame.with_columns(pl.when(at).then(pl.lit(value, pl.String)).otherwise("target").alias("target"))


def _panel() -> pl.DataFrame:
    end = T0 + dt.timedelta(hours=N - 1)
    return pl.concat([
        _series("odd_format", 12, fmt="%d.%m.%Y %H:%M"),  # sorted first, in a format nobody else uses
        *(_series(f"good_{i}", seed=i) for i in range(3)),
        _set(_series("lead_blank", seed=4), list(range(5)), None),  # first targets blank
        _set(_series("trail_blank", seed=5), [N - 2, N - 1], None),
        _series("half_past", start=T0 + dt.timedelta(minutes=30), seed=6),  # off the others' phase
        _set(_series("all_blank", 40), list(range(40)), None),
        _series("one_row", 1, start=end, seed=7),
        _set(_series("markers", seed=8), [30, 31, 200], "NaN").pipe(_set, [100], "NA"),
        _set(_series("inf_row", seed=9), [150], "inf"),
        _series("zoned", start=T0 + dt.timedelta(hours=1), fmt="%Y-%m-%dT%H:%M:%S+01:00", seed=10),  # UTC+1
        _set(_series("words", 12), list(range(12)), "abc"),  # every target text
    ])


def test_a_ragged_panel_with_every_broken_case_retrains_scores_and_names_the_broken(tmp_path):
    path = tmp_path / "panel.csv"
    _panel().write_csv(path)
    store = str(tmp_path / "store")
    out = retrain_flow(fast_params(str(path)), store=store)
    c = out["cleaning"]
    assert c["leading_blank_series"] == {"lead_blank": 5} and c["trailing_blank_series"] == {"trail_blank": 2}
    assert c["empty_series"] == ["all_blank"] and c["off_grid_rows_dropped"] == 0
    v = c["validation"]
    assert v["series_every_row_quarantined"] == ["odd_format", "words"]
    assert v["targets_missing_marker"] == 4
    assert v["timestamps_with_offset"] == N
    assert out["quarantined_rows"] == 12 + 12 + 1  # odd_format, words, the inf
    manifest = json.loads(open_store(store).read_bytes(f"models/lstm/versions/{out['version']}/manifest.json"))
    assert manifest["cleaning"]["validation"] == v
    assert manifest["cleaning"]["leading_blank_series"] == {"lead_blank": 5}

    as_of = dt.date(2024, 1, 14)
    scored = score_flow(ScoreParams(data=str(path), as_of=as_of), store=store)
    frame = read_forecasts(open_store(store), "lstm", as_of)
    good = {"good_0", "good_1", "good_2", "lead_blank", "trail_blank", "half_past", "one_row", "markers",
            "inf_row", "zoned"}
    assert set(frame["series_id"]) == good and frame.height == 6 * len(good)
    assert set(scored["skipped"]) == {"all_blank"}
    first = dict(frame.group_by("series_id").agg(pl.col("timestamp").min()).iter_rows())
    day = dt.datetime(2024, 1, 15)
    assert first["half_past"] == day + dt.timedelta(minutes=30)  # forecast on its own phase
    assert first["zoned"] == first["good_0"] == first["one_row"] == day  # +01:00 read as UTC
    written = f"{store}/forecasts/model=lstm/as_of={as_of}/forecasts.parquet"
    assert pl.read_parquet_metadata(written)["nightcast.timestamps"] == "UTC"  # what the timestamps are
    assert first["trail_blank"] == day - dt.timedelta(hours=2)  # from its last observed value
