"""Stable shards of a catalogue: which shard scores which series.

A series' shard is ``blake2b(series_id, 8 bytes, key="nightcast-shard") mod n_shards``:
a documented, standardised hash (RFC 7693), the same in every process, Python and
polars version and on every machine of a cluster. polars' own ``hash`` is not used:
its docs promise stability only within one polars version, and the workers of a
cluster need not run the version the planner ran.
"""

from __future__ import annotations

import hashlib
import itertools
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


def task_groups(sizes: list[int], slots: int, max_series: int) -> list[list[int]]:
    """Which shards each scoring task takes: positions into ``sizes`` (each shard's series count), in
    runs of consecutive shards.

    The layout's shard count is a storage decision made when the data lands; how many tasks a run
    has is a compute one, made when it starts. A task holds no more than ``max_series`` series (a task
    holds its series' scoring span in memory; a shard bigger than that is a task of its own, never
    split), there is at least one task per ``slots`` (worker threads that run at once) while there
    are shards to give them, and never more than one per shard; ``max_series`` 0 keeps one task per
    shard. Each task then pays Prefect's and the forecast's fixed costs once for its shards, not once
    per shard. Runs are filled up to the cap in shard order (the fewest runs under it), then the
    largest run is halved (by series) until every slot has one; the loops run over shards and tasks
    (tens to hundreds), never over series.
    """
    sizes = [int(s) for s in sizes]
    if max_series <= 0 or sum(sizes) == 0:
        return [[i] for i in range(len(sizes))]
    groups: list[list[int]] = []
    held = 0
    for i, size in enumerate(sizes):
        if not groups or held + size > max_series:
            groups.append([])
            held = 0
        groups[-1].append(i)
        held += size
    want = min(len(sizes), max(1, slots))
    while len(groups) < want:  # a slot without a task: halve the largest run that has two shards
        k = max((j for j in range(len(groups)) if len(groups[j]) > 1), key=lambda j: sum(sizes[i] for i in groups[j]))
        g = groups[k]
        held = list(itertools.accumulate(sizes[i] for i in g[:-1]))  # series before each possible cut
        half = (held[-1] + sizes[g[-1]]) / 2
        cut = 1 + min(range(len(held)), key=lambda p: abs(held[p] - half))  # the most even halves
        groups[k:k + 1] = [g[:cut], g[cut:]]
    return groups


def _by_shard(ids: pl.Series, shards: pl.Series, n_shards: int) -> list[list[str]]:
    frame = pl.DataFrame({"series_id": ids.cast(pl.String), "shard": shards}).unique().sort("series_id")
    groups = dict(frame.group_by("shard").agg("series_id").iter_rows())
    return [groups.get(k, []) for k in range(n_shards)]


def write_shard_layout(uri: str, out: str, n_shards: int, series_col: str = "series_id") -> dict:
    """Rewrite the input at ``uri`` as hive-partitioned Parquet, ``<out>/nshards=N/shard=K/*.parquet``,
    each series in the files of its shard (``shard_of``), rows in input order.

    A sharded run with ``N`` shards then opens only its own shard's files (``load_observations``
    filters on the partition keys, so polars prunes the others before reading, locally or on S3).
    Columns keep their names and, for CSV, their text, so validation still sees every value as
    written. Streams: the id column is read twice (checks, then the distinct ids, hashed once each),
    then the rows flow from the input to their shard's files in batches, so memory follows the
    distinct ids and polars' batches, not the input (a 1,000,000-series input of 194 M rows was
    killed at 24 GB when this collected and sorted it whole). Run it when the data lands, or write
    this layout from the pipeline that produces the data (the hash is documented above). ``out`` must
    be new or empty, so that two shard counts never mix in one layout.
    """
    from nightcast.tasks.data.ingest import SHARD_COLUMNS, IngestError, scan_as_written, storage_options
    from nightcast.tasks.ops.storage import open_store

    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    remote = out.startswith("s3://")
    if (open_store(out).list("") if remote
            else Path(out).expanduser().exists() and any(Path(out).expanduser().iterdir())):
        raise IngestError(f"{out} already holds files; partition into a new directory")
    with scan_as_written(uri) as scan:
        schema = scan.collect_schema()
        if series_col not in schema:
            raise IngestError(f"missing column {series_col!r} in {uri}; found {schema.names()}. "
                              "Name the id column with --series-col.")
        text = pl.col(series_col).cast(pl.String)
        blank = text.str.strip_chars().fill_null("") == ""
        rows, n_blank = scan.select(pl.len(), blank.sum()).collect().row(0)  # streams (arg_true would not)
        if n_blank:
            first = scan.with_row_index("row").filter(blank).head(5).select("row").collect().to_series()
            raise IngestError(f"{n_blank} row(s) of {uri} have no {series_col!r} (first input rows, 0-based: "
                              f"{first.to_list()}); no shard can hold them: drop or fix them first")
        ids = scan.select(text.unique()).collect().to_series()
        shards = shard_of(ids, n_shards)
        # each row's shard from a join with the (id, shard) table: streams in ~1 GB at 1 M ids, where
        # replace_strict with the same table held 16.5 GB; the input's own nshards/shard (a layout being
        # re-partitioned) are replaced
        key = "__nightcast_shard_key"
        table = pl.DataFrame({key: ids, "shard": shards})
        (scan.drop([c for c in SHARD_COLUMNS if c in schema])
         .with_columns(text.alias(key), pl.lit(n_shards, dtype=pl.UInt32).alias("nshards"))
         .join(table.lazy(), on=key, how="left", maintain_order="left").drop(key)
         .sink_parquet(pl.PartitionBy(out.rstrip("/"), key=list(SHARD_COLUMNS), include_key=False),
                       mkdir=not remote, storage_options=storage_options() if remote else None))
    return {"rows": rows, "series": ids.len(), "shards": shards.n_unique(), "out": out}
