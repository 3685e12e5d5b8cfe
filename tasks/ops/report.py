"""The model report: one self-contained HTML file per model, for people who read forecasts.

Written into the store beside the models::

    reports/<model>/latest.html         # replaced by every run (atomic)
    reports/<model>/<YYYY-MM-DD>.html   # the same page, kept per day

``<model>`` is ``safe_key_part(model)``. The page needs nothing but itself: plots are
inline base64 PNG, the style sheet is inline, there is no script and no link out.
Every string that comes from data (model names, versions, series ids, reasons,
tuning parameters) is HTML-escaped.

Sources: the registry (champion pointer, promotion history, the champion's bundle:
``metrics.json``, ``manifest.json``, ``history.csv``, ``plots/*.png``, ``tuning/*``) and
the monitoring layout of ``schemas/monitoring.py`` (layout 1)::

    monitoring/{runs,summary,points}/model=<model>/date=<YYYY-MM-DD>/<file>.parquet

read tolerantly: until monitoring has run the page says "no monitoring data yet"; a file
that cannot be read, or has another layout, is skipped and named; missing columns drop
what needs them, never the page.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from nightcast.tasks.ops.registry import Bundle, RegistryError, load_bundle, read_champion
from nightcast.tasks.ops.storage import Store, safe_key_part

REPORT_PREFIX = "reports"
MONITORING_PREFIX = "monitoring"
SECTIONS = {  # id -> heading, in page order (the browser test looks for every heading)
    "champion": "Champion",
    "test-metrics": "Test-span metrics",
    "served-mix": "Served methods",
    "actuals": "Accuracy on actuals",
    "coverage": "Interval coverage",
    "worst-series": "Worst series",
    "learning-curve": "Learning curve",
    "tuning": "Tuning history",
}
NO_MONITORING = "no monitoring data yet"
MONITORING_LAYOUT = "1"  # the schemas/monitoring.py layout this reader understands
_LAYOUT_META = "nightcast.monitoring_layout"
POINTS_DAYS = 28  # worst-series plots on actuals: forecasts from the newest 28 days of monitoring
_POINT_COLUMNS = ["series_id", "timestamp", "as_of", "model_version", "forecast", "lower", "upper", "actual",
                  "status", "date"]
_RUNS_SHOWN = 60  # monitoring runs read (one small file each)
_HISTORY_SHOWN = 20  # promotion records listed
_WORST = 10  # worst series listed; plotted: _WORST_PLOTS
_WORST_PLOTS = 4


class ReportError(RuntimeError):
    """The report cannot be written (no champion, unreadable bundle)."""


@dataclass
class Monitoring:
    """What the monitoring layout holds for a model (frames may be empty)."""

    runs: pl.DataFrame  # MonitoringRun rows, oldest first: drift decisions, counts
    summary: pl.DataFrame  # the newest MonitoringSummary: overall, by origin, version, method, horizon, series
    points: pl.DataFrame = field(default_factory=pl.DataFrame)  # the worst series' scored points, recent origins
    notes: list[str] = field(default_factory=list)  # files skipped


@dataclass
class ReportInputs:
    """Everything the page shows, read from the store once."""

    name: str
    pointer: dict
    bundle: Bundle
    files: dict[str, bytes]  # plots/*.png, tuning/* of the champion's bundle
    promotions: list[dict]  # newest first, the current pointer included
    latest: dict | None = None  # newest bundle when it is not the champion: version, decision
    monitoring: Monitoring | None = None
    store_url: str = ""
    bundle_uri: str = ""


# ---------------------------------------------------------------- reading (the only I/O)

def _prefix(name: str) -> str:
    return f"models/{safe_key_part(name)}"


def report_keys(name: str, day: dt.date) -> tuple[str, str]:
    """The store keys of the latest page and of the dated copy."""
    base = f"{REPORT_PREFIX}/{safe_key_part(name)}"
    return f"{base}/latest.html", f"{base}/{day.isoformat()}.html"


def _verified(store: Store, prefix: str, manifest: dict, fname: str) -> bytes | None:
    """A bundle file whose checksum matches the manifest; ``None`` when absent or not listed."""
    digest = manifest.get("files", {}).get(fname)
    if digest is None:
        return None
    try:
        data = store.read_bytes(f"{prefix}/{fname}")
    except FileNotFoundError:
        return None
    if hashlib.sha256(data).hexdigest() != digest:
        raise ReportError(f"{store.uri(prefix)}/{fname} is corrupt (checksum mismatch)")
    return data


def _promotions(store: Store, name: str, pointer: dict) -> list[dict]:
    """The promotion records, newest first (the pointer counts: its record may be missing after a crash)."""
    keys = sorted(k for k in store.list(f"{_prefix(name)}/champions/") if k.endswith(".json"))
    records = {}
    for key in keys[-_HISTORY_SHOWN:]:
        try:
            rec = json.loads(store.read_bytes(key))
        except (FileNotFoundError, ValueError):
            continue
        if isinstance(rec, dict) and rec.get("version"):
            records[(rec.get("promoted_at") or "", rec["version"])] = rec
    records[(pointer.get("promoted_at") or "", pointer["version"])] = pointer
    return [records[k] for k in sorted(records, reverse=True)][:_HISTORY_SHOWN]


def _latest_candidate(store: Store, name: str, champion: str) -> dict | None:
    """The newest complete bundle when it is not the champion, with the decision it recorded."""
    base = f"{_prefix(name)}/versions/"
    complete = sorted(k[len(base):].split("/", 1)[0] for k in store.list(base) if k.endswith("/manifest.json"))
    if not complete or complete[-1] <= champion:
        return None
    version = complete[-1]
    try:
        manifest = json.loads(store.read_bytes(f"{base}{version}/manifest.json"))
        metrics = json.loads(_verified(store, f"{base}{version}", manifest, "metrics.json") or b"{}")
    except (FileNotFoundError, ValueError, ReportError) as exc:
        return {"version": version, "decision": f"unreadable bundle ({exc})"}
    return {"version": version, "decision": (metrics.get("decision") or {}).get("reason", "no decision recorded"),
            "created_at": manifest.get("created_at")}


def _dated_keys(store: Store, table: str, name: str) -> dict[dt.date, str]:
    """``monitoring/<table>/model=<m>/date=<D>/<file>.parquet`` keys by date, oldest first."""
    prefix = f"{MONITORING_PREFIX}/{table}/model={safe_key_part(name)}/"
    found = {}
    for key in store.list(prefix):
        m = re.fullmatch(r"date=(\d{4}-\d{2}-\d{2})/[^/]+\.parquet", key[len(prefix):])
        if m:
            found[dt.date.fromisoformat(m.group(1))] = key
    return dict(sorted(found.items()))


def _read_table(store: Store, key: str, notes: list[str], columns: list[str] | None = None) -> pl.DataFrame | None:
    """One monitoring file, ``None`` (and a note) when it cannot be read or has a layout this code does not know."""
    try:
        data = store.read_bytes(key)
        layout = pl.read_parquet_metadata(io.BytesIO(data)).get(_LAYOUT_META)
        if layout not in (None, MONITORING_LAYOUT):
            notes.append(f"{key}: monitoring layout {layout!r}, this report reads {MONITORING_LAYOUT!r}; skipped")
            return None
        frame = pl.read_parquet(io.BytesIO(data))
    except (FileNotFoundError, OSError, ValueError, pl.exceptions.PolarsError) as exc:
        notes.append(f"{key}: unreadable ({type(exc).__name__}); skipped")
        return None
    if columns is not None:
        frame = frame.select([c for c in columns if c in frame.columns])
    return frame


def read_monitoring(store: Store, name: str) -> Monitoring | None:
    """What monitoring wrote for a model, ``None`` when it has written nothing yet.

    The newest ``_RUNS_SHOWN`` run rows, the newest summary, and, for the worst series on actuals,
    the state of their points forecast in the newest ``POINTS_DAYS`` days (each point's newest
    change-log row: partitions from before the oldest origin cannot hold a newer one).
    """
    runs_keys, summary_keys = _dated_keys(store, "runs", name), _dated_keys(store, "summary", name)
    if not runs_keys and not summary_keys:
        return None
    notes: list[str] = []
    runs = [f for k in list(runs_keys.values())[-_RUNS_SHOWN:] if (f := _read_table(store, k, notes)) is not None]
    summary = None
    for key in reversed(summary_keys.values()):  # the newest one that reads
        if (summary := _read_table(store, key, notes)) is not None:
            break
    out = Monitoring(runs=pl.concat(runs, how="diagonal_relaxed") if runs else pl.DataFrame(),
                     summary=summary if summary is not None else pl.DataFrame(), notes=notes)
    worst = worst_on_actuals(out.summary)["series_id"].head(_WORST_PLOTS).to_list() if out.summary.height else []
    points_keys = _dated_keys(store, "points", name)
    if worst and points_keys:
        since = max(points_keys) - dt.timedelta(days=POINTS_DAYS)
        frames = []
        for day, key in points_keys.items():
            if day >= since and (f := _read_table(store, key, notes, _POINT_COLUMNS)) is not None:
                if {"series_id", "as_of"} <= set(f.columns):
                    frames.append(f.filter(pl.col("series_id").is_in(worst), pl.col("as_of") >= since))
        if frames:
            log = pl.concat(frames, how="diagonal_relaxed")
            key_cols = [c for c in ("series_id", "timestamp", "as_of", "model_version") if c in log.columns]
            if "date" in log.columns:
                log = log.sort("date", maintain_order=True).unique(key_cols, keep="last", maintain_order=True)
            if "status" in log.columns:
                log = log.filter(pl.col("status") == "scored")
            out.points = log
    return out


def gather_report(store: Store, name: str) -> ReportInputs:
    """Read what the report shows: champion, bundle, promotion history, newest candidate, monitoring."""
    try:
        pointer = read_champion(store, name)
    except RegistryError as exc:
        raise ReportError(str(exc)) from exc
    if pointer is None:
        raise ReportError(f"model {name!r} has no champion in {store.url}: run `nightcast retrain` first")
    try:
        bundle = load_bundle(store, name, pointer["version"])
    except RegistryError as exc:
        raise ReportError(str(exc)) from exc
    prefix = f"{_prefix(name)}/versions/{bundle.version}"
    wanted = [f for f in bundle.manifest.get("files", {}) if f.startswith(("plots/", "tuning/")) and
              f.endswith((".png", ".csv"))]
    files = {f: data for f in wanted if (data := _verified(store, prefix, bundle.manifest, f)) is not None}
    return ReportInputs(name=name, pointer=pointer, bundle=bundle, files=files,
                        promotions=_promotions(store, name, pointer),
                        latest=_latest_candidate(store, name, bundle.version),
                        monitoring=read_monitoring(store, name), store_url=store.url, bundle_uri=store.uri(prefix))


# ---------------------------------------------------------------- values for the template (pure)

def _value(value: Any) -> str:
    """Any value as text (the template escapes it); numbers formatted compactly, a missing one as a dash."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return "–" if value != value else (f"{value:,.4g}" if abs(value) < 1e6 else f"{value:,.0f}")
    return str(value)


