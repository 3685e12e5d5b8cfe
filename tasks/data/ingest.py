"""Read observations (CSV or Parquet; a file, a glob or a directory; local or s3://)."""

from __future__ import annotations

import contextlib
import datetime as dt
import glob as globlib
import os
import re
from pathlib import Path
from typing import Callable, Iterator

import polars as pl

from nightcast.schemas.params import SAMPLE_DATA, ColumnMap


class IngestError(RuntimeError):
    """The input could not be read at all."""


def storage_options() -> dict[str, str] | None:
    """polars/object_store options from the standard ``AWS_*`` environment."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    opts = {"aws_region": os.environ.get("AWS_DEFAULT_REGION", os.environ.get("AWS_REGION", "us-east-1"))}
    if endpoint:
        opts["aws_endpoint_url"] = endpoint
        if endpoint.startswith("http://"):
            opts["aws_allow_http"] = "true"
    return opts


_CSV = (".csv", ".csv.gz")  # gzip is decompressed by polars' CSV reader
_PARQUET = (".parquet",)


def _kind(name: str) -> str | None:
    """"csv", "parquet" or None (neither) from a file name."""
    return "csv" if name.endswith(_CSV) else "parquet" if name.endswith(_PARQUET) else None


def _resolve(uri: str) -> tuple[list[str] | str, str]:
    """Return (source, format) for a file, a glob or a (hive-partitioned) directory."""
    if uri.startswith("s3://"):
        source: list[str] | str = uri.rstrip("/") + "/**/*.parquet" if uri.endswith("/") else uri
        name = source if isinstance(source, str) else source[0]
        return source, _kind(name) or "parquet"
    path = Path(uri).expanduser()
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*") if _kind(p.name) and p.is_file())
    elif any(ch in uri for ch in "*?["):
        files = sorted(globlib.glob(str(path), recursive=True))
    elif path.is_file():
        files = [str(path)]
    else:
        raise IngestError(f"input not found: {uri}")
    if not files:
        raise IngestError(f"no CSV or Parquet files under {uri}")
    kinds = {_kind(Path(f).name) for f in files}
    if len(kinds) > 1:
        raise IngestError(f"mixed file types under {uri}: {sorted(map(str, kinds))}")
    return files, kinds.pop() or "parquet"


SHARD_COLUMNS = ("nshards", "shard")
"""Hive partition keys of the shard layout ``nightcast partition`` writes (``<dir>/nshards=N/shard=K/``):
nightcast's own, never covariates."""


def sample_of(uri: str, columns: ColumnMap, share: float) -> tuple[list[str] | None, int, int]:
    """The series of a ``share`` of the input's series, and (kept, of) buckets: those whose bucket is below
    ``buckets_kept(share, n)``. On the shard layout the bucket is the shard folder and ``n`` the
    layout's shard count (the sample is whole shards, and only their files are read); elsewhere the bucket
    is the stable hash's (``nightcast.tasks.serving.shard.sample_bucket_of``). The same ids give
    the same sample on every machine and run (and the series a sharded retrain samples, ``in_sample``, whatever
    its shard count); a share that picks no series is an ``IngestError``. On a
    layout ``nightcast partition`` wrote, the ids are None: its manifest counts the series and no id is read
    (the sampled folders are read whole)."""
    from nightcast.tasks.serving.shard import SAMPLE_BUCKETS, buckets_kept, layout_manifest, sample_bucket_of

    per_shard = layout_manifest(uri)
    if per_shard is not None:
        n = len(per_shard)
        k = buckets_kept(share, n)
        if not sum(per_shard[:k]):
            _none_sampled(uri, share, sum(per_shard), k, n, True)
        return None, k, n
    ids = load_series_ids(uri, columns)
    counts = ids["nshards"].unique().to_list() if "nshards" in ids.columns else [SAMPLE_BUCKETS]
    if len(counts) != 1:
        raise IngestError(f"{uri} mixes shard layouts for {sorted(counts)} shards; write it again with "
                          "`nightcast partition`")
    n = int(counts[0])
    k = buckets_kept(share, n)
    # on the layout, the folders decide (as the shard filter on the rows does); elsewhere the hash
    buckets = ids["shard"] if "shard" in ids.columns else sample_bucket_of(ids["series_id"])
    picked = ids["series_id"].filter(buckets < k).unique().sort().to_list()
    if not picked:
        _none_sampled(uri, share, ids["series_id"].n_unique(), k, n, "shard" in ids.columns)
    return picked, k, n


