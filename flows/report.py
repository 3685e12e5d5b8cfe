"""report: write the model's HTML report into the store and link it from a Prefect artifact."""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from nightcast.schemas.params import _MODEL_NAME
from nightcast.tasks.ops.report import ReportError, write_report
from nightcast.tasks.ops.storage import Store
from nightcast.flows.runtime import artifact_key, start_run, step

write = step(write_report, "write-report", io=True, timeout_s=1800)


def publish_report(st: Store, model_name: str) -> str | None:
    """Refresh the model's HTML report from inside another flow (retrain, monitor); a report that cannot
    be written logs a warning and never fails a finished run."""
    try:
        return write(st, model_name)["latest"]
    except ReportError as exc:
        get_run_logger().warning("report not written: %s", exc)
        return None


@flow(name="report", log_prints=True)
def report_flow(model_name: Annotated[str, Field(pattern=_MODEL_NAME)] = "lstm", store: str | None = None) -> dict:
    """Write ``reports/<model>/latest.html`` and today's dated copy from the registry and monitoring.

    Args:
        model_name: the registry name of the model to report on.
        store: object store root (local directory or s3://bucket/prefix); empty: $NIGHTCAST_STORE.
    """
    _, st = start_run(store)
    out = write(st, model_name)
    get_run_logger().info("report for %s (champion %s) written to %s", model_name, out["version"], out["latest"])
    create_markdown_artifact(
        key=artifact_key("report", model_name), description=f"HTML report of {model_name}",
        markdown=(f"# Report {model_name}\n\n"
                  f"- latest: [{out['latest']}]({out['latest']})\n- this day's copy: `{out['dated']}`\n"
                  f"- champion `{out['version']}`; monitoring data: {'yes' if out['monitoring'] else 'not yet'}\n"
                  "\nOne self-contained HTML file: open it in any browser, offline.\n"))
    return out
