"""Stable shards of a catalogue: which shard scores which series.

A series' shard is ``blake2b(series_id, 8 bytes, key="nightcast-shard") mod n_shards``:
a documented, standardised hash (RFC 7693), the same in every process, Python and
polars version and on every machine of a cluster. polars' own ``hash`` is not used:
its docs promise stability only within one polars version, and the workers of a
cluster need not run the version the planner ran.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import itertools
import json
from pathlib import Path
from typing import Callable

import polars as pl

_KEY = b"nightcast-shard"


def _hash64(series_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(series_id.encode(), digest_size=8, key=_KEY).digest(), "big")


def hash64s(ids: pl.Series) -> list[int]:
    """The stable 64-bit hash of each id (text), in order: what shards and samples are cut by."""
    return [_hash64(s) for s in ids.cast(pl.String).to_list()]


def _by_hash(series_ids: pl.Series, rule: Callable[[int], int], name: str) -> pl.Series:
    """``rule`` of each id's stable hash (UInt32), every distinct id hashed once."""
    ids = series_ids.cast(pl.String)
    unique = ids.unique()
    values = pl.Series([rule(h) for h in hash64s(unique)], dtype=pl.UInt32)
    return ids.replace_strict(unique, values, return_dtype=pl.UInt32).alias(name)


def shard_of(series_ids: pl.Series, n_shards: int) -> pl.Series:
    """The shard (0 .. n_shards-1, UInt32) of every id; each distinct id is hashed once."""
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    return _by_hash(series_ids, lambda h: h % n_shards, "shard")


SAMPLE_BUCKETS = 1000
"""Buckets a share of series is counted in (``sample_bucket_of``), when the input is not in the shard layout."""


def sample_bucket_of(series_ids: pl.Series) -> pl.Series:
    """The sample bucket (0 .. SAMPLE_BUCKETS-1, UInt32) of every id: the stable hash's high 32 bits modulo
    ``SAMPLE_BUCKETS``. A share of the series is the ids whose bucket is below ``buckets_kept(share)``:
    the same series whatever the shard count of the run, sharded or not, and about that share of every shard
    (the shard is the whole hash modulo the shard count, which its high bits alone do not decide)."""
    return _by_hash(series_ids, lambda h: (h >> 32) % SAMPLE_BUCKETS, "bucket")


def buckets_kept(share: float, n: int = SAMPLE_BUCKETS) -> int:
    """How many of ``n`` buckets (sample buckets, or a layout's shards) a ``share`` of the series keeps: the
    first ``round(share * n)``, at least one."""
    return max(1, round(share * n))


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
            raise _other_count(uri, counts, n_shards)
        wrong = ids.with_columns(shards.cast(pl.Int64).alias("expected")).filter(pl.col("shard") != pl.col("expected"))
        if wrong.height:
            raise _misplaced(uri, wrong.height, wrong.select("series_id", "shard", "expected").head(5).rows())
    return _by_shard(ids["series_id"], shards, n_shards)


LAYOUT_MANIFEST = "_nightcast_layout.json"
"""What ``nightcast partition`` writes last at the layout's root: the shard count, the hash and each shard's
series count, so that a sharded run plans from it instead of reading every id (``layout_plan``). Readers of
the data ignore it (not a Parquet file)."""
_HASH_NAME = "blake2b-64/nightcast-shard"


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """Which shards a sharded run reads, and how big each is. ``groups[k]``: shard ``k``'s ids, or None when
    the run reads the shard's folder whole (the layout's manifest planned it: each task checks that the ids
    it read belong in its folder, ``check_shard``); ``sizes[k]``: its series count (the manifest's count at
    partition time when ``groups`` is None: it sizes tasks only); ``todo``: the shards to read."""

    groups: list[pl.Series | None]
    sizes: list[int]
    todo: list[int]
    series: int

    @property
    def from_manifest(self) -> bool:
        """Planned from the layout's manifest (no id was read), not from the ids."""
        return all(g is None for g in self.groups)


def _layout_root(uri: str) -> str | None:
    """The layout's root when ``uri`` names a directory (local, or an s3:// prefix ending in ``/``)."""
    if uri.startswith("s3://"):
        return uri if uri.endswith("/") else None
    return uri if Path(uri).expanduser().is_dir() else None


def layout_manifest(uri: str) -> list[int] | None:
    """Each shard's series count when ``nightcast partition`` wrote the layout at ``uri`` (its manifest),
    else None (no manifest: another writer's layout, a file, CSV)."""
    from nightcast.tasks.ops.storage import open_store

    root = _layout_root(uri)
    if root is None:
        return None
    store = open_store(root)
    if not store.exists(LAYOUT_MANIFEST):
        return None
    try:
        manifest = json.loads(store.read_bytes(LAYOUT_MANIFEST))
        counts, series = int(manifest["nshards"]), [int(x) for x in manifest["series_per_shard"]]
        if manifest["hash"] != _HASH_NAME or len(series) != counts:
            raise ValueError(f"hash {manifest['hash']!r}, {len(series)} counts for {counts} shards")
    except (ValueError, KeyError, TypeError) as exc:
        raise ShardLayoutError(f"{store.uri(LAYOUT_MANIFEST)} is not a layout manifest this version reads ({exc}): "
                               "write the layout again with `nightcast partition`, or delete the file to plan "
                               "from the ids") from exc
    return series


