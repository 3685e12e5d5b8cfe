"""backfill: one forecasts partition per ``as_of`` date in a range, idempotent and bounded.

Each date is forecast from the data up to the end of that date only, with the
bundle given, else the champion in force on that date, else the current
champion. No look-ahead: a date that comes before the end of its champion's
training data (a backfill over history older than the first promotion) is
refused before anything is read or written, unless a version is named or
``allow_look_ahead`` is set. A date whose partition exists is skipped unless ``overwrite``; a
partition is a single object written atomically, so a crashed or concurrent
backfill leaves every partition either whole or absent, never mixed.
"""

from __future__ import annotations

import datetime as dt

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from nightcast.schemas.params import BackfillParams, ColumnMap
from nightcast.tasks.ops.registry import Bundle, RegistryError, champion_as_of, load_bundle, read_champion
from nightcast.tasks.serving.score import covariate_kinds, forecasts_key, scoring_span_start, timestamps_zone
from nightcast.tasks.serving.sharded import discard_staging
from nightcast.tasks.ops.storage import Store
from nightcast.flows.runtime import SettingsTaskRunner, artifact_key, start_run, step
from nightcast.flows.score import forecast_and_write, ingest, read_in_shards, score_staged, validate

score_date = step(forecast_and_write, "score-date", io=True).with_options(
    task_run_name="score-{as_of}")


class BackfillError(RuntimeError):
    """Some dates of a backfill failed; the others are written."""


class LookAheadError(ValueError):
    """The model chosen for some dates was trained on data after them."""


def data_end(bundle: Bundle) -> dt.datetime | None:
    """The newest timestamp of the data the bundle was fitted on (its manifest), ``None`` if unrecorded."""
    end = (bundle.manifest.get("data") or {}).get("end")
    return dt.datetime.fromisoformat(str(end)) if end else None


def look_ahead(plan: dict[dt.date, str], bundles: dict[str, Bundle]) -> dict[dt.date, dt.datetime]:
    """Dates whose model saw data after the end of that date: {date: end of the model's data}."""
    ends = {v: data_end(b) for v, b in bundles.items()}
    return {d: ends[v] for d, v in plan.items() if v in ends and ends[v] is not None and ends[v].date() > d}


def refuse_look_ahead(ahead: dict[dt.date, dt.datetime], plan: dict[dt.date, str], model_name: str) -> None:
    if not ahead:
        return
    days = sorted(ahead)
    versions = sorted({plan[d] for d in days})
    span = f"{days[0]}" if len(days) == 1 else f"{days[0]}..{days[-1]}"
    raise LookAheadError(
        f"backfill refused: {len(days)} date(s) ({span}) come before the end of the data their model was trained "
        f"on ({model_name} {', '.join(versions)}, data to {max(ahead.values())}): no champion was in force then, "
        "and the current one has seen those dates' future. Score them with a version trained on older data "
        "(model=<version>, --model) or accept the look-ahead (allow_look_ahead=true, --allow-look-ahead)")


def plan_versions(store: Store, params: BackfillParams) -> dict[dt.date, str]:
    """Which bundle version scores each date."""
    dates = params.dates()
    if params.model:
        return dict.fromkeys(dates, params.model)
    current = read_champion(store, params.model_name)
    if current is None:
        raise RegistryError(f"model {params.model_name!r} has no champion in {store.url}: "
                            "run retrain first or pass model=<version>")
    plan = {}
    for day in dates:
        then = champion_as_of(store, params.model_name, day)
        plan[day] = (then or current)["version"]
    return plan