def _data_uri(png: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(png).decode()}"


def _when(stamp: Any) -> Any:
    """An ISO timestamp as ``YYYY-MM-DD HH:MM UTC``; anything else as it is."""
    try:
        return dt.datetime.fromisoformat(str(stamp)).astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return stamp


def _pct(x: Any) -> str:
    return "–" if x is None else f"{100 * float(x):.1f} %"


# ---------------------------------------------------------------- plots (pure)

def _line_png(frame: pl.DataFrame, x: str, ys: dict[str, str], title: str, ylabel: str,
              hline: tuple[float, str] | None = None) -> bytes:
    """One line per column of ``ys`` (column -> label) against the dates in ``x``."""
    import matplotlib.dates as mdates

    from nightcast.tasks.ops.plots import _png, _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    xs = frame[x].to_list()
    for col, label in ys.items():
        ax.plot(xs, frame[col].to_list(), marker="o", markersize=3, label=label)
    if hline is not None:
        ax.axhline(hline[0], color="grey", linestyle=":", label=hline[1])
    if len(xs) <= 12:
        ax.set_xticks(xs)  # one tick per date, never hours between them
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
    ax.set(title=title, ylabel=ylabel)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    return _png(fig)


def _series_png(points: pl.DataFrame, series: list[str]) -> bytes:
    """Forecast vs actual on actuals for a few series, one panel each: per forecast origin its actuals
    and its forecast (no line across the steps no origin reached), the newest origin's interval.
    (Loops over these few series and their origins only.)"""
    from nightcast.tasks.ops.plots import _png, _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(len(series), 1, figsize=(8, 2.4 * len(series)), squeeze=False)
    for ax, sid in zip(axes[:, 0], series):
        paths = points.filter(pl.col("series_id") == sid).sort("as_of", "timestamp").partition_by(
            "as_of", maintain_order=True)
        for i, path in enumerate(paths):
            t = path["timestamp"].to_list()
            ax.plot(t, path["actual"].to_list(), color="black", lw=1.2, label="actual" if i == 0 else None)
            ax.plot(t, path["forecast"].to_list(), color="tab:blue", lw=1.2,
                    label="forecast (one line per origin)" if i == 0 else None)
        newest = paths[-1] if paths else None
        if (newest is not None and {"lower", "upper"} <= set(newest.columns)
                and newest["lower"].null_count() < newest.height):
            ax.fill_between(newest["timestamp"].to_list(), newest["lower"].fill_null(float("nan")).to_list(),
                            newest["upper"].fill_null(float("nan")).to_list(), color="tab:blue", alpha=0.15,
                            label="interval (newest origin)")
        ax.set_title(sid.replace("$", r"\$"), fontsize=9)  # a series id is text, never mathtext
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7, loc="upper left")
    return _png(fig)


