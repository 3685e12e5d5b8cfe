"""Stable shards of a catalogue: which shard scores which series.

A series' shard is ``blake2b(series_id, 8 bytes, key="nightcast-shard") mod n_shards``:
a documented, standardised hash (RFC 7693), the same in every process, Python and
polars version and on every machine of a cluster. polars' own ``hash`` is not used:
its docs promise stability only within one polars version, and the workers of a
cluster need not run the version the planner ran.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

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


class ShardLayoutError(ValueError):
    """Input in the shard layout that does not match the run: another shard count, or ids in the
    wrong folder (a layout written with another hash). Reading it as it is would lose series."""


def plan_shards(ids: pl.DataFrame, n_shards: int, uri: str = "the input") -> list[list[str]]:
    """The distinct ids of each shard, sorted (``out[k]`` is shard ``k``, possibly empty), from the planner's
    ids (``load_series_ids``), after checking that input in the
    shard layout was written for ``n_shards`` shards with this hash: each shard reads only its own
    folder, so an id in another folder would never be read."""
    shards = shard_of(ids["series_id"], n_shards)  # each id hashed once, for the check and the split
    if "nshards" in ids.columns:
        counts = sorted(ids["nshards"].unique().to_list())
        if counts != [n_shards]:
            raise ShardLayoutError(
                f"{uri} is in the shard layout for {counts} shard(s), and this run asks for {n_shards}: run "
                f"with --shards {counts[0]}, or write the layout again with `nightcast partition --shards {n_shards}`")
        wrong = ids.with_columns(shards.cast(pl.Int64).alias("expected")).filter(pl.col("shard") != pl.col("expected"))
        if wrong.height:
            sample = "; ".join(f"{r['series_id']!r} in shard={r['shard']}, belongs in shard={r['expected']}"
                               for r in wrong.head(5).iter_rows(named=True))
            raise ShardLayoutError(
                f"{wrong.height} series of {uri} sit in another shard's folder than nightcast's hash puts them "
                f"(was the layout written with another hash?): {sample}. Write it with `nightcast partition`, "
                "or use the hash documented in tasks/serving/shard.py")
    return _by_shard(ids["series_id"], shards, n_shards)


def _by_shard(ids: pl.Series, shards: pl.Series, n_shards: int) -> list[list[str]]:
    frame = pl.DataFrame({"series_id": ids.cast(pl.String), "shard": shards}).unique().sort("series_id")
    groups = dict(frame.group_by("shard").agg("series_id").iter_rows())
    return [groups.get(k, []) for k in range(n_shards)]


def write_shard_layout(uri: str, out: str, n_shards: int, series_col: str = "series_id") -> dict:
    """Rewrite the input at ``uri`` as hive-partitioned Parquet, ``<out>/nshards=N/shard=K/*.parquet``,
    each series in the file of its shard (``shard_of``), rows sorted by id.

    A sharded run with ``N`` shards then opens only its own shard's files (``load_observations``
    filters on the partition keys, so polars prunes the others before reading, locally or on S3).
    Columns keep their names and, for CSV, their text, so validation still sees every value as
    written. Reads the whole input once: run it when the data lands, or write this layout from the
    pipeline that produces the data (the hash is documented above). ``out`` must be new or empty,
    so that two shard counts never mix in one layout.
    """
    from nightcast.tasks.data.ingest import IngestError, read_as_written, storage_options
    from nightcast.tasks.ops.storage import open_store

    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    if (open_store(out).list("") if out.startswith("s3://")
            else Path(out).expanduser().exists() and any(Path(out).expanduser().iterdir())):
        raise IngestError(f"{out} already holds files; partition into a new directory")
    frame = read_as_written(uri)
    if series_col not in frame.columns:
        raise IngestError(f"missing column {series_col!r} in {uri}; found {frame.columns}. "
                          "Name the id column with --series-col.")
    ids = frame[series_col].cast(pl.String).str.strip_chars()
    empty = (ids.is_null() | (ids == "")).arg_true()
    if empty.len():
        raise IngestError(f"{empty.len()} row(s) of {uri} have no {series_col!r} (first input rows, 0-based: "
                          f"{empty.head(5).to_list()}); no shard can hold them: drop or fix them first")
    frame = frame.with_columns(pl.lit(n_shards, dtype=pl.UInt32).alias("nshards"),
                               shard_of(frame[series_col], n_shards).alias("shard")).sort(series_col)
    frame.write_parquet(out.rstrip("/"), partition_by=["nshards", "shard"],
                        storage_options=storage_options() if out.startswith("s3://") else None)
    return {"rows": frame.height, "series": frame[series_col].n_unique(), "shards": frame["shard"].n_unique(),
            "out": out}
