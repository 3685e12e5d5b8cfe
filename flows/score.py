"""score: load the champion, forecast from the data up to ``as_of``, write the partition."""

from __future__ import annotations

import datetime as dt
import functools
import uuid

import polars as pl
from prefect import flow, get_run_logger, unmapped
from prefect.futures import wait
from prefect.artifacts import create_markdown_artifact

from schemas.params import ScoreParams, Settings
from tasks.ingest import load_observations
from tasks.registry import Bundle, load_champion
from tasks.score import forecast_from_bundle, score_calendar, write_forecasts
from tasks.shard import split_series
from tasks.sharded import assemble_shards, discard_staging, score_shard, staging_prefix
from tasks.storage import Store
from tasks.validate import validate_observations
from flows.runtime import artifact_key, start_run, step

ingest = step(load_observations, "ingest", io=True, timeout_s=3600)
validate = step(validate_observations, "validate", timeout_s=3600)
champion = step(load_champion, "load-champion", io=True)


def forecast_and_write(store: Store, bundle: Bundle, observations: pl.DataFrame, as_of: dt.date,
                       model_name: str) -> dict:
    """Forecast as of one date and replace that date's partition; a summary row for the run."""
    forecasts, report = forecast_from_bundle(bundle, observations, as_of)
    key = write_forecasts(store, forecasts, model_name, as_of)
    return {"as_of": as_of, "rows": forecasts.height, "series": report.series_scored, "methods": report.methods,
            "skipped": report.skipped, "model_version": bundle.version, "forecasts": store.uri(key)}


score_date = step(forecast_and_write, "forecast-and-write", io=True, timeout_s=3600)
calendar_step = step(score_calendar, "score-calendar")


@functools.wraps(score_shard)
def _score_shard_here(*args, **kwargs):
    """``score_shard`` with torch's threads set as ``start_run`` sets them: on a Dask worker the shard
    runs in another process, which the flow's own setting never reached."""
    import torch

    torch.set_num_threads(Settings().torch_threads)
    return score_shard(*args, **kwargs)


shard_step = step(_score_shard_here, "score-shard", io=True, timeout_s=3600).with_options(
    task_run_name="score-shard-{staged_key}")
assemble_step = step(assemble_shards, "assemble-shards", io=True, timeout_s=3600)


def score_in_shards(st: Store, bundle: Bundle, observations: pl.DataFrame, as_of: dt.date, data: str,
                    params: ScoreParams) -> dict:
    """``forecast_and_write`` as ``params.shards`` mapped tasks and one assembling task.

    Each shard reads its own series from ``data`` and stages its part under
    ``forecasts/_staging/<run>/``; the partition is written only once every shard is done, in one
    atomic object, and a failed run leaves it as it was (its staged parts are deleted).
    """
    from prefect.runtime import flow_run

    run_id = str(flow_run.id or uuid.uuid4())
    calendar = calendar_step(bundle, observations, as_of)
    shards = [ids for ids in split_series(observations["series_id"], params.shards) if ids]
    keys = [f"{staging_prefix(run_id)}{k:05d}.parquet" for k in range(len(shards))]
    futures = shard_step.map(unmapped(st.url), unmapped(params.model_name), unmapped(bundle.version),
                             unmapped(data), unmapped(params.columns), shards, unmapped(as_of),
                             unmapped(calendar), keys)
    wait(futures)
    try:
        parts = [f.result() for f in futures]
        max_gap = bundle.config["params"]["clean"]["max_gap"]
        return assemble_step(st.url, parts, max_gap, calendar, as_of, params.model_name, bundle.version, run_id)
    except BaseException:
        discard_staging(st.url, run_id)
        raise


@flow(name="score", log_prints=True)
def score_flow(params: ScoreParams = ScoreParams(), store: str | None = None) -> dict:
    """Forecast every series from the champion as of ``params.as_of``.

    Args:
        params: data, as_of date (empty: the newest date in the data), model name and columns.
        store: object store root (local directory or s3://bucket/prefix); empty: $NIGHTCAST_STORE.
    """
    settings, st = start_run(store, params.data)
    logger = get_run_logger()
    bundle = champion(st, params.model_name)
    raw = ingest(params.data or settings.data, params.columns)
    checked = validate(raw, bundle.config["params"]["clean"]["max_bad_share"], params.columns.timestamp_format)
    as_of = params.as_of or checked.valid["timestamp"].max().date()
    if params.shards > 1:
        out = score_in_shards(st, bundle, checked.valid, as_of, params.data or settings.data, params)
    else:
        out = score_date(st, bundle, checked.valid, as_of, params.model_name)
    lost = checked.notes.get("series_every_row_quarantined") or []
    if lost:
        logger.warning("%d series had every input row quarantined and cannot be scored: %s%s", len(lost),
                       ", ".join(map(str, lost[:20])), " ..." if len(lost) > 20 else "")
    for sid, why in list(out["skipped"].items())[:20]:
        logger.warning("series %s not scored: %s", sid, why)
    if len(out["skipped"]) > 20:
        logger.warning("... and %d more series not scored (listed in the score artifact)", len(out["skipped"]) - 20)
    logger.info("wrote %d forecasts for %d series as of %s to %s (served by method: %s)",
                out["rows"], out["series"], as_of, out["forecasts"], out["methods"])
    skipped = "".join(f"\n- `{sid}`: {why}" for sid, why in list(out["skipped"].items())[:200])
    create_markdown_artifact(
        key=artifact_key("score", params.model_name), description=f"forecasts as of {as_of}",
        markdown=(f"# Forecasts {params.model_name} as of {as_of}\n\n"
                  f"- `{out['forecasts']}`\n- {out['rows']} rows, {out['series']} series, "
                  f"model version `{bundle.version}`\n- served by method: {out['methods']}\n"
                  f"- quarantined input rows: {checked.n_quarantined}\n"
                  + (f"\n## Not scored{skipped}\n" if skipped else "")))
    return {**out, "quarantined_rows": checked.n_quarantined, "input_notes": checked.notes}