def _none_sampled(uri: str, share: float, total: int, k: int, n: int, layout: bool) -> None:
    raise IngestError(f"a sample of {share:g} of the series of {uri} picks none of its {total} series ({k} of "
                      f"{n} hash buckets{', whole shards' if layout else ''}); give a larger share, or no sample")


def load_observations(uri: str, columns: ColumnMap = ColumnMap(), series: list[str] | pl.Series | None = None,
                      shard: tuple[int, int] | None = None, since: dt.datetime | None = None,
                      sample: float | None = None) -> pl.DataFrame:
    """Read the raw observations and rename the mapped columns to the canonical names.

    ``sample://`` is the bundled sample panel (the embedded default input). ``series``: read only
    the rows of these series ids (one shard): the filter is part of the lazy scan, so Parquet
    skips the row groups whose id statistics exclude them (and CSV drops rows while reading).
    ``shard=(k, n)``: on input in the shard layout with ``nshards=n``, only the files of
    ``shard=k`` are opened at all (hive partition pruning, local or S3). ``since`` (naive UTC): on
    Parquet with a typed timestamp column, only the rows from ``since`` on are read (the predicate
    sits in the scan: row groups whose timestamp statistics end before it are skipped), plus, for
    each series, one row with its newest older timestamp and nothing else (``older_rows``: what
    tells scoring a series exists and is stale). Other inputs are read whole. ``sample`` (0 < share < 1):
    only the series of ``sample_of`` (on the shard layout, only the sampled shards' files are opened).

    CSV is read as text so that a bad value becomes a reported row, not a
    failed read; typing happens in validation. Covariates keep their names.
    """
    sampled: tuple[int, int] | None = None
    if sample is not None and sample < 1:
        if series is not None:
            raise ValueError("load_observations: give series or sample, not both")
        series, k, n = sample_of(uri, columns, sample)
        sampled = (k, n)
    if uri == SAMPLE_DATA:
        from nightcast.tasks.data.sample import make_sample

        panel = make_sample()
        return _rename(panel.filter(_only(panel.schema, "series_id", series)) if series is not None else panel,
                       ColumnMap(), uri)

    def shard_rows(scan: pl.LazyFrame, schema: pl.Schema, fmt: str) -> pl.LazyFrame:
        layout = _is_layout(schema, fmt)
        if shard is not None and layout:
            scan = scan.filter((pl.col("nshards") == shard[1]) & (pl.col("shard") == shard[0]))
        if sampled is not None and layout:  # whole shards: the others' files are never opened
            scan = scan.filter((pl.col("nshards") == sampled[1]) & (pl.col("shard") < sampled[0]))
        elif sampled is not None and series is None:  # a manifest beside files that are not the layout
            raise IngestError(f"{uri} has a layout manifest but its files lack the nshards/shard folders: "
                              "write it again with `nightcast partition`")
        if series is not None and columns.series_col in schema:
            scan = scan.filter(_only(schema, columns.series_col, series))
        scan = scan.drop(SHARD_COLUMNS) if layout else scan
        return rows_since(scan, schema, columns, since)

    frame, fmt, source, opts = _read(uri, shard_rows)
    if frame.width == 0 or (frame.height == 0 and fmt == "csv" and frame.width <= 1):
        raise IngestError(f"{uri} is empty: no header and no rows")
    if fmt == "csv" and any(_DUPLICATED in c for c in frame.columns):
        _reject_repeated_header(source, opts, uri)
    # one buffer per column: a file read as many chunks (a Parquet row group each: 160 at 10,000 x 2,000) made
    # every later numpy view, filter and sort copy or walk chunk by chunk; one copy here costs less than those
    return _rename(frame, columns, uri).rechunk()


def _bound(when: dt.datetime, dtype: pl.DataType) -> pl.Expr:
    """``when`` (naive UTC) as a literal comparable with a column of ``dtype``."""
    if isinstance(dtype, pl.Date):
        return pl.lit(when.date())
    lit = pl.lit(when).cast(pl.Datetime(dtype.time_unit))
    return lit.dt.replace_time_zone("UTC").dt.convert_time_zone(dtype.time_zone) if dtype.time_zone else lit


