"""monitor: score the stored forecasts on the actuals that arrived; emit a drift event for a retrain.

Daily, after scoring. See ``tasks/ops/monitor.py`` for what is computed and the ``monitoring/`` layout,
``schemas/monitoring.py`` for the frames and the drift rule.
"""

from __future__ import annotations

import datetime as dt

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from nightcast.schemas.monitoring import MonitorParams
from nightcast.tasks.data.clean import Calendar
from nightcast.tasks.data.ingest import load_observations
from nightcast.tasks.ops.monitor import (Drift, artifact_rows, assess, emit_drift_event, gather_actuals, hold_drift_event, horizon_days,
                           last_drift_event, monitoring_dates, record_drift_event, retrains_in_flight,
                           read_forecast_window, read_state, test_span_mase, write_monitoring)
from nightcast.tasks.ops.registry import load_champion
from nightcast.tasks.ops.storage import Store
from nightcast.tasks.data.validate import validate_observations
from nightcast.flows.report import publish_report
from nightcast.flows.runtime import artifact_key, start_run, step

ingest = step(load_observations, "ingest", io=True, timeout_s=3600)
validate = step(validate_observations, "validate", timeout_s=3600)
champion = step(load_champion, "load-champion", io=True)
read_forecasts = step(read_forecast_window, "read-forecasts", io=True, timeout_s=3600)
read_previous = step(read_state, "read-monitoring-state", io=True, timeout_s=3600)
assess_day = step(assess, "assess", timeout_s=3600)
write = step(write_monitoring, "write-monitoring", io=True)
emit_drift = step(emit_drift_event, "emit-drift-event")
read_last_event = step(last_drift_event, "read-last-drift-event", io=True)
record_event = step(record_drift_event, "record-drift-event", io=True)
list_runs = step(monitoring_dates, "list-monitoring-runs", io=True)


def _drift_event(st: Store, params: MonitorParams, champion_version: str, day: dt.date, drift: Drift,
                 data: str) -> tuple[dict | None, str | None]:
    """When the champion drifted: the drift event, unless the cooldown or a retrain already in flight holds it
    (then why). Nothing when it did not drift."""
    logger = get_run_logger()
    if not drift.fired:
        logger.info("drift: %s", drift.reason)
        return None, None
    logger.warning("drift detected for %s: %s", params.model_name, drift.reason)
    try:
        in_flight = retrains_in_flight(params.model_name)
    except Exception as exc:  # noqa: BLE001 - the API's run list is advisory; the event still goes out
        logger.warning("could not list retrain runs in flight (%s); not deduplicating", exc)
        in_flight = []
    held = hold_drift_event(read_last_event(st, params.model_name), champion_version, day,
                            params.drift.cooldown_days, in_flight)
    if held:
        logger.warning("drift event for %s %s", params.model_name, held)
        return None, held
    event = emit_drift(params.model_name, day, drift, st.url, data)
    if event:
        record_event(st, params.model_name, day, champion_version, event)
    return event, None


@flow(name="monitor", log_prints=True)
def monitor_flow(params: MonitorParams = MonitorParams(), store: str | None = None) -> dict:
    """Join every stored forecast whose target time has passed with the actuals, judge it against
    seasonal naive from the same origin, write ``monitoring/``, and emit ``nightcast.drift.detected``
    when the champion drifts (the retrain deployment's trigger starts a retrain).

    Args:
        params: data, monitoring date (empty: the newest date in the data), model name, columns,
            how far back forecasts are re-joined, and the drift rule.
        store: object store root (local directory or s3://bucket/prefix); empty: $NIGHTCAST_STORE.
    """
    settings, st = start_run(store, params.data)
    logger = get_run_logger()
    data = params.data or settings.data
    bundle = champion(st, params.model_name)
    raw = ingest(data, params.columns)
    checked = validate(raw, bundle.config["params"]["clean"]["max_bad_share"], params.columns.timestamp_format)
    day = params.as_of or checked.valid["timestamp"].max().date()
    later = [d for d in list_runs(st, "runs", params.model_name) if d > day]
    if later:
        logger.warning("monitoring %s after later dates (%s ...): run dates in order, or re-run the later ones",
                       day, later[0])
    actuals = gather_actuals(checked, day, params.columns.timestamp_format)
    calendar = Calendar.from_json(bundle.config["calendar"])
    # at least the horizon's reach, so every point is re-joined once it falls due
    reach = horizon_days(bundle.config["params"]["window"]["horizon"], calendar) + 1
    recheck_from = day - dt.timedelta(days=max(params.recheck_days, reach))
    forecasts, partitions = read_forecasts(st, params.model_name, recheck_from, day)
    previous = read_previous(st, params.model_name, before=day)
    result = assess_day(forecasts, actuals, previous, model=params.model_name, day=day,
                        season=int(bundle.config.get("season_length") or bundle.config["network_args"]["season"]),
                        calendar=calendar, recheck_from=recheck_from,
                        partitions=partitions, rule=params.drift, champion=bundle.version,
                        test_mase=test_span_mase(bundle.metrics))
    keys = write(st, params.model_name, day, result)
    run = result.run.row(0, named=True)
    logger.info("monitoring %s on %s: %d due points, %d scored, %d pending, %d quarantined; this run: %d new, "
                "%d late, %d revised; MASE %s vs seasonal naive %s", params.model_name, day, run["points"],
                run["scored"], run["pending"], run["quarantined"], run["new"], run["late"], run["revised"],
                run["mase"], run["snaive_mase"])
    event, held = _drift_event(st, params, bundle.version, day, result.drift, data)
    table = artifact_rows(result.summary)
    create_table_artifact(
        key=artifact_key("monitor", params.model_name), table=table,
        description=(f"**{params.model_name}** on actuals up to {day}: {run['scored']} scored points, "
                     f"{run['pending'] + run['quarantined']} waiting for an actual; this run {run['new']} new, "
                     f"{run['late']} late, {run['revised']} revised. Drift: "
                     f"{'**detected**' if result.drift.fired else 'no'} ({result.drift.reason})"
                     + (f"; event {held}" if held else "")))
    report = publish_report(st, params.model_name)  # accuracy on actuals lands in the model's report
    return {"model": params.model_name, "date": day, "run": run, "table": table, "report": report,
            "drift": {"fired": result.drift.fired, "reason": result.drift.reason, "champion": result.drift.champion,
                      "mase": result.drift.mase, "snaive_mase": result.drift.snaive_mase, "held": held},
            "event": event, "files": {t: st.uri(k) for t, k in keys.items()}}
