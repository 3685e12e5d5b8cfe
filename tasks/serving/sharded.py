"""Sharded scoring: no process reads the whole catalogue.

The plan runs in the flow's own process: on a layout ``nightcast partition`` wrote, from its manifest and a
listing of its shard folders (``nightcast.tasks.serving.shard.layout_plan``: no id is read; each task reads its
folders whole and checks their ids); otherwise from the distinct series ids (a scan of the id column
alone), split by ``nightcast.tasks.serving.shard``. Then, when ``as_of`` and the calendar are known before any shard is read
(the model's calendar is regular, and ``as_of`` is given or read from the timestamp column's
statistics), one pass per shard:

- ``read_and_score_shards``, as mapped tasks, each on a run of consecutive shards (a task per worker thread
  at least, up to ``Settings.shard_task_series`` series each: ``nightcast.tasks.serving.shard.task_groups``): each shard reads its own series
  (Parquet predicate pushdown; with the shard layout ``nightcast partition`` writes, only its own
  files) and is validated; the task forecasts them together and writes its part once; the rows never
  leave the worker;

otherwise (business-day holidays are read from every shard; CSV input, where ``as_of`` is the newest
valid date) the staged run:

- ``read_shard`` reads, validates and stages the rows scoring needs; ``plan_calendar`` decides the
  calendar from the small per-day digests the shards return; ``score_shard`` forecasts a staged shard
  and stages its part (a backfill scores the staged rows for every date).

Both end in ``assemble_shards``: staleness settled across shards, the partition replaced in one
atomic write.

Everything staged lives under ``staging/score/<stamp>-<run>/``, outside ``forecasts/`` (so a reader
globbing ``forecasts/**/*.parquet`` never meets a staged file, during a run or after a killed one); a
run deletes its own staging when it ends, and ``sweep_staging`` removes what a killed run left behind
(old, and its run over), under the old ``forecasts/_staging/`` too.

Tasks take store URLs and bundle versions, not open clients or loaded models, so that they run
unchanged on a thread, a local Dask cluster or a remote worker (everything they get is pickled
there, and each reads what it needs from the store itself).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import io
import tempfile
import threading
from pathlib import Path
from typing import Callable

import polars as pl

from nightcast.schemas.params import ColumnMap
from nightcast.tasks.data.clean import Calendar, concat_by_series
from nightcast.tasks.data.pages import on_small_pages
from nightcast.tasks.data.sharded import validated_shard
from nightcast.tasks.forecast.intervals import widen
from nightcast.tasks.ops.registry import Bundle, load_bundle
from nightcast.tasks.serving.score import (ScorePart, assemble_parts, covariate_kinds, forecast_part, keep_for_scoring,
                         score_calendar, scoring_span_start, write_forecasts_sorted)
from nightcast.tasks.ops.storage import Store, open_store
from nightcast.tasks.data.validate import merge_notes

STAGING = "staging/score/"
LEGACY_STAGING = "forecasts/_staging/"
"""Where earlier versions staged: swept like the rest, never written."""
_STAMP = "%Y%m%dT%H%M%SZ"


def staging_run(run_id: str, now: dt.datetime | None = None) -> str:
    """A run's staging folder name: its start time first, so that ``sweep_staging`` can tell its age."""
    now = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    return f"{now:{_STAMP}}-{run_id}"


def staging_prefix(run: str) -> str:
    """Where one run (``staging_run``) stages its shards' inputs and parts."""
    return f"{STAGING}{run}/"


@dataclasses.dataclass(frozen=True)
class ShardInput:
    """What one shard read: counts for the run's report, and its validated rows staged for scoring."""

    staged: str  # store key of the rows kept for scoring
    n_quarantined: int
    notes: dict
    first: dt.datetime | None  # oldest and newest valid timestamp
    last: dt.datetime | None
    days: pl.DataFrame  # per calendar day: up to two series ids seen that day, and the day's newest timestamp


_BUNDLE_LOCK = threading.Lock()


@functools.lru_cache(maxsize=8)
def _cached_bundle(store_url: str, model_name: str, version: str) -> Bundle:
    return load_bundle(open_store(store_url), model_name, version)


def worker_bundle(store_url: str, model_name: str, version: str) -> Bundle:
    """The bundle, loaded and verified once per process: a version never changes once complete (its
    manifest is written last and checksums every file), so every shard a thread, a Dask worker or a
    remote worker scores after the first reuses it (the lock keeps threads that start together from
    loading it twice). ``Bundle.networks()`` builds fresh modules each call, so threads that share the
    cached bundle share no module state."""
    with _BUNDLE_LOCK:
        return _cached_bundle(store_url, model_name, version)


