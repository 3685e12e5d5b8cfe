"""The sharded run's assemble writes the partition a slice of series at a time, sorted as a whole-frame sort."""

import datetime as dt

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from nightcast.tasks.ops.storage import LocalStore
from nightcast.tasks.serving.score import TIMESTAMPS_META, forecasts_key, write_forecasts, write_forecasts_sorted


def _forecasts(n: int, horizon: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    ids = np.repeat([f"s{i:03d}" for i in range(n)], horizon)
    steps = np.tile(np.arange(1, horizon + 1, dtype=np.int32), n)
    value = rng.normal(size=n * horizon)
    frame = pl.DataFrame({"series_id": ids, "timestamp": [dt.datetime(2024, 1, 1) + dt.timedelta(hours=int(h))
                                                          for h in steps],
                          "horizon": steps, "forecast": value, "lower": value - 1, "upper": value + 1,
                          "method": "combination", "model": "m", "model_version": "v1",
                          "as_of": dt.date(2024, 1, 1)})
    return frame.sample(fraction=1.0, shuffle=True, seed=seed)  # parts arrive in no order


def test_sorted_in_slices_equals_one_sort_and_replaces_the_partition(tmp_path):
    store = LocalStore(tmp_path)
    frame = _forecasts(50, 4)
    as_of = dt.date(2024, 1, 1)
    store.write_bytes(forecasts_key("m", as_of).replace("forecasts.parquet", "old.parquet"), b"left by a crash")
    key, rows = write_forecasts_sorted(store, frame.lazy(), "m", as_of, "UTC", rows_per_slice=30)
    assert rows == 200 and store.list("forecasts/") == [key]
    written = pl.read_parquet(tmp_path / key)
    assert written.equals(frame.sort("series_id", "horizon"))
    assert pq.ParquetFile(tmp_path / key).num_row_groups == 7  # ceil(200 / 30) slices, each appended on its own
    meta = pl.read_parquet_metadata(tmp_path / key)
    assert meta["nightcast.model_version"] == "v1" and meta[TIMESTAMPS_META] == "UTC"


def test_the_sliced_writer_writes_what_the_one_piece_writer_writes(tmp_path):
    frame = _forecasts(7, 3, seed=1)
    one, sliced = LocalStore(tmp_path / "one"), LocalStore(tmp_path / "sliced")
    key = write_forecasts(one, frame.sort("series_id", "horizon"), "m", dt.date(2024, 1, 1), "local dates")
    key2, _ = write_forecasts_sorted(sliced, frame.lazy(), "m", dt.date(2024, 1, 1), "local dates",
                                     rows_per_slice=4)
    assert key == key2
    assert pl.read_parquet(tmp_path / "one" / key).equals(pl.read_parquet(tmp_path / "sliced" / key2))
    meta = {k: v for k, v in pl.read_parquet_metadata(tmp_path / "sliced" / key2).items() if k.startswith("nightcast")}
    assert meta == {k: v for k, v in pl.read_parquet_metadata(tmp_path / "one" / key).items()
                    if k.startswith("nightcast")}


def test_a_slice_size_below_one_is_refused(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="rows_per_slice must be at least 1"):
        write_forecasts_sorted(LocalStore(tmp_path), _forecasts(2, 2).lazy(), "m", dt.date(2024, 1, 1),
                               rows_per_slice=0)
