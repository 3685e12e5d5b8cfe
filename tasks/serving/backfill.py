"""Backfill planning: which bundle scores each ``as_of`` date, the look-ahead refusal, which dates are
already written, and the per-date outcome table. The flow (``flows/backfill.py``) runs the dates.

Each date is forecast from the data up to the end of that date only, with the bundle given, else
the champion in force on that date, else the current champion. A date that comes before the end of
its champion's training data (history older than the first promotion) would be scored by a model
that has seen its future: refused unless a version is named or look-ahead is allowed.
"""

from __future__ import annotations

import datetime as dt

from nightcast.schemas.params import BackfillParams
from nightcast.tasks.data.ingest import first_line
from nightcast.tasks.ops.registry import Bundle, RegistryError, champion_as_of, read_champion
from nightcast.tasks.ops.storage import Store
from nightcast.tasks.serving.score import forecasts_key


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
    """The outcome table as fixed-width text (the log and the CLI print it)."""
    head = f"{'as_of':<12}{'status':<9}{'rows':>6}{'series':>8}  {'model_version':<34}detail"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['as_of']:<12}{r['status']:<9}{r['rows']:>6}{r['series']:>8}  "
                     f"{r['model_version']:<34}{r['detail']}")
    return "\n".join(lines)


def split_written(store: Store, params: BackfillParams, plan: dict[dt.date, str]) -> tuple[list[dt.date], dict]:
    """The dates to score, and a ``skipped`` row for each date whose partition exists (unless overwrite)."""
    todo, rows = [], {}
    for day in plan:
        if not params.overwrite and store.exists(forecasts_key(params.model_name, day)):
            rows[day] = {"status": "skipped", "rows": 0, "series": 0, "model_version": "",
                         "detail": "partition exists (overwrite=false)"}
        else:
            todo.append(day)
    return todo, rows


def outcome_row(result: dict | BaseException, version: str) -> dict:
    """A scored date's row of the outcome table: done (rows, series, where) or failed (the first line of why)."""
    if isinstance(result, BaseException):
        return {"status": "failed", "rows": 0, "series": 0, "model_version": version,
                "detail": f"{type(result).__name__}: {first_line(result)}"}
    skipped = len(result["skipped"])
    return {"status": "done", "rows": result["rows"], "series": result["series"],
            "model_version": result["model_version"],
            "detail": result["forecasts"] + (f" ({skipped} series skipped)" if skipped else "")}


def outcome_table(rows: dict[dt.date, dict]) -> tuple[list[dict], dict[str, int]]:
    """The rows by date, and how many dates are done, skipped and failed."""
    table = [{"as_of": d.isoformat(), **rows[d]} for d in sorted(rows)]
    return table, {s: sum(r["status"] == s for r in table) for s in ("done", "skipped", "failed")}
