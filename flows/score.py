"""score: load the champion, forecast from the data up to ``as_of``, write the partition."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import uuid

import polars as pl
from prefect import flow, get_run_logger, unmapped
from prefect.futures import wait

from nightcast.schemas.params import ColumnMap, ScoreParams, Settings
from nightcast.tasks.data.clean import Calendar
from nightcast.tasks.data.ingest import load_observations, load_series_ids, newest_date
from nightcast.tasks.forecast.intervals import widen
from nightcast.tasks.ops.monitor import width_factors
from nightcast.tasks.ops.registry import Bundle, load_champion
from nightcast.tasks.serving.score import (ScoreError, ScorePart, covariate_kinds, forecast_from_bundle, scoring_span_start,
                         timestamps_zone, write_forecasts)
from nightcast.tasks.serving.shard import ShardPlan, plan_run, task_groups
from nightcast.tasks.serving.sharded import (STAGING, ShardInput, ShardRun, assemble_shards, discard_staging, fixed_calendar,
                           merge_inputs, plan_calendar, read_and_score_shards, read_shard, run_of, score_shard,
                           staging_prefix, staging_run, sweep_staging)
from nightcast.tasks.ops.storage import Store
from nightcast.tasks.data.validate import validate_observations
from nightcast.flows.runtime import SettingsTaskRunner, artifact_key, publish_markdown, start_run, step, worker_slots

ingest = step(load_observations, "ingest", io=True, timeout_s=3600)
validate = step(validate_observations, "validate", timeout_s=3600)
champion = step(load_champion, "load-champion", io=True)


def adapted_widths(store: Store, bundle: Bundle, model_name: str, as_of: dt.date, adapt: bool) -> dict | None:
    """The monitor's interval multipliers for this date (``nightcast.tasks.ops.monitor.width_factors``), logged; None when
    not asked for or nothing was monitored. A store the monitor cannot read leaves the widths alone."""
    if not adapt:
        return None
    try:
        found = width_factors(store, bundle, model_name, as_of)
    except Exception as exc:  # noqa: BLE001 - a damaged monitoring table must not stop forecasts
        get_run_logger().warning("interval widths not adapted (monitoring state unreadable: %s)", exc)
        return None
    if found:
        get_run_logger().info("interval widths x %s per horizon step, from %s monitored actuals through %s",
                              _short(found["factors"]), sum(found["points"]), found["monitored_through"])
    return found


def _short(values: list[float], n: int = 6) -> str:
    head = ", ".join(f"{v:.2f}" for v in values[:n])
    return f"[{head}{', ...' if len(values) > n else ''}]"


def forecast_and_write(store: Store, bundle: Bundle, observations: pl.DataFrame, as_of: dt.date,
                       model_name: str, adapt_widths: bool = True, zone: str = "UTC") -> dict:
    """Forecast as of one date and replace that date's partition; a summary row for the run. With
    ``adapt_widths``, the intervals take the monitor's multipliers (``adapted_widths``)."""
    forecasts, report = forecast_from_bundle(bundle, observations, as_of)
    widths = adapted_widths(store, bundle, model_name, as_of, adapt_widths)
    if widths:
        forecasts = widen(forecasts, widths["factors"])
    key = write_forecasts(store, forecasts, model_name, as_of, zone)
    return {"as_of": as_of, "rows": forecasts.height, "series": report.series_scored, "methods": report.methods,
            "skipped": report.skipped, "model_version": bundle.version, "forecasts": store.uri(key),
            "widths": widths}


score_date = step(forecast_and_write, "forecast-and-write", io=True, timeout_s=3600)