# ---------------------------------------------------------------- monitoring views (pure)

def _dimension(summary: pl.DataFrame, dim: str) -> pl.DataFrame:
    if not {"dimension", "key"} <= set(summary.columns):
        return pl.DataFrame()
    return summary.filter(pl.col("dimension") == dim)


def worst_on_actuals(summary: pl.DataFrame, n: int = _WORST) -> pl.DataFrame:
    """The ``n`` scored series with the highest MASE on actuals (newest summary), ``series_id`` first."""
    per = _dimension(summary, "series_id")
    if per.height == 0 or "mase" not in per.columns:
        return pl.DataFrame(schema={"series_id": pl.String})
    if "points" in per.columns:
        per = per.filter(pl.col("points") > 0)
    return per.sort(["mase", "key"], descending=[True, False], nulls_last=True).head(n).rename({"key": "series_id"})


def by_origin(summary: pl.DataFrame) -> pl.DataFrame:
    """Accuracy on actuals per forecast origin (``as_of``), oldest first, with a date column for plots."""
    rows = _dimension(summary, "as_of")
    if rows.height == 0:
        return rows
    return rows.with_columns(pl.col("key").str.to_date(strict=False).alias("as_of")).drop_nulls("as_of").sort("as_of")


def _summary_rows(frame: pl.DataFrame, first: str) -> list[dict]:
    """Summary rows for a table: the group, then what a reader compares (missing columns left out)."""
    cols = {"key": first, "points": "points", "pending": "pending", "mase": "MASE",
            "snaive_mase": "seasonal naive MASE",
            "smape": "sMAPE %", "rmse": "RMSE", "bias": "bias", "coverage": "coverage"}
    have = [c for c in cols if c in frame.columns]
    rows = frame.select(have).rename({c: cols[c] for c in have})
    if "coverage" in rows.columns:
        rows = rows.with_columns(pl.format("{} %", (pl.col("coverage") * 100).round(1)).alias("coverage"))
    return rows.to_dicts()


