"""score: load the champion, forecast from the data up to ``as_of``, write the partition."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from schemas.params import ScoreParams
from tasks.ingest import load_observations
from tasks.registry import load_champion
from tasks.score import forecast_from_bundle, write_forecasts
from tasks.validate import validate_observations
from flows.runtime import start_run

_io = dict(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)

ingest = task(load_observations, name="ingest", **_io)
validate = task(validate_observations, name="validate", cache_policy=NO_CACHE)
champion = task(load_champion, name="load-champion", **_io)
forecast = task(forecast_from_bundle, name="forecast", cache_policy=NO_CACHE)
write = task(write_forecasts, name="write-forecasts", **_io)


@flow(name="score", log_prints=True)
def score_flow(params: ScoreParams, store: str | None = None) -> dict:
    """Forecast every series from the champion as of ``params.as_of``."""
    _, st = start_run(store)
    logger = get_run_logger()
    bundle = champion(st, params.model_name)
    raw = ingest(params.data, params.columns)
    checked = validate(raw, bundle.config["params"]["clean"]["max_bad_share"], params.columns.timestamp_format)
    forecasts, report = forecast(bundle, checked.valid, params.as_of)
    for sid, why in report.skipped.items():
        logger.warning("series %s not scored: %s", sid, why)
    key = write(st, forecasts, params.model_name, params.as_of)
    logger.info("wrote %d forecasts for %d series to %s", forecasts.height, report.series_scored, st.uri(key))
    return {"forecasts": st.uri(key), "rows": forecasts.height, "series": report.series_scored,
            "skipped": report.skipped, "model_version": bundle.version, "quarantined_rows": checked.n_quarantined}