def rows_since(scan: pl.LazyFrame, schema: pl.Schema, columns: ColumnMap, since: dt.datetime | None) -> pl.LazyFrame:
    """The rows from ``since`` on, and each series' newest older timestamp as a row of its own (other
    columns null: a gap, never a value), when the timestamp column is typed (Parquet); else every row."""
    ts, sid = columns.timestamp_col, columns.series_col
    dtype = schema.get(ts)
    if since is None or sid not in schema or not isinstance(dtype, (pl.Datetime, pl.Date)):
        return scan
    t = pl.col(ts)
    full = scan.collect_schema()
    older = (scan.filter(t < _bound(since, dtype)).group_by(sid).agg(t.max()).sort(sid)
             .select([pl.col(c) if c in (sid, ts) else pl.lit(None, dtype=full[c]).alias(c) for c in full.names()]))
    # each series' stub goes right before its own rows: input sorted by series and time (most exports) stays
    # so, and validation then needs no sort (a 3.2 M-row scoring span: 0.9 s); any other order is sorted there
    return older.merge_sorted(scan.filter(t >= _bound(since, dtype)), key=sid, maintain_order=True)


def newest_date(uri: str, columns: ColumnMap = ColumnMap()) -> dt.date | None:
    """The date of the newest timestamp, read from the timestamp column alone (Parquet statistics),
    when the input is Parquet with a typed timestamp; None otherwise (the caller reads the data)."""
    if uri == SAMPLE_DATA:
        return None

    def newest(scan: pl.LazyFrame, schema: pl.Schema, fmt: str) -> pl.LazyFrame:
        dtype = schema.get(columns.timestamp_col)
        if fmt != "parquet" or not isinstance(dtype, (pl.Datetime, pl.Date)):
            return scan.select(pl.lit(None, dtype=pl.Date).alias("d")).head(0)
        t = pl.col(columns.timestamp_col)
        t = t.dt.convert_time_zone("UTC") if isinstance(dtype, pl.Datetime) and dtype.time_zone else t
        return scan.select(t.max().dt.date().alias("d"))

    frame = _read(uri, newest)[0]
    return frame["d"][0] if frame.height else None


@contextlib.contextmanager
def _scanning(uri: str) -> Iterator[tuple[pl.LazyFrame, str, list[str] | str, dict[str, str] | None]]:
    """A lazy scan of ``uri`` (CSV as text, Parquet with hive partitions) with (format, source, options);
    read errors inside the block (collects and sinks of the scan) become ``IngestError`` naming the input."""
    source, fmt = _resolve(uri)
    opts = storage_options() if uri.startswith("s3://") else None
    try:
        if fmt == "csv":
            scan = pl.scan_csv(source, infer_schema=False, storage_options=opts)
        else:
            scan = pl.scan_parquet(source, hive_partitioning=True, storage_options=opts)
        yield scan, fmt, source, opts
    except FileNotFoundError as exc:
        raise IngestError(f"input not found: {uri}") from exc
    except pl.exceptions.DuplicateError as exc:  # a Parquet schema that names a column twice
        name = re.search(r"name '(.*)' has more than one occurrence", str(exc))
        what = f"column(s) {[name.group(1)]}" if name else f"a column ({first_line(exc)})"
        raise IngestError(f"{what} appear more than once in the schema of "
                          f"{_files_with_repeats(source, opts) or uri}; rename or drop the copies") from exc
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise IngestError(f"cannot read {uri} as {fmt}: {first_line(exc)}") from exc


def _read(uri: str, query: Callable[[pl.LazyFrame, pl.Schema, str], pl.LazyFrame] | None = None
          ) -> tuple[pl.DataFrame, str, list[str] | str, dict[str, str] | None]:
    """Scan ``uri``, apply ``query`` to the lazy scan and collect (``_scanning``). Also (format, source,
    options)."""
    with _scanning(uri) as (scan, fmt, source, opts):
        frame = (query(scan, scan.collect_schema(), fmt) if query else scan).collect()
    return frame, fmt, source, opts


@contextlib.contextmanager
def scan_as_written(uri: str) -> Iterator[pl.LazyFrame]:
    """The input as a lazy scan with its own column names (CSV as text): what ``nightcast partition``
    streams. Read errors inside the block (collects and sinks of the scan) become ``IngestError``."""
    with _scanning(uri) as (scan, *_):
        yield scan


