"""backfill: one forecasts partition per ``as_of`` date in a range, idempotent and bounded.

The plan (which bundle scores each date, the look-ahead refusal, which dates are already written)
is ``nightcast.tasks.serving.backfill``'s; this flow reads the input once and runs the dates. A date
whose partition exists is skipped unless ``overwrite``; a partition is a single object written
atomically, so a crashed or concurrent backfill leaves every partition either whole or absent.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from nightcast.schemas.params import BackfillParams, ColumnMap
from nightcast.tasks.ops.registry import Bundle, load_bundle
from nightcast.tasks.ops.storage import Store
from nightcast.tasks.serving.backfill import (BackfillError, format_summary, look_ahead,
                                              outcome_row, outcome_table, plan_versions, refuse_look_ahead,
                                              split_written)
from nightcast.tasks.serving.score import covariate_kinds, scoring_span_start, timestamps_zone
from nightcast.tasks.serving.sharded import discard_staging
from nightcast.flows.runtime import SettingsTaskRunner, artifact_key, start_run, step, unwalked_parameters
from nightcast.flows.score import forecast_and_write, ingest, read_in_shards, score_staged, validate

score_date = step(forecast_and_write, "score-date", io=True).with_options(
    task_run_name="score-{as_of}")


@flow(name="backfill", log_prints=True, task_runner=SettingsTaskRunner())
def backfill_flow(start: dt.date, end: dt.date, model: str | None = None, overwrite: bool = False,
                  max_parallel: int = 2, data: str | None = None, model_name: str = "lstm",
                  columns: ColumnMap = ColumnMap(), shards: int = 1, store: str | None = None,
                  allow_look_ahead: bool = False) -> dict:
    """Score every as_of date from start to end (inclusive), each with data up to that date only.

    Args:
        start: first as_of date.
        end: last as_of date (inclusive).
        model: bundle version to score every date with; empty: the champion of each date when the
            registry knows it, otherwise the current champion.
        overwrite: re-score dates whose forecasts partition already exists.
        max_parallel: dates scored at the same time.
        data: CSV/Parquet file, glob or directory, local or s3://; empty: $NIGHTCAST_DATA.
        model_name: registry name; forecasts go under forecasts/model=<name>/.
        columns: which input columns hold the series id, timestamp and target.
        shards: above 1, the data is read once in this many shards (no process holds all of it) and
            each date is scored shard by shard, as score's ``shards`` does; dates then run one at a time.
        store: object store root; empty: $NIGHTCAST_STORE.
        allow_look_ahead: score dates before the end of the chosen champion's training data anyway
            (refused by default, before anything is read or written).
    """
    params = BackfillParams(start=start, end=end, model=model, overwrite=overwrite, max_parallel=max_parallel,
                            data=data, model_name=model_name, columns=columns, shards=shards,
                            allow_look_ahead=allow_look_ahead)
    settings, st = start_run(store, data)
    logger = get_run_logger()
    plan = plan_versions(st, params)
    todo, rows = split_written(st, params, plan)
    logger.info("backfill %s..%s: %d dates, %d to score, %d already done, up to %d at a time",
                params.start, params.end, len(plan), len(todo), len(plan) - len(todo), params.max_parallel)
    if todo:
        bundles = _checked_bundles(st, params, {d: plan[d] for d in todo})
        # every date's span starts at or after the earliest one any of its bundles looks at; validation's share
        # limit and covariate types are the oldest version's
        since = min(scoring_span_start(bundles[plan[d]], d) for d in todo)
        data = params.data or settings.data
        outcomes = (_score_sharded(st, params, data, since, plan, todo, bundles) if params.shards > 1
                    else _score_dates(st, params, data, since, plan, todo, bundles))
        for k, (day, result) in enumerate(outcomes, start=1):
            rows[day] = outcome_row(result, plan[day])
            if rows[day]["status"] == "failed":
                logger.error("[%d/%d] %s failed: %s", k, len(todo), day, rows[day]["detail"])
            else:
                logger.info("[%d/%d] %s done: %d rows, %d series", k, len(todo), day, rows[day]["rows"],
                            rows[day]["series"])
    table, counts = outcome_table(rows)
    summary = _publish(params, table, counts)
    if counts["failed"]:
        failed = [f"{r['as_of']}: {r['detail']}" for r in table if r["status"] == "failed"]
        raise BackfillError(f"{counts['failed']} of {len(table)} dates failed; the other dates are written, "
                            "re-run to retry (done dates are skipped):\n" + "\n".join(failed))
    return {"dates": len(table), **counts, "table": table, "summary": summary}


def _publish(params: BackfillParams, table: list[dict], counts: dict[str, int]) -> str:
    """The outcome table in the log and as a Prefect artifact; returns it as text."""
    logger = get_run_logger()
    summary = format_summary(table)
    logger.info("backfill summary: %(done)d done, %(skipped)d skipped, %(failed)d failed", counts)
    logger.info("\n%s", summary)
    create_table_artifact(
        key=artifact_key("backfill", params.model_name), table=table,
        description=(f"backfill {params.model_name} {params.start}..{params.end}: {counts['done']} done, "
                     f"{counts['skipped']} skipped, {counts['failed']} failed"))
    return summary


def _checked_bundles(st: Store, params: BackfillParams, plan: dict[dt.date, str]) -> dict[str, Bundle]:
    """Each planned version loaded once; dates their model has seen the future of refused (or warned of)."""
    bundles = {v: load_bundle(st, params.model_name, v) for v in sorted(set(plan.values()))}
    ahead = {} if params.model else look_ahead(plan, bundles)
    if not params.allow_look_ahead:
        refuse_look_ahead(ahead, plan, params.model_name)
    elif ahead:
        get_run_logger().warning("scoring %d date(s) from %s with a model trained on data to %s (allow_look_ahead)",
                                 len(ahead), min(ahead), max(ahead.values()))
    return bundles


def _score_sharded(st: Store, params: BackfillParams, data: str, since: dt.datetime, plan: dict[dt.date, str],
                   todo: list[dt.date], bundles: dict[str, Bundle]) -> Iterator[tuple[dt.date, dict | BaseException]]:
    """The input read once in shards from ``since``; then each date's shards in parallel, one date at a time.
    A failed date does not stop the others."""
    read = read_in_shards(st, params.model_name, min(bundles), data, params.columns, params.shards, since)
    try:
        for day in todo:
            try:
                yield day, score_staged(st, bundles[plan[day]], read, day, params.model_name)
            except Exception as exc:  # noqa: BLE001 - recorded as the date's failure
                yield day, exc
    finally:
        discard_staging(st.url, read.run)


def _score_dates(st: Store, params: BackfillParams, data: str, since: dt.datetime, plan: dict[dt.date, str],
                 todo: list[dt.date], bundles: dict[str, Bundle]) -> Iterator[tuple[dt.date, dict | BaseException]]:
    """The input read and validated once, then ``max_parallel`` dates at a time in a sliding window: the next
    date starts as soon as any one finishes, so a slow date never holds back the others.

    The dates share this process's frame, open store and loaded bundles, so they run on a thread pool here
    even when the flow's runner is Dask (a boto3 client does not pickle, and shipping the whole catalogue
    to a worker per date is what shards are for)."""
    first = bundles[min(bundles)]
    raw = ingest(data, params.columns, since=since)
    checked = validate(raw, first.config["params"]["clean"]["max_bad_share"], params.columns.timestamp_format,
                       covariate_kinds(first))
    shared = {"store": st, "observations": checked.valid, "model_name": params.model_name,
              "zone": timestamps_zone(checked.notes)}
    with ThreadPoolTaskRunner(max_workers=params.max_parallel) as pool:
        queue, in_flight = list(todo), {}

        def start_next() -> None:
            day = queue.pop(0)
            args = {**shared, "bundle": bundles[plan[day]], "as_of": day}
            in_flight[pool.submit(score_date.task, unwalked_parameters(args))] = day

        while queue and len(in_flight) < params.max_parallel:
            start_next()
        while in_flight:
            done = next(as_completed(list(in_flight)))
            yield in_flight.pop(done), done.result(raise_on_failure=False)
            if queue:
                start_next()