def layout_plan(uri: str, n_shards: int) -> ShardPlan | None:
    """The plan of a run with ``n_shards`` shards on a layout ``nightcast partition`` wrote, from its manifest
    and a listing of its shard folders: no id is read in the flow's process. None when ``uri`` has no
    manifest (another writer's layout, a file, CSV): the run then reads the id column (``plan_shards``).
    Every shard folder that holds a Parquet file is read, even one the manifest counted empty (files may have
    landed in it since); a layout written for another count, or with Parquet files outside the folders its
    manifest describes, is refused as ``plan_shards`` refuses ids in the wrong folder."""
    from nightcast.tasks.ops.storage import open_store

    series = layout_manifest(uri)
    if series is None:
        return None
    counts = len(series)
    if counts != n_shards:
        raise _other_count(uri, [counts], n_shards)
    present: set[int] = set()
    for key in open_store(_layout_root(uri)).list(""):
        if not key.endswith(".parquet"):  # the manifest, folder markers, _SUCCESS: not data (as ingest reads it)
            continue
        parts = key.split("/")
        count = parts[0].removeprefix("nshards=") if len(parts) > 2 else ""
        shard = parts[1].removeprefix("shard=") if len(parts) > 2 else ""
        if count != str(n_shards) or not shard.isdigit() or int(shard) >= n_shards:
            raise ShardLayoutError(
                f"{uri} holds {key!r}, outside the nshards={n_shards}/shard=0..{n_shards - 1}/ folders its manifest "
                "describes: a run would not read it. Move it into its series' shard folder, or write the layout "
                "again with `nightcast partition`")
        present.add(int(shard))
    if not present:
        raise ShardLayoutError(f"{uri} has a layout manifest but no Parquet file in its shard folders")
    return ShardPlan([None] * n_shards, series, sorted(present), sum(series))


def write_layout_manifest(out: str, n_shards: int, shards: pl.Series, rows: int) -> None:
    """The manifest ``layout_plan`` reads, written last (one object: a layout without it is planned from
    its ids)."""
    from nightcast.tasks.ops.storage import open_store

    per = shards.value_counts().sort("shard")
    series = [0] * n_shards
    for k, n in per.iter_rows():  # one row per non-empty shard: at most n_shards
        series[int(k)] = int(n)
    body = {"nshards": n_shards, "hash": _HASH_NAME, "series_per_shard": series, "series": int(shards.len()),
            "rows": int(rows), "written": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    open_store(out).write_bytes(LAYOUT_MANIFEST, json.dumps(body).encode())


def check_shard(ids: pl.Series, shard: tuple[int, int], uri: str = "the input") -> None:
    """Raise ``ShardLayoutError`` when an id read from shard ``shard[0]``'s folder belongs in another
    (``plan_shards``' check, made by the task that read the folder whole: each distinct id hashed once)."""
    k, n = shard
    ids = ids.cast(pl.String).drop_nulls().unique()  # a row without an id is validation's to quarantine
    expected = shard_of(ids, n)
    wrong = ids.filter(expected != k)
    if wrong.len():
        raise _misplaced(uri, wrong.len(), list(zip(wrong.head(5).to_list(), [k] * 5,
                                                    expected.filter(expected != k).head(5).to_list())))


def _other_count(uri: str, counts: list[int], n_shards: int) -> ShardLayoutError:
    return ShardLayoutError(
        f"{uri} is in the shard layout for {counts} shard(s), and this run asks for {n_shards}: run with "
        f"--shards {counts[0]}, or write the layout again with `nightcast partition --shards {n_shards}`")


def _misplaced(uri: str, n: int, examples: list[tuple[str, int, int]]) -> ShardLayoutError:
    """The error for ``n`` ids found in another shard's folder: (id, folder, where the hash puts it) examples."""
    sample = "; ".join(f"{sid!r} in shard={k}, belongs in shard={e}" for sid, k, e in examples)
    return ShardLayoutError(
        f"{n} series of {uri} sit in another shard's folder than nightcast's hash puts them (was the layout "
        f"written with another hash?): {sample}. Write it with `nightcast partition`, or use the hash "
        "documented in tasks/serving/shard.py")


def plan_run(uri: str, n_shards: int, list_ids: Callable[[], pl.DataFrame]) -> ShardPlan:
    """A sharded run's plan: from the layout's manifest when ``nightcast partition`` wrote one (no id is
    read), else from the series ids ``list_ids`` reads (``load_series_ids``: a scan of the id column). Planned
    from the ids, the first shard to read also reads the rows that have no id (a null among its ids), which
    its validation quarantines as a whole read does; a layout cannot hold such rows."""
    plan = layout_plan(uri, n_shards)
    if plan is not None:
        return plan
    ids = list_ids()
    # each shard's ids as one Series, not a list: Prefect walks every element of a list parameter when it
    # submits a task (and again on the worker), ~0.2 s per 10,000-id shard in the flow's one thread
    groups = [pl.Series(g, dtype=pl.String) for g in plan_shards(ids, n_shards, uri)]
    todo = [k for k, g in enumerate(groups) if len(g)]
    sizes = [len(g) for g in groups]
    if todo:
        groups[todo[0]] = pl.concat([groups[todo[0]], pl.Series([None], dtype=pl.String)])
    return ShardPlan(groups, sizes, todo, ids.height)


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
    write_layout_manifest(out, n_shards, shards, rows)
    return {"rows": rows, "series": ids.len(), "shards": shards.n_unique(), "out": out}