# ---------------------------------------------------------------- sections (pure): what each shows

def _champion_section(inp: ReportInputs) -> dict:
    p, man = inp.pointer, inp.bundle.manifest
    data = man.get("data") or {}
    facts = {"model": inp.name, "version": p["version"], "promoted at": _when(p.get("promoted_at")),
             "why": p.get("reason"), "previous champion": p.get("previous") or "none (first champion)",
             "trained on": f"{data.get('series')} series, {data.get('rows')} rows, {data.get('start')} to "
                           f"{data.get('end')}" if data else None,
             "data": data.get("uri"), "bundle": inp.bundle_uri}
    rows = [{"promoted at": _when(r.get("promoted_at")), "version": r.get("version"), "previous": r.get("previous"),
             "reason": r.get("reason")} for r in inp.promotions]
    return {"facts": facts, "latest": inp.latest, "promotions": rows}


def _test_rows(metrics: dict) -> tuple[list[dict], list[dict]]:
    """metrics.json "test": the overall row per model, and the served forecasts' worst series."""
    rows = [r for r in metrics.get("test") or [] if isinstance(r, dict)]
    overall = sorted((r for r in rows if r.get("series_id") == "ALL"), key=lambda r: r.get("mase") or 0.0)
    worst = [r for r in rows if r.get("series_id") != "ALL" and r.get("model") == "served"]
    return overall, worst