def load_series_ids(uri: str, columns: ColumnMap = ColumnMap()) -> pl.DataFrame:
    """The distinct series ids of the input as text, sorted: a scan of the id column alone (Parquet
    reads no other column; CSV parses no other field). What a sharded run's planner reads. On the
    shard layout, each id comes with the ``nshards`` and ``shard`` of the folder it was found in."""
    if uri == SAMPLE_DATA:
        return load_observations(uri, columns).select(pl.col("series_id").cast(pl.String)).unique().sort("series_id")

    def ids(scan: pl.LazyFrame, schema: pl.Schema, fmt: str) -> pl.LazyFrame:
        if columns.series_col not in schema:
            raise IngestError(f"missing column {columns.series_col!r} in {uri}; found {list(schema)}. "
                              "Map it with --series-col.")
        layout = [pl.col(c).cast(pl.Int64) for c in SHARD_COLUMNS] if _is_layout(schema, fmt) else []
        return scan.select(pl.col(columns.series_col).cast(pl.String).alias("series_id"), *layout).unique()

    frame = _read(uri, ids)[0]
    return frame.filter(pl.col("series_id").is_not_null()).sort(frame.columns)


def _is_layout(schema: pl.Schema, fmt: str) -> bool:
    """Parquet in the shard layout: both partition keys are there (one alone is a user's column)."""
    return fmt == "parquet" and all(c in schema for c in SHARD_COLUMNS)


def _only(schema: pl.Schema, column: str, series: list[str] | pl.Series) -> pl.Expr:
    """Rows of these series: a plain ``is_in`` on a text id column (Parquet statistics can prune on it);
    other id types are compared as text, as validation reads them (no statistics pruning then). A null
    among ``series`` reads the rows that have no id (a sharded retrain's first shard takes them, so that
    validation quarantines them as a whole read does)."""
    ids = pl.Series(series, dtype=pl.String).implode()
    col = pl.col(column) if schema[column] == pl.String else pl.col(column).cast(pl.String)
    return col.is_in(ids, nulls_equal=True)


_DUPLICATED = "_duplicated_"  # polars renames the second `x` of a CSV header to `x_duplicated_0`


def first_line(exc: BaseException) -> str:
    """An error's first line, or its type's name when it has no text."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _files_with_repeats(source: list[str] | str, opts: dict[str, str] | None) -> str:
    """The Parquet files whose schema names a column twice (error path only: one footer per file)."""
    files = [source] if isinstance(source, str) else source
    bad = []
    for f in files:
        try:
            pl.read_parquet_schema(f) if opts is None else pl.scan_parquet(f, storage_options=opts).collect_schema()
        except pl.exceptions.DuplicateError:
            bad.append(f)
        except (pl.exceptions.PolarsError, OSError):
            continue
    return ", ".join(bad)


def _reject_repeated_header(source: list[str] | str, opts: dict[str, str] | None, uri: str) -> None:
    """Stop on a CSV header that names a column twice (which copy is meant is anyone's guess).

    Called only when a column name looks like polars' rename of a repeat: each file's header
    is then read again as a plain row, where names keep their spelling. Every file, because
    several are stacked by name: a repeat in one file lines up with a genuine
    ``x_duplicated_0`` in another.
    """
    for f in [source] if isinstance(source, str) else source:
        first = pl.scan_csv(f, has_header=False, n_rows=1, infer_schema=False, storage_options=opts).collect()
        if first.height == 0:  # an empty file: no header to check
            continue
        header = first.row(0)
        counts = {name: header.count(name) for name in header}
        repeated = [name for name, n in counts.items() if n > 1]
        if repeated:
            where = uri if f == uri else f"{f} (of {uri})"
            raise IngestError(
                f"column(s) {repeated} appear more than once in the header of {where} "
                f"({', '.join(f'{name!r} {counts[name]} times' for name in repeated)}); "
                "rename or drop the copies"
            )


def _rename(frame: pl.DataFrame, columns: ColumnMap, uri: str) -> pl.DataFrame:
    mapping = {
        columns.series_col: "series_id",
        columns.timestamp_col: "timestamp",
        columns.target_col: "target",
    }
    missing = [src for src in mapping if src not in frame.columns]
    if missing:
        raise IngestError(
            f"missing column(s) {missing} in {uri}; found {frame.columns}. "
            "Map them with --series-col / --timestamp-col / --target-col."
        )
    clash = [dst for src, dst in mapping.items() if dst in frame.columns and dst != src]
    if clash:
        raise IngestError(f"column(s) {clash} exist in {uri} and are also mapping targets")
    return frame.rename({k: v for k, v in mapping.items() if k != v})