def _read_valid(bundle: Bundle, data: str, columns: ColumnMap, series: list[str] | pl.Series | None, shard: tuple[int, int],
                since: dt.datetime | None) -> tuple[pl.DataFrame, ShardInput]:
    """One shard's validated rows (from ``since`` on, and each series' last row before it), and its counts.
    ``series`` None: the shard's folder of the layout, read whole (``layout_plan``), whose ids are checked here."""
    checked = validated_shard(data, columns, series, shard, bundle.config["params"]["clean"]["max_bad_share"],
                              covariate_kinds(bundle), since)
    valid = checked.valid  # never empty: validation stops a shard with no valid row
    counts = ShardInput("", checked.n_quarantined, checked.notes, valid["timestamp"].min(),
                        valid["timestamp"].max(), pl.DataFrame())
    return valid, counts


@on_small_pages
def read_shard(store_url: str, model_name: str, version: str, data: str, columns: ColumnMap,
               series: list[str] | pl.Series | None,
               shard: tuple[int, int], since: dt.datetime | None, staged_key: str) -> ShardInput:
    """Read, validate and stage one shard's series.

    ``since``: the oldest timestamp any date this run scores looks at (``scoring_span_start``);
    None when the run scores the newest date in the data, which is at or after this shard's own
    newest date, so the shard's own span start is early enough. Only the rows scoring needs are
    staged (``keep_for_scoring``). Validation's share limit applies to each shard's own rows.
    """
    store = open_store(store_url)
    bundle = worker_bundle(store_url, model_name, version)
    valid, counts = _read_valid(bundle, data, columns, series, shard, since)
    kept = keep_for_scoring(valid, since or scoring_span_start(bundle, counts.last.date()))
    buf = io.BytesIO()
    kept.write_parquet(buf)
    store.write_bytes(staged_key, buf.getvalue())
    days = (kept.group_by(pl.col("timestamp").dt.date().alias("day"))
            .agg(pl.col("series_id").unique().sort().head(2).alias("ids"), pl.col("timestamp").max().alias("newest")))
    return dataclasses.replace(counts, staged=staged_key, days=days)


def fixed_calendar(bundle: Bundle) -> Calendar | None:
    """The calendar every shard scores on, when no shard's data can change it: the model's own for a
    regular calendar. None for a business-day model, whose holidays a run re-reads from the whole
    catalogue (``plan_calendar``) before any shard is scored."""
    calendar = Calendar.from_json(bundle.config["calendar"])
    return calendar if calendar.kind == "regular" else None


@dataclasses.dataclass(frozen=True)
class ShardRun:
    """What one task scored in a single pass: each of its shards' input counts, and its one part (staged,
    without the frame)."""

    inputs: list[ShardInput]
    part: ScorePart


@on_small_pages
def read_and_score_shards(store_url: str, model_name: str, version: str, data: str, columns: ColumnMap,
                          series: list[pl.Series | None], shards: list[tuple[int, int]], as_of: dt.date, calendar: Calendar,
                          staged_key: str) -> ShardRun:
    """Read and validate each of these shards (``series[i]`` are shard ``shards[i]``'s ids; None: its whole
    folder of the layout), forecast them
    together and write their part once: what a run does when ``as_of`` and the calendar (``fixed_calendar``)
    are known before any shard is read. The rows never leave the worker; each shard reads only its own
    series from the scoring span of ``as_of`` on, and validation's share limit applies to each shard's own
    rows. A series' forecast does not depend on the series it is scored with (``forecast_part``), so any
    grouping of shards (``nightcast.tasks.serving.shard.task_groups``) writes the same forecasts."""
    bundle = worker_bundle(store_url, model_name, version)
    since = scoring_span_start(bundle, as_of)
    frames, counts = [], []
    for ids, shard in zip(series, shards):  # a task's few shards, never its series
        valid, shard_counts = _read_valid(bundle, data, columns, ids, shard, since)
        frames.append(valid)
        counts.append(shard_counts)
    valid = concat_by_series(frames)  # each shard's rows come sorted by series; the forecast wants them all so
    frames.clear()  # the concatenation is a copy: the shards' own frames are freed before the forecast
    return ShardRun(counts, _stage_part(store_url, forecast_part(bundle, valid, as_of, calendar), staged_key))


def merge_inputs(inputs: list[ShardInput]) -> dict:
    """The whole run's input counts and notes from its shards' (counts add up, lists are joined)."""
    return {"n_quarantined": sum(s.n_quarantined for s in inputs), "notes": merge_notes([s.notes for s in inputs])}


def plan_calendar(bundle: Bundle, inputs: list[ShardInput], as_of: dt.date | None) -> tuple[dt.date, Calendar]:
    """The run's ``as_of`` (given, else the newest date of any shard) and its calendar, decided as a
    single process decides it: from each day seen, with two of its series (so whether one or
    several series are recent is known) at that day's newest timestamp."""
    days = pl.concat([s.days for s in inputs])
    if days.height == 0:
        from nightcast.tasks.serving.score import ScoreError

        raise ScoreError("no valid observations in any shard")
    firsts = [s.first for s in inputs if s.first is not None]
    lasts = [s.last for s in inputs if s.last is not None]
    evidence = (days.explode("ids").group_by("day").agg(pl.col("ids").unique().sort().head(2),
                                                        pl.col("newest").max())
                .explode("ids").select(pl.col("ids").alias("series_id"), pl.col("newest").alias("timestamp")))
    # the coverage check reads the oldest and newest timestamp of the data
    evidence = pl.concat([evidence, pl.DataFrame({"series_id": [evidence["series_id"][0]] * 2,
                                                  "timestamp": [min(firsts), max(lasts)]},
                                                 schema=evidence.schema)])
    as_of = as_of or max(lasts).date()
    return as_of, score_calendar(bundle, evidence.sort("series_id", "timestamp"), as_of)


