import subprocess
import sys

import polars as pl
import pytest

from tasks.shard import shard_of, split_series


def test_shards_are_stable_known_values_and_cover_every_id_once():
    ids = pl.Series([f"s{i}" for i in range(1000)])
    shards = shard_of(ids, 4)
    assert shards.dtype == pl.UInt32 and shards.min() >= 0 and shards.max() <= 3
    # fixed values: a change of hash breaks every staged or partially-run shard plan
    assert shard_of(pl.Series(["s0", "s1", "s2", "a/b"]), 7).to_list() == [0, 5, 3, 2]
    parts = split_series(pl.concat([ids, ids]), 4)  # repeats count once
    assert sorted(sum(parts, [])) == sorted(ids.to_list())
    assert min(len(p) for p in parts) > 200  # roughly balanced
    assert split_series(ids, 1) == [sorted(ids.to_list())]


def test_same_shards_in_another_process():
    code = ("import polars as pl; from tasks.shard import shard_of; "
            "print(shard_of(pl.Series([f's{i}' for i in range(50)]), 5).to_list())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}, cwd=".")
    assert eval(out.stdout) == shard_of(pl.Series([f"s{i}" for i in range(50)]), 5).to_list()


def test_numeric_ids_hash_as_their_text_and_bad_counts_fail():
    assert shard_of(pl.Series([12, 13]), 3).to_list() == shard_of(pl.Series(["12", "13"]), 3).to_list()
    with pytest.raises(ValueError):
        shard_of(pl.Series(["a"]), 0)