def _metrics_section(inp: ReportInputs) -> dict:
    overall, _ = _test_rows(inp.bundle.metrics)
    comp = inp.bundle.metrics.get("comparison") or {}
    out = {"overall": overall, "columns": ["model", "rmse", "mae", "smape", "mase", "n"],
           "labels": {"rmse": "RMSE", "mae": "MAE", "smape": "sMAPE %", "mase": "MASE", "n": "points"},
           "no_champion": None, "comparison": None}
    if comp and comp.get("champion_version") is None:
        out["no_champion"] = comp.get("note") or "first model"
    elif comp:
        metric = (inp.bundle.config.get("params", {}).get("promotion") or {}).get("metric", "mase")
        out["comparison"] = {
            f"new (served), {metric}": comp.get("new"), f"champion, {metric}": comp.get("champion"),
            f"seasonal naive, {metric}": comp.get("seasonal_naive"), "champion version": comp.get("champion_version"),
            "windows": comp.get("windows"), "note": comp.get("note")}
    return out


def _mix_section(inp: ReportInputs, mon: Monitoring | None) -> dict:
    served = inp.bundle.metrics.get("served") or inp.bundle.manifest.get("served") or {}
    total = sum(int(v) for v in served.values()) or 1
    pooled = (inp.bundle.preprocessing.get("combination") or {})
    weights = dict(zip(pooled.get("candidates", []), pooled.get("pooled_weights", [])))
    by_method = _dimension(mon.summary, "method") if mon else pl.DataFrame()
    return {"methods": [{"method": m, "series": n, "share": int(n) / total} for m, n in served.items()],
            "weights": ", ".join(f"{m} {w:.2f}" for m, w in weights.items()),
            "by_method": _summary_rows(by_method, "method") if by_method.height else []}


def _actuals_section(mon: Monitoring | None) -> dict:
    if mon is None or mon.summary.height == 0:
        return {"summary": False, "notes": mon.notes if mon else []}
    out: dict[str, Any] = {"summary": True, "notes": mon.notes, "by_origin_png": None, "tables": [], "runs": None,
                           "day": mon.summary["date"].max() if "date" in mon.summary.columns else None,
                           "overall": _summary_rows(_dimension(mon.summary, "all"), "all")}
    origins = by_origin(mon.summary)
    if origins.height and {"mase", "snaive_mase"} <= set(origins.columns):
        out["by_origin_png"] = _line_png(origins, "as_of", {"mase": "model (served)", "snaive_mase": "seasonal naive"},
                                         "MASE on actuals by forecast origin", "MASE")
    for dim, title, label in (("as_of", "By forecast origin (newest 30)", "origin"),
                              ("model_version", "By model version", "version"), ("horizon", "By horizon step", "step")):
        rows = _dimension(mon.summary, dim)
        if dim == "as_of":
            rows = rows.sort("key").tail(30)
        elif dim == "horizon":
            rows = rows.sort(pl.col("key").cast(pl.Int64, strict=False))
        if rows.height:
            out["tables"].append({"title": title, "rows": _summary_rows(rows, label)})
    if mon.runs.height:
        out["runs"] = _runs_table(mon.runs)
    return out


def _runs_table(runs: pl.DataFrame) -> dict:
    """The newest 14 monitoring runs, drift as a word; the champion column only when they judged several."""
    labels = {"date": "date", "champion": "champion", "scored": "scored", "pending": "pending",
              "quarantined": "quarantined", "late": "scored late", "revised": "revised", "withdrawn": "withdrawn",
              "mase": "MASE", "snaive_mase": "seasonal naive MASE", "drift": "drift", "drift_reason": "decision"}
    runs = runs.sort("date", descending=True).head(14) if "date" in runs.columns else runs.tail(14)
    if "drift" in runs.columns:
        runs = runs.with_columns(pl.when(pl.col("drift")).then(pl.lit("DRIFT")).otherwise(pl.lit("no")).alias("drift"))
    same = "champion" in runs.columns and runs["champion"].n_unique() == 1
    cols = [c for c in labels if c in runs.columns and not (same and c == "champion")]
    return {"rows": runs.select(cols).to_dicts(), "columns": cols, "labels": labels,
            "champion": runs["champion"][0] if same else None}