@on_small_pages
def score_shard(store_url: str, model_name: str, version: str, staged_input: str, as_of: dt.date,
                calendar: Calendar, staged_key: str) -> ScorePart:
    """Forecast one staged shard and write its part to ``staged_key``; the part comes back without its
    frame (``staged`` names where it is), so only the small report travels through the task runner."""
    store = open_store(store_url)
    bundle = worker_bundle(store_url, model_name, version)
    valid = pl.read_parquet(io.BytesIO(store.read_bytes(staged_input)))
    return _stage_part(store_url, forecast_part(bundle, valid, as_of, calendar), staged_key)


PART_ROW_GROUP = 100_000
"""Rows per row group of a staged part (sorted by series): the assemble's slices skip the groups outside them."""


def _stage_part(store_url: str, part: ScorePart, staged_key: str) -> ScorePart:
    if part.forecasts is None:
        return part
    buf = io.BytesIO()
    part.forecasts.sort("series_id", "horizon").write_parquet(buf, row_group_size=PART_ROW_GROUP)
    open_store(store_url).write_bytes(staged_key, buf.getvalue())
    return dataclasses.replace(part, forecasts=None, staged=staged_key)


def assemble_shards(store_url: str, parts: list[ScorePart], max_gap: int, calendar: Calendar, as_of: dt.date,
                    model_name: str, version: str, width_factors: list[float] | None = None,
                    zone: str = "UTC") -> dict:
    """Settle staleness across shards, widen the intervals by ``width_factors`` (per horizon step;
    ``nightcast.tasks.forecast.intervals.widen``) and write the partition in one atomic object; the staged
    parts are deleted. The parts are copied to local files and read lazily, a slice of series at a time
    (``write_forecasts_sorted``): the flow's memory does not grow with the catalogue. A summary row like an
    unsharded run's."""
    store = open_store(store_url)
    with tempfile.TemporaryDirectory(prefix="nightcast-parts-") as tmp:
        frames = []
        for i, p in enumerate(parts):
            if p.staged:
                local = Path(tmp) / f"part-{i:05d}.parquet"
                store.download_to(p.staged, local)
                frames.append(pl.scan_parquet(local))
            elif p.forecasts is not None:
                frames.append(p.forecasts.lazy())
        forecasts, report = assemble_parts(parts, max_gap, calendar, as_of, frames)
        if width_factors:
            forecasts = widen(forecasts, width_factors)
        key, rows = write_forecasts_sorted(store, forecasts, model_name, as_of, zone)
    for p in parts:
        if p.staged:
            store.delete(p.staged)
    return {"as_of": as_of, "rows": rows, "series": report.series_scored,
            "methods": report.methods, "skipped": report.skipped, "model_version": version,
            "forecasts": store.uri(key)}


def discard_staging(store_url: str, run: str) -> None:
    """Delete everything a run staged (when it ends, done or failed)."""
    store = open_store(store_url)
    for key in store.list(staging_prefix(run)):
        store.delete(key)


def sweep_staging(store: Store, older_than: dt.timedelta = dt.timedelta(hours=12),
                  now: dt.datetime | None = None, alive: Callable[[str], bool] | None = None) -> list[str]:
    """Delete the staging folders of runs that started more than ``older_than`` ago and are over
    (a run killed before it could clean up). ``alive(run)`` says whether the run a folder names is
    still going (a backfill of many dates can outlast any age limit); younger folders are never
    asked about. Folders this code did not name are left alone. Returns the folders removed."""
    now = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    runs: dict[str, list[str]] = {}
    for prefix in (STAGING, LEGACY_STAGING):
        for key in store.list(prefix):
            runs.setdefault(key[len(prefix):].split("/", 1)[0], []).append(key)
    removed = []
    for run, keys in sorted(runs.items()):
        try:
            started = dt.datetime.strptime(run.split("-", 1)[0], _STAMP).replace(tzinfo=dt.timezone.utc)
        except ValueError:
            continue  # not a folder a run of this version named: leave it
        if now - started >= older_than and not (alive and alive(run)):
            for key in keys:
                store.delete(key)
            removed.append(run)
    return removed


def run_of(staging: str) -> str:
    """The run id in a staging folder's name (``staging_run``)."""
    return staging.split("-", 1)[1] if "-" in staging else ""