def _torch_threads_here(fn):  # noqa: ANN001, ANN202 - a shard task
    """``fn`` with torch's threads set as ``start_run`` sets them: on a Dask worker a shard runs in
    another process, which the flow's own setting never reached."""
    @functools.wraps(fn)
    def run(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        import torch

        torch.set_num_threads(Settings().torch_threads)
        return fn(*args, **kwargs)
    return run


plan_step = step(load_series_ids, "list-series", io=True, timeout_s=3600)
# Shard steps run mapped, in worker threads or on Dask workers, where a Prefect timeout cannot interrupt
# them (Prefect logs a warning per task saying so, 100 a run at 100 shards): they have none, like backfill dates.
read_step = step(read_shard, "read-shard", io=True).with_options(
    task_run_name="read-shard-{staged_key}")
shard_step = step(_torch_threads_here(score_shard), "score-shard", io=True).with_options(
    task_run_name="score-shard-{staged_key}")
one_pass_step = step(_torch_threads_here(read_and_score_shards), "read-and-score-shards", io=True).with_options(
    task_run_name="read-and-score-shards-{staged_key}")
assemble_step = step(assemble_shards, "assemble-shards", io=True, timeout_s=3600)


@dataclasses.dataclass(frozen=True)
class ShardedInput:
    """A sharded run's input: where each shard's validated rows are staged, and what was read."""

    run: str  # the staging folder (``nightcast.tasks.serving.sharded.staging_run``)
    shards: list[ShardInput]
    n_quarantined: int
    notes: dict


def _still_running(staging: str) -> bool:
    """Whether the flow run a staging folder names is still going, asked of the Prefect API. A name
    that is no Prefect run, or a run the API does not know, is over; an API that does not answer
    keeps the folder (another night's sweep will try again)."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        run_id = uuid.UUID(run_of(staging))
    except ValueError:
        return False
    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(run_id).state
    except ObjectNotFound:
        return False
    except Exception:  # noqa: BLE001 - unknown: keep
        return True
    return state is None or not state.is_final()


def _plan(st: Store, data: str, columns: ColumnMap, n_shards: int) -> tuple[str, ShardPlan]:
    """A new run's staging folder (after sweeping what killed runs left), and its shards: from the layout's
    manifest when ``nightcast partition`` wrote one (no id is read here), else from the series ids."""
    from prefect.runtime import flow_run

    logger = get_run_logger()
    try:
        swept = sweep_staging(st, alive=_still_running)
        if swept:
            logger.info("removed staging left by %d killed run(s): %s", len(swept), ", ".join(swept))
    except Exception as exc:  # noqa: BLE001 - housekeeping: a failed sweep must not fail the run
        logger.warning("could not sweep old staging under %s: %s", st.uri(STAGING), exc)
    run = staging_run(str(flow_run.id or uuid.uuid4()))
    plan = plan_run(data, n_shards, lambda: plan_step(data, columns))
    logger.info("%d series in %d shards (%d empty; planned from %s); staging under %s", plan.series, n_shards,
                n_shards - len(plan.todo), "the layout's manifest" if plan.from_manifest else "the ids",
                st.uri(STAGING + run))
    return run, plan


def read_in_shards(st: Store, model_name: str, version: str, data: str, columns: ColumnMap, n_shards: int,
                   since: dt.datetime | None) -> ShardedInput:
    """Plan the shards (``_plan``: the layout's manifest, else the series ids), then read, validate and stage every shard as a
    mapped task (a backfill scores the staged rows for many dates). Staging folders that killed runs
    left behind are swept first."""
    run, plan = _plan(st, data, columns, n_shards)
    keys = [f"{staging_prefix(run)}input/{k:05d}.parquet" for k in plan.todo]
    futures = read_step.map(unmapped(st.url), unmapped(model_name), unmapped(version), unmapped(data),
                            unmapped(columns), [plan.groups[k] for k in plan.todo], [(k, n_shards) for k in plan.todo],
                            unmapped(since), keys)
    wait(futures)
    try:
        shards = [f.result() for f in futures]
    except BaseException:
        discard_staging(st.url, run)
        raise
    merged = merge_inputs(shards)
    return ShardedInput(run, shards, merged["n_quarantined"], merged["notes"])


def score_one_pass(st: Store, bundle: Bundle, data: str, params: ScoreParams, as_of: dt.date,
                   calendar: Calendar) -> tuple[dict, ShardedInput] | None:
    """Every shard read, validated and forecast in one pass, by tasks that each take a run of consecutive
    shards (``task_groups``: at least one task per worker thread, at most ``Settings.shard_task_series``
    series a task) and write only their part (the rows never leave the worker), then one atomic assemble:
    the sharded run when ``as_of`` and the calendar are known before any shard is read. None when
    ``as_of`` was the newest date read but no shard has a valid row on it (every row of that date
    quarantined): the staged run then finds the date."""
    run, plan = _plan(st, data, params.columns, params.shards)
    todo = plan.todo
    tasks = [[todo[i] for i in g] for g in task_groups([plan.sizes[k] for k in todo], worker_slots(),
                                                        Settings().shard_task_series)]
    get_run_logger().info("%d shard(s) scored by %d task(s)", len(todo), len(tasks))
    keys = [f"{staging_prefix(run)}parts/{as_of}/{t[0]:05d}-{t[-1]:05d}.parquet" for t in tasks]
    try:
        futures = one_pass_step.map(unmapped(st.url), unmapped(params.model_name), unmapped(bundle.version),
                                    unmapped(data), unmapped(params.columns), [[plan.groups[k] for k in t] for t in tasks],
                                    [[(k, params.shards) for k in t] for t in tasks], unmapped(as_of),
                                    unmapped(calendar), keys)
        wait(futures)
        runs: list[ShardRun] = [f.result() for f in futures]
        shards = [s for r in runs for s in r.inputs]
        first, last = min(s.first for s in shards), max(s.last for s in shards)
        if params.as_of is None and last.date() < as_of:
            return None
        if as_of < first.date() or as_of > last.date():
            raise ScoreError(f"unknown as_of {as_of}: the data covers {first.date()} to {last.date()}")
        merged = merge_inputs(shards)
        read = ShardedInput(run, shards, merged["n_quarantined"], merged["notes"])
        return _assemble(st, bundle, [r.part for r in runs], calendar, as_of, params.model_name,
                         params.adapt_widths, read.notes), read
    finally:
        discard_staging(st.url, run)


def score_staged(st: Store, bundle: Bundle, read: ShardedInput, as_of: dt.date | None, model_name: str,
                 adapt_widths: bool = True) -> dict:
    """Score staged shards as of one date (None: the newest date of the data): every shard as a
    mapped task, then one task writes the partition. Parts stage under the run's folder."""
    as_of, calendar = plan_calendar(bundle, read.shards, as_of)
    staged = [s.staged for s in read.shards]
    keys = [f"{staging_prefix(read.run)}parts/{as_of}/{k:05d}.parquet" for k in range(len(staged))]
    futures = shard_step.map(unmapped(st.url), unmapped(model_name), unmapped(bundle.version), staged,
                             unmapped(as_of), unmapped(calendar), keys)
    wait(futures)
    try:
        parts = [f.result() for f in futures]
    except BaseException:
        for key in keys:
            st.delete(key)
        raise
    return _assemble(st, bundle, parts, calendar, as_of, model_name, adapt_widths, read.notes)


def _assemble(st: Store, bundle: Bundle, parts: list[ScorePart], calendar: Calendar, as_of: dt.date,
              model_name: str, adapt_widths: bool, notes: dict) -> dict:
    """The partition from every shard's part, widths adapted from the monitor's actuals (one task)."""
    widths = adapted_widths(st, bundle, model_name, as_of, adapt_widths)
    return {**assemble_step(st.url, parts, bundle.config["params"]["clean"]["max_gap"], calendar, as_of,
                            model_name, bundle.version, widths["factors"] if widths else None,
                            timestamps_zone(notes)), "widths": widths}


def score_in_shards(st: Store, bundle: Bundle, data: str, params: ScoreParams) -> tuple[dict, ShardedInput]:
    """``forecast_and_write`` with no process holding the whole catalogue (``nightcast.tasks.serving.sharded``): the
    partition is written only once every shard is done, in one atomic object, and a failed run
    leaves it as it was. The run's staging is deleted either way.

    One pass per shard (``score_one_pass``) when the model's calendar is fixed and ``as_of`` is given
    or read from the timestamp column's statistics; otherwise (business-day holidays come from the
    whole catalogue; CSV input) shards stage their rows, the calendar is planned, then they score."""
    calendar = fixed_calendar(bundle)
    as_of = params.as_of or (newest_date(data, params.columns) if calendar else None)
    if calendar and as_of:
        done = score_one_pass(st, bundle, data, params, as_of, calendar)
        if done is not None:
            return done
        get_run_logger().info("no valid row on %s, the newest date read: finding the newest valid date", as_of)
    since = scoring_span_start(bundle, params.as_of) if params.as_of else None
    read = read_in_shards(st, params.model_name, bundle.version, data, params.columns, params.shards, since)
    try:
        return score_staged(st, bundle, read, params.as_of, params.model_name, params.adapt_widths), read
    finally:
        discard_staging(st.url, read.run)


def read_for_scoring(bundle: Bundle, data: str, params: ScoreParams):  # noqa: ANN201 - (ValidationResult, date)
    """Read and validate what scoring as of ``params.as_of`` (empty: the newest date) needs: on Parquet
    with a typed timestamp, only the rows from the bundle's scoring span on (``load_observations``'s
    ``since``); validation judges the rows read. When the newest valid date turns out earlier than the
    newest date read (its rows all quarantined), the data is read again whole for that date."""
    max_bad = bundle.config["params"]["clean"]["max_bad_share"]
    as_of = params.as_of or newest_date(data, params.columns)
    since = scoring_span_start(bundle, as_of) if as_of else None
    checked = validate(ingest(data, params.columns, since=since), max_bad, params.columns.timestamp_format,
                       covariate_kinds(bundle))
    newest = checked.valid["timestamp"].max().date()
    if params.as_of is None and since is not None and newest < as_of:
        checked = validate(ingest(data, params.columns), max_bad, params.columns.timestamp_format,
                           covariate_kinds(bundle))
    return checked, params.as_of or newest


@flow(name="score", log_prints=True, task_runner=SettingsTaskRunner())
def score_flow(params: ScoreParams = ScoreParams(), store: str | None = None) -> dict:
    """Forecast every series from the champion as of ``params.as_of``.

    Args:
        params: data, as_of date (empty: the newest date in the data), model name and columns.
        store: object store root (local directory or s3://bucket/prefix); empty: $NIGHTCAST_STORE.
    """
    settings, st = start_run(store, params.data)
    logger = get_run_logger()
    bundle = champion(st, params.model_name)
    if params.shards > 1:
        out, read = score_in_shards(st, bundle, params.data or settings.data, params)
        n_quarantined, notes = read.n_quarantined, read.notes
    else:
        checked, as_of = read_for_scoring(bundle, params.data or settings.data, params)
        out = score_date(st, bundle, checked.valid, as_of, params.model_name, params.adapt_widths,
                         timestamps_zone(checked.notes))
        n_quarantined, notes = checked.n_quarantined, checked.notes
    as_of = out["as_of"]
    lost = notes.get("series_every_row_quarantined") or []
    if lost:
        logger.warning("%d series had every input row quarantined and cannot be scored: %s%s", len(lost),
                       ", ".join(map(str, lost[:20])), " ..." if len(lost) > 20 else "")
    for sid, why in list(out["skipped"].items())[:20]:
        logger.warning("series %s not scored: %s", sid, why)
    if len(out["skipped"]) > 20:
        logger.warning("... and %d more series not scored (listed in the score artifact)", len(out["skipped"]) - 20)
    logger.info("wrote %d forecasts for %d series as of %s to %s (served by method: %s)",
                out["rows"], out["series"], as_of, out["forecasts"], out["methods"])
    facts = [f"`{out['forecasts']}`", f"{out['rows']} rows, {out['series']} series, model version `{bundle.version}`",
             f"served by method: {out['methods']}", f"quarantined input rows: {n_quarantined}"]
    if out.get("widths"):
        facts.append(f"interval widths x {_short(out['widths']['factors'], 48)} per horizon step, from "
                     f"{sum(out['widths']['points'])} monitored actuals through {out['widths']['monitored_through']}")
    publish_markdown(artifact_key("score", params.model_name), f"forecasts as of {as_of}",
                     f"Forecasts {params.model_name} as of {as_of}", facts,
                     {"Not scored": [f"`{sid}`: {why}" for sid, why in list(out["skipped"].items())[:200]]})
    return {**out, "quarantined_rows": n_quarantined, "input_notes": notes}