def _coverage_section(inp: ReportInputs, mon: Monitoring | None) -> dict:
    intervals = inp.bundle.metrics.get("intervals")
    level = intervals.get("level") if intervals else None
    out: dict[str, Any] = {"intervals": None, "on_actuals": None, "png": None}
    if intervals:
        test = intervals.get("test") or {}
        out["intervals"] = {"method": intervals.get("method"), "nominal level": _pct(level),
                            "coverage on the test span": _pct(test.get("coverage")),
                            "mean width": test.get("mean_width"), "points": test.get("points")}
    overall = _dimension(mon.summary, "all") if mon else pl.DataFrame()
    if overall.height == 0 or "coverage" not in overall.columns:
        return out
    row = overall.row(0, named=True)
    out["on_actuals"] = {"coverage on actuals": _pct(row["coverage"]), "points with an interval": row.get("interval_points")}
    origins = by_origin(mon.summary).drop_nulls("coverage") if "coverage" in mon.summary.columns else pl.DataFrame()
    if origins.height:
        hline = (float(level), "nominal level") if level is not None else None
        out["png"] = _line_png(origins, "as_of", {"coverage": "coverage on actuals"},
                               "Interval coverage on actuals by forecast origin", "share inside", hline)
    return out


def _served_by(preprocessing: dict):  # noqa: ANN202 - series id -> text
    """What serves a series, as text: its combination weights (bundles from before combinations: the method)."""
    combination = preprocessing.get("combination")
    if not combination:
        selection = preprocessing.get("selection") or {}
        return lambda sid: selection.get(sid)
    names, per = combination["candidates"], combination.get("per_series", {})
    pooled = combination.get("pooled_weights")

    def text(sid: str) -> str:
        w = per.get(sid) or pooled or []
        return ", ".join(f"{m} {v:.2f}" for m, v in sorted(zip(names, w), key=lambda kv: -kv[1]) if v >= 0.05)

    return text


def _worst_section(inp: ReportInputs, mon: Monitoring | None) -> dict:
    _, worst = _test_rows(inp.bundle.metrics)
    served_by = _served_by(inp.bundle.preprocessing)
    out: dict[str, Any] = {
        "test": [{"series": r.get("series_id"), "served by": served_by(r.get("series_id")), "MASE": r.get("mase"),
                  "sMAPE %": r.get("smape"), "RMSE": r.get("rmse"), "points": r.get("n")} for r in worst[:_WORST]],
        "test_png": inp.files.get("plots/forecast_vs_actual.png"), "on_actuals": None, "png": None,
        "days": POINTS_DAYS}
    bad = worst_on_actuals(mon.summary) if mon else pl.DataFrame()
    if bad.height == 0:
        return out
    out["on_actuals"] = _summary_rows(bad.rename({"series_id": "key"}), "series")
    if mon.points.height and {"series_id", "timestamp", "as_of", "forecast", "actual"} <= set(mon.points.columns):
        present = set(mon.points["series_id"].unique().to_list())
        shown = [sid for sid in bad["series_id"].head(_WORST_PLOTS).to_list() if sid in present]
        if shown:
            out["png"] = _series_png(mon.points, shown)
    return out


def _learning_section(inp: ReportInputs) -> dict:
    man = inp.bundle.manifest
    tb = sorted(f for f in man.get("files", {}) if f.startswith("tensorboard/"))
    facts = {"epochs": man.get("epochs"), "optimiser steps": man.get("steps"),
             "best validation loss": man.get("best_val_loss"),
             "warm start": (man.get("warm_start") or {}).get("reason")}
    if tb:
        facts["TensorBoard log"] = f"{inp.bundle_uri}/tensorboard/ ({len(tb)} event file(s))"
    return {"facts": facts, "png": inp.files.get("plots/learning_curve.png")}


