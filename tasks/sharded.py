"""Sharded scoring: each shard reads, checks and forecasts its own series and stages its part;
one last step puts the parts together and replaces the partition atomically.

Tasks here take store URLs and bundle versions, not open clients or loaded models, so that they
run unchanged on a thread, a local Dask cluster or a remote worker (everything they get is
pickled there, and each reads what it needs from the store itself).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io

import polars as pl

from schemas.params import ColumnMap
from tasks.clean import Calendar
from tasks.ingest import load_observations
from tasks.registry import load_bundle
from tasks.score import ScorePart, ScoreReport, assemble_parts, forecast_part, write_forecasts
from tasks.storage import open_store
from tasks.validate import validate_observations


def staging_prefix(run_id: str) -> str:
    """Where one run's shards stage their parts (outside every partition, so readers never list them)."""
    return f"forecasts/_staging/{run_id}/"


def score_shard(store_url: str, model_name: str, version: str, data: str, columns: ColumnMap, series: list[str],
                as_of: dt.date, calendar: Calendar, staged_key: str) -> ScorePart:
    """Forecast one shard's series and write them to ``staged_key``; the part comes back without its
    frame (``staged`` names where it is), so only the small report travels through the task runner."""
    store = open_store(store_url)
    bundle = load_bundle(store, model_name, version)
    raw = load_observations(data, columns, series=series)
    valid = validate_observations(raw, bundle.config["params"]["clean"]["max_bad_share"],
                                  columns.timestamp_format).valid
    part = forecast_part(bundle, valid, as_of, calendar) if valid.height else ScorePart(
        None, ScoreReport(), _no_last_seen(), None)
    if part.forecasts is None:
        return part
    buf = io.BytesIO()
    part.forecasts.write_parquet(buf)
    store.write_bytes(staged_key, buf.getvalue())
    return dataclasses.replace(part, forecasts=None, staged=staged_key)


def _no_last_seen() -> pl.DataFrame:
    return pl.DataFrame(schema={"series_id": pl.String, "last_seen": pl.Datetime("us")})


def assemble_shards(store_url: str, parts: list[ScorePart], max_gap: int, calendar: Calendar, as_of: dt.date,
                    model_name: str, version: str, run_id: str) -> dict:
    """Read the staged parts, settle staleness across shards, write the partition in one atomic
    object (``write_forecasts``), then delete the staged parts. A summary row like an unsharded run's."""
    store = open_store(store_url)
    loaded = [dataclasses.replace(p, forecasts=pl.read_parquet(io.BytesIO(store.read_bytes(p.staged))))
              if p.staged else p for p in parts]
    forecasts, report = assemble_parts(loaded, max_gap, calendar, as_of)
    key = write_forecasts(store, forecasts, model_name, as_of)
    discard_staging(store_url, run_id)
    return {"as_of": as_of, "rows": forecasts.height, "series": report.series_scored, "methods": report.methods,
            "skipped": report.skipped, "model_version": version, "forecasts": store.uri(key)}


def discard_staging(store_url: str, run_id: str) -> None:
    """Delete a run's staged parts (after assembly, or after a failed run)."""
    store = open_store(store_url)
    for key in store.list(staging_prefix(run_id)):
        store.delete(key)
