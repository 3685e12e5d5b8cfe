"""Stable shards of a catalogue: which shard scores which series.

A series' shard is ``blake2b(series_id, 8 bytes, key="nightcast-shard") mod n_shards``:
a documented, standardised hash (RFC 7693), the same in every process, Python and
polars version and on every machine of a cluster. polars' own ``hash`` is not used:
its docs promise stability only within one polars version, and the workers of a
cluster need not run the version the planner ran.
"""

from __future__ import annotations

import hashlib

import polars as pl

_KEY = b"nightcast-shard"


def _hash64(series_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(series_id.encode(), digest_size=8, key=_KEY).digest(), "big")


def shard_of(series_ids: pl.Series, n_shards: int) -> pl.Series:
    """The shard (0 .. n_shards-1, UInt32) of every id; each distinct id is hashed once."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    ids = series_ids.cast(pl.String)
    unique = ids.unique()
    shards = pl.Series([_hash64(s) % n_shards for s in unique.to_list()], dtype=pl.UInt32)
    return ids.replace_strict(unique, shards, return_dtype=pl.UInt32).alias("shard")


def split_series(series_ids: pl.Series, n_shards: int) -> list[list[str]]:
    """The distinct ids of each shard, sorted: ``out[k]`` is shard ``k`` (possibly empty)."""
    ids = series_ids.cast(pl.String).unique().sort()
    frame = pl.DataFrame({"series_id": ids, "shard": shard_of(ids, n_shards)})
    groups = dict(frame.group_by("shard").agg("series_id").iter_rows())
    return [groups.get(k, []) for k in range(n_shards)]