def _tuning_section(inp: ReportInputs) -> dict:
    tuning = inp.bundle.manifest.get("tuning")
    if not tuning:
        return {"tuned": False}
    facts = {"study": tuning.get("study_name"), "sampler": tuning.get("sampler"), "metric": tuning.get("metric"),
             "judged by": tuning.get("objective") or "network",
             "best value": tuning.get("best_value"), "best trial": tuning.get("best_trial"),
             "trials by state": ", ".join(f"{k}: {v}" for k, v in (tuning.get("trials") or {}).items())}
    images = [(inp.files[f], f.rsplit("/", 1)[-1].removesuffix(".png").replace("_", " "))
              for f in ("tuning/optimization_history.png", "tuning/param_importances.png") if f in inp.files]
    trials = None
    if "tuning/trials.csv" in inp.files:
        frame = pl.read_csv(io.BytesIO(inp.files["tuning/trials.csv"]), infer_schema_length=None)
        if "value" in frame.columns:
            frame = frame.sort("value", nulls_last=True)
        trials = frame.head(15).to_dicts()
    return {"tuned": True, "facts": facts, "images": images, "trials": trials,
            "params": [{"parameter": k, "value": v} for k, v in (tuning.get("best_params") or {}).items()]}


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
header{background:#1d2330;color:#fff;padding:18px 32px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#c8ccd6}nav{padding:8px 32px;background:#e7e9ee}nav a{margin-right:14px;color:#234}
main{max-width:1100px;margin:0 auto;padding:8px 32px 40px}
section{background:#fff;border-radius:6px;padding:6px 20px 16px;margin:16px 0;box-shadow:0 1px 2px #0002}
h2{font-size:18px;border-bottom:1px solid #e2e4ea;padding-bottom:6px}h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin:6px 0;font-size:13px}th,td{padding:3px 10px;text-align:left;
border-bottom:1px solid #eceef2;vertical-align:top;max-width:380px;overflow-wrap:break-word}
.wide{overflow-x:auto}td:first-child{white-space:nowrap}th{background:#f0f2f5}td{font-variant-numeric:tabular-nums}
dl{display:grid;grid-template-columns:max-content auto;gap:3px 16px;margin:8px 0}dt{color:#556;font-weight:600}
dd{margin:0;overflow-wrap:anywhere}img{max-width:100%;display:block;margin:10px 0}
.bar{width:240px}.bar span{display:inline-block;height:12px;background:#4878a8;border-radius:2px}
.muted{color:#667}.empty{color:#8a5a00;background:#fff6e0;padding:8px 12px;border-radius:4px}
.note{background:#eef4fb;padding:8px 12px;border-radius:4px}code{font-size:12px}footer{color:#667;font-size:12px}
"""


@functools.cache
def _template():  # noqa: ANN202 - a jinja2.Template
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True)
    env.filters.update(value=_value, pct=_pct, data_uri=_data_uri)
    return env.get_template("report.html")


def render_report(inp: ReportInputs, now: dt.datetime) -> str:
    """The whole page as one HTML string (no script, no external resource), from templates/report.html."""
    mon = inp.monitoring
    body = {
        "champion": _champion_section(inp),
        "test-metrics": _metrics_section(inp),
        "served-mix": _mix_section(inp, mon),
        "actuals": _actuals_section(mon),
        "coverage": _coverage_section(inp, mon),
        "worst-series": _worst_section(inp, mon),
        "learning-curve": _learning_section(inp),
        "tuning": _tuning_section(inp),
    }
    return _template().render(
        title=f"nightcast report: {inp.name}", version=inp.pointer["version"], store_url=inp.store_url,
        generated=now.strftime("%Y-%m-%d %H:%M UTC"), sections=SECTIONS, body=body, css=_CSS.strip(),
        no_monitoring_text=NO_MONITORING)


def write_report(store: Store, name: str, now: dt.datetime | None = None) -> dict:
    """Read, render and write ``reports/<model>/latest.html`` and the dated copy (atomic writes).

    Returns the URIs, the champion version, the page size and whether monitoring data was found.
    """
    now = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc)
    inputs = gather_report(store, name)
    page = render_report(inputs, now).encode("utf-8")
    latest, dated = report_keys(name, now.date())
    store.write_bytes(dated, page)
    store.write_bytes(latest, page)
    return {"model": name, "version": inputs.bundle.version, "latest": store.uri(latest), "dated": store.uri(dated),
            "bytes": len(page), "monitoring": inputs.monitoring is not None}
