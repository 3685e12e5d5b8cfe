"""The Prefect flows: each composes steps from nightcast.tasks; the CLI and the embedded server."""
