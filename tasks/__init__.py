"""The steps of the pipeline: plain, typed functions; flows wrap them as Prefect tasks."""