def format_summary(rows: list[dict]) -> str:
    head = f"{'as_of':<12}{'status':<9}{'rows':>6}{'series':>8}  {'model_version':<34}detail"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['as_of']:<12}{r['status']:<9}{r['rows']:>6}{r['series']:>8}  "
                     f"{r['model_version']:<34}{r['detail']}")
    return "\n".join(lines)


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
    rows: dict[dt.date, dict] = {}
    todo = []
    for day, version in plan.items():
        if not params.overwrite and st.exists(forecasts_key(params.model_name, day)):
            rows[day] = {"status": "skipped", "rows": 0, "series": 0, "model_version": "",
                         "detail": "partition exists (overwrite=false)"}
        else:
            todo.append(day)
    logger.info("backfill %s..%s: %d dates, %d to score, %d already done, up to %d at a time",
                params.start, params.end, len(plan), len(todo), len(plan) - len(todo), params.max_parallel)

    bundles: dict[str, Bundle] = {}
    read = None
    if todo:
        for version in sorted({plan[d] for d in todo}):
            bundles[version] = load_bundle(st, params.model_name, version)
        ahead = {} if params.model else look_ahead({d: plan[d] for d in todo}, bundles)
        if not params.allow_look_ahead:
            refuse_look_ahead(ahead, plan, params.model_name)
        elif ahead:
            logger.warning("scoring %d date(s) from %s with a model trained on data to %s (allow_look_ahead)",
                           len(ahead), min(ahead), max(ahead.values()))
        first = bundles[min(bundles)]  # validation's share limit and covariate types: the oldest version's
        if params.shards > 1:
            # every date's span starts at or after the earliest one any of its bundles looks at
            since = min(scoring_span_start(bundles[plan[d]], d) for d in todo)
            read = read_in_shards(st, params.model_name, first.version, params.data or settings.data,
                                  params.columns, params.shards, since)
        else:
            since = min(scoring_span_start(bundles[plan[d]], d) for d in todo) if todo else None
            raw = ingest(params.data or settings.data, params.columns, since=since)
            checked = validate(raw, first.config["params"]["clean"]["max_bad_share"],
                               params.columns.timestamp_format, covariate_kinds(first))
            observations, zone = checked.valid, timestamps_zone(checked.notes)

    def record(day: dt.date, result: dict | BaseException) -> None:
        nonlocal finished
        finished += 1
        if isinstance(result, BaseException):
            reason = str(result).strip().splitlines()[0] if str(result).strip() else type(result).__name__
            rows[day] = {"status": "failed", "rows": 0, "series": 0, "model_version": plan[day],
                         "detail": f"{type(result).__name__}: {reason}"}
            logger.error("[%d/%d] %s failed: %s", finished, len(todo), day, rows[day]["detail"])
        else:
            skipped = len(result["skipped"])
            rows[day] = {"status": "done", "rows": result["rows"], "series": result["series"],
                         "model_version": result["model_version"],
                         "detail": result["forecasts"] + (f" ({skipped} series skipped)" if skipped else "")}
            logger.info("[%d/%d] %s done: %d rows, %d series", finished, len(todo), day,
                        result["rows"], result["series"])

    finished = 0
    if read is not None:
        try:
            for day in todo:  # each date's shards run in parallel; a failed date does not stop the others
                try:
                    result: dict | BaseException = score_staged(st, bundles[plan[day]], read, day, params.model_name)
                except Exception as exc:  # noqa: BLE001 - recorded as the date's failure, as below
                    result = exc
                record(day, result)
        finally:
            discard_staging(st.url, read.run)
    elif todo:
        # Unsharded dates share this process's frame, open store and loaded bundles: they run on a
        # thread pool here even when the flow's runner is Dask (a boto3 client does not pickle, and
        # shipping the whole catalogue to a worker per date is what shards are for).
        # A sliding window of max_parallel dates: the next date starts as soon as any one finishes, so a
        # slow date never holds back the others (no batch waits for its slowest member).
        with ThreadPoolTaskRunner(max_workers=params.max_parallel) as pool:
            queue, in_flight = list(todo), {}

            def start_next() -> None:
                day = queue.pop(0)
                in_flight[pool.submit(score_date, {"store": st, "bundle": bundles[plan[day]],
                                                   "observations": observations, "as_of": day,
                                                   "model_name": params.model_name, "zone": zone})] = day

            while queue and len(in_flight) < params.max_parallel:
                start_next()
            while in_flight:
                done = next(as_completed(list(in_flight)))
                record(in_flight.pop(done), done.result(raise_on_failure=False))
                if queue:
                    start_next()

    table = [{"as_of": d.isoformat(), **rows[d]} for d in sorted(rows)]
    counts = {s: sum(r["status"] == s for r in table) for s in ("done", "skipped", "failed")}
    summary = format_summary(table)
    logger.info("backfill summary: %(done)d done, %(skipped)d skipped, %(failed)d failed", counts)
    logger.info("\n%s", summary)
    create_table_artifact(
        key=artifact_key("backfill", params.model_name), table=table,
        description=(f"backfill {params.model_name} {params.start}..{params.end}: {counts['done']} done, "
                     f"{counts['skipped']} skipped, {counts['failed']} failed"))
    out = {"dates": len(table), **counts, "table": table, "summary": summary}
    if counts["failed"]:
        failed = [f"{r['as_of']}: {r['detail']}" for r in table if r["status"] == "failed"]
        raise BackfillError(f"{counts['failed']} of {len(table)} dates failed; the other dates are written, "
                            "re-run to retry (done dates are skipped):\n" + "\n".join(failed))
    return out
