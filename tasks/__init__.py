"""The steps of the pipeline, grouped by concern: data, forecast, serving, ops. Plain, typed
functions; flows wrap them as Prefect tasks."""
