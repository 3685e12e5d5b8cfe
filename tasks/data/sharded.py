"""Cleaning a catalogue shard by shard: a retrain whose flow process never holds the whole catalogue.

``nightcast retrain --shards N`` plans the shards as sharded scoring does (the layout's manifest, else the
ids: ``nightcast.tasks.serving.shard.plan_run``), decides the calendar and the season on the largest shard
(``decide_on_shard``), then runs ``clean_shards`` as mapped tasks, one per shard, on the run's task runner
(threads, or the Dask workers of ``NIGHTCAST_DASK_ADDRESS``). Each task reads its shard (on the layout: only
its folder), validates and cleans it with the rules training uses, writes its quarantined rows to the store
once, and sends back only what the run needs:

- the counts, notes and cleaning report of everything it read (the report's lists cut to the series
  cleaning touched most, ``CleanReport.listed``), the shard's data fingerprint, and how it typed each
  covariate;
- the clean rows (and the valid rows' counts) of the series in the training sample: ``sample`` of every
  shard's series, picked by the stable hash's high bits (``in_sample``), so the sample is drawn from every
  shard, the same series on every machine and run, whatever the shard count.

A covariate is text when any shard reads text in it, else numbers when any reads numbers (as when the
catalogue is validated whole; a shard where it is blank does not vote): a shard that typed it otherwise is
cleaned again with the catalogue's kinds (``agreed_kinds``, ``retyped``; only then, and only those shards).
The flow gathers the samples (``gather``) and trains, backtests and refits on them; scoring forecasts every
series (those outside the sample with scalers from their own history and the pooled combination, as with
``--sample``). Tasks take URLs and plain values, so they run unchanged on a thread or a Dask worker.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import os
import socket

import polars as pl

from nightcast.schemas.params import CleanConfig, ColumnMap
from nightcast.tasks.data.clean import Calendar, CleanReport, clean_observations, concat_by_series, decide_calendar, decide_season
from nightcast.tasks.data.ingest import IngestError, load_observations
from nightcast.tasks.data.pages import on_small_pages
from nightcast.tasks.data.prepare import Cleaned, fingerprint
from nightcast.tasks.data.validate import DataValidationError, ValidationResult, merge_notes, validate_observations
from nightcast.tasks.ops.storage import open_store
from nightcast.tasks.serving.shard import ShardLayoutError, buckets_kept, check_shard, sample_bucket_of


class ShardedCleaningError(ValueError):
    """Shards that cannot be trained on together (another calendar or covariate kinds), or no sampled series."""


def in_sample(series_ids: pl.Series, share: float) -> pl.Series:
    """Whether each id is in the training sample: its bucket (``sample_bucket_of``, from the stable hash's bits
    that do not pick the shard) below ``buckets_kept(share)``. Every shard gives about
    ``share`` of its series, the shard count does not change which series, and a plain ``--sample`` of the
    same share on input not in the shard layout picks the same ones."""
    return sample_bucket_of(series_ids) < buckets_kept(share)


@dataclasses.dataclass(frozen=True)
class Decided:
    """What every shard is cleaned with, decided on one shard: the calendar and the season."""

    calendar: Calendar
    season_length: int


def decide_on_shard(data: str, columns: ColumnMap, ids: pl.Series | None, shard: tuple[int, int],
                    clean: CleanConfig, train_share: float) -> Decided:
    """The calendar and the season, read from one shard (a share of the series picked by the hash): the rules
    every shard is then cleaned with. A business-day calendar takes its holidays from
    the whole catalogue, which no shard sees: it is refused (retrain without ``--shards``)."""
    checked = validated_shard(data, columns, ids, shard, clean.max_bad_share, None)
    calendar = decide_calendar(checked.valid, clean)
    if calendar.kind != "regular":
        raise ShardedCleaningError(
            f"a sharded retrain needs a regular calendar; shard {shard[0]} of {data} reads as a {calendar.kind}-day "
            "calendar, whose holidays come from every series at once: retrain without --shards (or with --sample), "
            "or pass --frequency and a regular calendar")
    return Decided(calendar, decide_season(checked.valid, clean, calendar, share=train_share))


def validated_shard(data: str, columns: ColumnMap, ids: pl.Series | list[str] | None, shard: tuple[int, int],
                    max_bad_share: float, kinds: dict[str, str] | None,
                    since: dt.datetime | None = None) -> ValidationResult:
    """One shard read (its ``ids``, or its folder of the layout, whose ids are checked; with ``since``, only
    its rows from then on and each series' last row before) and validated: the one read of a shard, for
    retraining and scoring alike. An error names the shard first, then what validation found (rows, rules)."""
    try:
        raw = load_observations(data, columns, series=ids, shard=shard, since=since)
        if ids is None:
            check_shard(raw["series_id"], shard, data)
        return validate_observations(raw, max_bad_share, columns.timestamp_format, kinds)
    except (IngestError, ShardLayoutError, DataValidationError) as exc:
        raise type(exc)(f"shard {shard[0]} of {shard[1]} of {data}: {exc}") from exc


def _kinds(checked: ValidationResult) -> dict[str, str]:
    """How validation typed each covariate; ``blank`` for one with no value in these rows (validation types
    such a column as text, but it says nothing about the catalogue's values: it does not vote)."""
    valid = checked.valid
    return {**dict.fromkeys(checked.numeric, "numeric"),
            **{c: "blank" if valid[c].null_count() == valid.height else "categorical" for c in checked.categorical}}


@dataclasses.dataclass(frozen=True)
class CleanedShards:
    """What one task cleaned: its shards' counts and notes, the report (lists cut), each shard's fingerprint,
    where its quarantined rows went, and the training sample's clean rows (with its valid rows' counts)."""

    shards: list[int]
    rows: int  # rows read
    exact_duplicates: int
    quarantined: int
    quarantine: str | None  # the store URI of this task's quarantined rows, None when there were none
    notes: dict
    valid_rows: int
    series: int  # series with a valid row
    first: dt.datetime
    last: dt.datetime
    fingerprints: dict[int, str]
    kinds: dict[str, str]  # each covariate: "numeric", "categorical" or "blank" (no value), as these shards read it
    report: CleanReport
    sample_rows: int  # the sample's valid rows and series
    sample_series: int
    sample_clean: pl.DataFrame | None  # None: no series of these shards has an observed target
    process: str = ""  # host/pid of the process that cleaned them (a Dask worker's, on a cluster)


@on_small_pages
def clean_shards(store_url: str, data: str, columns: ColumnMap, series: list[pl.Series | None],
                 shards: list[tuple[int, int]], cfg: CleanConfig, decided: Decided, share: float,
                 quarantine_key: str, kinds: dict[str, str] | None = None) -> CleanedShards:
    """Read, validate and clean each of these shards (``series[i]`` are shard ``shards[i]``'s ids; None: its
    whole folder of the layout, whose ids are checked) with ``decided``'s calendar and season and ``cfg``'s
    rules, the covariates typed as ``kinds`` says (None: as their values read); write the quarantined rows
    once, under ``quarantine_key``; return the counts and the sample's rows (``CleanedShards``). Validation's
    share limit applies to each shard's own rows."""
    cfg = cfg.model_copy(update={"season_length": decided.season_length})
    rows = duplicates = valid_rows = n_series = sample_rows = sample_series = 0
    quarantined, notes, reports, cleans = [], [], [], []
    fingerprints: dict[int, str] = {}
    typed: dict[str, str] = {}
    first = last = None
    for ids, shard in zip(series, shards):  # a task's few shards, never its series
        checked = validated_shard(data, columns, ids, shard, cfg.max_bad_share, kinds)
        valid = checked.valid
        rows, duplicates, valid_rows = rows + checked.n_rows, duplicates + checked.exact_duplicates, valid_rows + valid.height
        if checked.n_quarantined:
            quarantined.append(checked.quarantine)
        notes.append(checked.notes)
        fingerprints[shard[0]] = fingerprint(valid)
        typed = _vote([typed, _kinds(checked) if kinds is None else {c: kinds.get(c, "categorical") for c in
                                                                            (*checked.numeric, *checked.categorical)}])
        span = valid.select(pl.col("timestamp").min().alias("a"), pl.col("timestamp").max().alias("b")).row(0)
        first, last = min(first or span[0], span[0]), max(last or span[1], span[1])
        names = valid["series_id"].unique()
        n_series += names.len()
        picked = names.filter(in_sample(names, share))
        kept = valid.filter(pl.col("series_id").is_in(picked.implode()))  # each id hashed once
        sample_rows, sample_series = sample_rows + kept.height, sample_series + picked.len()
        del kept
        if valid["target"].null_count() == valid.height:  # no observed target in the shard: nothing to clean
            reports.append(CleanReport(empty_series_count=names.len(), empty_series=names.sort().head(20).to_list(),
                                       outlier_action=cfg.outlier_action))
            continue
        try:
            clean, report, _ = clean_observations(valid, cfg, decided.calendar)
        except ValueError as exc:  # every series of the shard emptied by the outlier rule
            raise ShardedCleaningError(f"shard {shard[0]} of {shard[1]} of {data}: {exc}") from exc
        reports.append(report.listed())
        del valid, checked
        cleans.append(clean.filter(pl.col("series_id").is_in(picked.implode())))
        del clean
    uri = None
    if quarantined:
        buf = io.BytesIO()
        pl.concat(quarantined, how="diagonal_relaxed").write_parquet(buf)
        store = open_store(store_url)
        store.write_bytes(quarantine_key, buf.getvalue())
        uri = store.uri(quarantine_key)
    return CleanedShards([s[0] for s in shards], rows, duplicates, sum(q.height for q in quarantined), uri,
                         merge_notes(notes), valid_rows, n_series, first, last, fingerprints, typed,
                         CleanReport.merged(reports), sample_rows, sample_series,
                         concat_by_series(cleans) if cleans else None,
                         f"{socket.gethostname()}/{os.getpid()}")


def retyped(kinds: dict[str, str], agreed: dict[str, str]) -> bool:
    """Whether a shard that read its covariates as ``kinds`` must be cleaned again as the catalogue reads them
    (``agreed``): a column it typed otherwise; one blank in it is already text, so only a numeric one is."""
    return any(agreed.get(c) != k and not (k == "blank" and agreed.get(c) == "categorical") for c, k in kinds.items())


def agreed_kinds(parts: list[dict[str, str]]) -> dict[str, str]:
    """The catalogue's kind of each covariate from its shards' (validation's rule on the whole input): text
    where any shard read text, else numbers where any shard read numbers; a column blank in every shard
    is text, as validation types a column with no value."""
    return {name: "categorical" if kind == "blank" else kind for name, kind in _vote(parts).items()}


def _vote(parts: list[dict[str, str]]) -> dict[str, str]:
    """``agreed_kinds`` before its last rule: "blank" where every part is blank (what a task reports for its shards)."""
    out: dict[str, str] = {}
    for kinds in parts:
        for name, kind in kinds.items():
            seen = {kind, out.get(name)}
            out[name] = "categorical" if "categorical" in seen else "numeric" if "numeric" in seen else "blank"
    return out


def gather(parts: list[CleanedShards], decided: Decided, data: str) -> tuple[ValidationResult, Cleaned, str]:
    """The run's input from its tasks' parts: a ``ValidationResult`` with no rows (they stayed on the workers;
    its ``catalogue`` counts every shard, and the sample), the sample cleaned (``Cleaned``: what training
    windows), and the data fingerprint (SHA-256 of every shard's fingerprint, in shard order)."""
    cleaned = [p.sample_clean for p in parts if p.sample_clean is not None]
    clean = concat_by_series(cleaned) if cleaned else None
    if clean is None or clean.height == 0:
        raise ShardedCleaningError(f"the training sample of {data} holds no series: give a larger --sample")
    notes = merge_notes([p.notes for p in parts])
    kinds = agreed_kinds([p.kinds for p in parts])
    if any(retyped(p.kinds, kinds) for p in parts):
        raise ShardedCleaningError(f"shards {[p.shards for p in parts if retyped(p.kinds, kinds)]} typed the covariates "
                                   f"otherwise than the catalogue ({kinds}): clean them again with these kinds")
    numeric = [c for c, k in kinds.items() if k == "numeric"]
    categorical = [c for c, k in kinds.items() if k == "categorical"]
    catalogue = {"rows": sum(p.valid_rows for p in parts), "series": sum(p.series for p in parts),
                 "quarantined": sum(p.quarantined for p in parts),
                 "start": str(min(p.first for p in parts)), "end": str(max(p.last for p in parts)),
                 "quarantine": [p.quarantine for p in parts if p.quarantine],
                 "cleaned_by": sorted({p.process for p in parts}),
                 "sample": {"rows": sum(p.sample_rows for p in parts), "series": sum(p.sample_series for p in parts)}}
    checked = ValidationResult(pl.DataFrame(), pl.DataFrame(), sum(p.rows for p in parts),
                               sum(p.exact_duplicates for p in parts), categorical, numeric, notes, catalogue)
    report = CleanReport.merged([p.report for p in parts])
    shards = sorted(kv for p in parts for kv in p.fingerprints.items())
    fp = hashlib.sha256(";".join(f"{k}:{h}" for k, h in shards).encode()).hexdigest()
    return checked, Cleaned(clean, report, decided.calendar, decided.season_length), fp
