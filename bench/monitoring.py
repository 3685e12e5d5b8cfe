"""Monitoring benchmark: daily monitoring of a catalogue for many days, cost per run against history.

    python bench/monitoring.py                          # 10,000 daily series, 7-step forecasts, 90 days
    python bench/monitoring.py --days 365               # a year (the old reader timed up to day 90)
    python bench/monitoring.py --series 1000 --days 30  # a quick look

Every day of the run a forecasts partition (every series, ``--horizon`` steps, with intervals) is
written and the monitor's own work for that day is timed, exactly as ``monitor_flow`` does it after
reading the data: ``read_state`` (the previous complete run's snapshot) → ``read_forecast_window``
(the recheck window, 28 days) → ``assess`` → ``write_monitoring``. The actuals are synthetic, the
whole history up to the day (the MASE scale of an origin reads every actual before it, so cutting
the history would change every scale daily and make every point "updated"); that input grows by
one value per series per day, the state must not.

The reference, in the same run on the same store: the reader this replaced, the full state rebuilt
from every change log (``read_points``, as the monitor did before snapshots), timed on the days of
``--checkpoints``. Store bytes under ``monitoring/`` are counted after each checkpoint day.
The table goes to stdout and to ``bench/results/monitoring.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nightcast.schemas.monitoring import DriftRule  # noqa: E402
from nightcast.tasks.ops import monitor as M  # noqa: E402
from nightcast.tasks.data.clean import Calendar  # noqa: E402
from nightcast.tasks.serving.score import write_forecasts  # noqa: E402
from nightcast.tasks.ops.storage import LocalStore  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "monitoring.md"
START = dt.date(2026, 1, 1)


def truth(series: int, days: int, seed: int = 0) -> np.ndarray:
    """(series, days) daily values: a level, a weekly cycle and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(days)
    level = rng.uniform(50, 150, (series, 1))
    return level + 10 * np.sin(2 * np.pi * t / 7)[None, :] + rng.normal(0, 3, (series, days))


def forecasts_for(ids: pl.Series, values: np.ndarray, as_of: int, horizon: int, rng: np.random.Generator) -> pl.DataFrame:
    """Every series' forecast from ``as_of`` (the truth plus noise), with an interval."""
    n = len(ids)
    steps = np.arange(1, horizon + 1)
    cols = np.minimum(as_of + steps, values.shape[1] - 1)
    f = values[:, cols] + rng.normal(0, 4, (n, horizon))
    day = START + dt.timedelta(days=as_of)
    stamps = np.datetime64(day, "us") + steps.astype("timedelta64[D]")
    return pl.DataFrame({
        "series_id": np.repeat(ids.to_numpy(), horizon), "timestamp": np.tile(stamps, n),
        "horizon": pl.Series(np.tile(steps, n), dtype=pl.Int32), "forecast": f.ravel(),
        "lower": f.ravel() - 8.0, "upper": f.ravel() + 8.0, "method": "combination", "model": "bench",
        "model_version": "v1", "as_of": day}).with_columns(pl.col("timestamp").cast(pl.Datetime("us")))


def actuals_for(ids: pl.Series, values: np.ndarray, day: int, window: int) -> M.Actuals:
    """The actuals known at the end of ``day``: the last ``window`` days up to and including it."""
    first = max(0, day - window + 1) if window else 0
    span = np.arange(first, day + 1)
    stamps = np.datetime64(START, "us") + span.astype("timedelta64[D]")
    frame = pl.DataFrame({"series_id": np.repeat(ids.to_numpy(), len(span)), "timestamp": np.tile(stamps, len(ids)),
                          "actual": values[:, span].ravel()}).with_columns(pl.col("timestamp").cast(pl.Datetime("us")))
    empty = pl.DataFrame(schema={"series_id": pl.String, "timestamp": pl.Datetime("us")})
    return M.Actuals(frame, empty, stamps[-1].astype(dt.datetime), 0, 0)


def rss_mb() -> float:
    """This process's resident memory now (VmRSS), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def run(series: int, days: int, horizon: int, actual_days: int, checkpoints: list[int],
        rebuild_until: int) -> list[dict]:
    ids = pl.Series([f"s{i:06d}" for i in range(series)])
    values = truth(series, days + horizon + 1)
    rng = np.random.default_rng(1)
    rows = []
    rule = DriftRule(origins=7, min_origins=3, min_points=20)
    with tempfile.TemporaryDirectory(prefix="nightcast-bench-monitor-") as tmp:
        store = LocalStore(Path(tmp) / "store")
        for d in range(days):
            day = START + dt.timedelta(days=d)
            write_forecasts(store, forecasts_for(ids, values, d, horizon, rng), "bench", day)
            recheck_from = day - dt.timedelta(days=28)
            t0 = time.perf_counter()
            previous = M.read_state(store, "bench", before=day)
            t1 = time.perf_counter()
            forecasts, partitions = M.read_forecast_window(store, "bench", recheck_from, day)
            out = M.assess(forecasts, actuals_for(ids, values, d, actual_days), previous, model="bench", day=day,
                           season=7, calendar=Calendar("1d"), recheck_from=recheck_from, partitions=partitions,
                           rule=rule, champion="v1", test_mase=None)
            t2 = time.perf_counter()
            keys = M.write_monitoring(store, "bench", day, out)
            t3 = time.perf_counter()
            row = {"day": d + 1, "read_state_s": t1 - t0, "assess_s": t2 - t1, "write_s": t3 - t2,
                   "total_s": t3 - t0, "active_rows": out.state.height,
                   "frozen_rows": out.frozen.height,
                   "written_mb": sum(Path(store.uri(k)).stat().st_size for k in keys.values()) / 1e6,
                   "scored": out.run["scored"][0], "mase": out.run["mase"][0], "rss_mb": rss_mb()}
            if d + 1 in checkpoints:
                row["monitoring_mb"] = folder_bytes(Path(tmp) / "store" / "monitoring") / 1e6
                note = ""
                if d + 1 <= rebuild_until:
                    r0 = time.perf_counter()
                    full = M.read_points(store, "bench", up_to=day)
                    row["rebuild_from_logs_s"] = time.perf_counter() - r0
                    row["rebuild_rows"] = full.height
                    del full
                    note = f", rebuild from logs {row['rebuild_from_logs_s']:.2f} s over {row['rebuild_rows']:,} points"
                print(f"day {d + 1}: run {row['total_s']:.2f} s (state {row['read_state_s']:.2f} s){note}, "
                      f"RSS {row['rss_mb']:,.0f} MB, monitoring/ {row['monitoring_mb']:.0f} MB", flush=True)
            rows.append(row)
    return rows


def render(rows: list[dict], args: argparse.Namespace, minutes: float) -> str:
    cmd = "python bench/monitoring.py " + " ".join(sys.argv[1:])
    lines = [
        "# Monitoring benchmark (a run per day, state carried between runs)", "",
        f"Command: `{cmd.strip()}` on {platform.machine()} with 2 CPU(s), polars {pl.__version__}, "
        f"{dt.date.today()}, {minutes:.1f} min in all. {args.series:,} daily series, {args.horizon}-step forecasts "
        f"every day, recheck window 28 days, "
        + (f"actuals of the last {args.actual_days} days given to each run. " if args.actual_days
           else "the whole history of actuals given to each run (one value per series per day more each day). ")
        + 
        "Seconds are wall clock of the monitor's own work for the day (state read, window read, assess, write); "
        "`rebuild from logs` is the reader the monitor used before snapshots (every change log, newest row per "
        "point), timed on the same store after the day's run"
        + (f" up to day {args.rebuild_until}; not timed after that, `-` below"
           if args.rebuild_until < args.days else "")
        + ". RSS: this process after the day's run. An earlier "
        "120-day run at 10,000 series (then with a 70-day actuals cut) was killed by the kernel for memory (24 GiB) "
        "some time after day 90, most likely in the old reader's rebuild at day 120 (at day 90 it took 28-32 s); "
        "the new path never reads the change logs.", "",
        "| day | run s | state read s | assess s | write s | active points | frozen groups | written MB "
        "| RSS MB | rebuild from logs s | points it rebuilds | monitoring/ MB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if "monitoring_mb" not in r:
            continue
        rebuild = (f"{r['rebuild_from_logs_s']:.2f} | {r['rebuild_rows']:,}" if "rebuild_from_logs_s" in r
                   else "- | -")
        lines.append(f"| {r['day']} | {r['total_s']:.2f} | {r['read_state_s']:.2f} | {r['assess_s']:.2f} | "
                     f"{r['write_s']:.2f} | {r['active_rows']:,} | {r['frozen_rows']:,} | {r['written_mb']:.1f} | "
                     f"{r['rss_mb']:,.0f} | {rebuild} | {r['monitoring_mb']:.0f} |")
    full = rows[28:]  # from day 29 on, the recheck window is full
    if len(full) >= 2:
        mid = len(full) // 2
        early, late = [r["total_s"] for r in full[:mid]], [r["total_s"] for r in full[mid:]]
        lines += ["", f"Median run time once the window is full, days {full[0]['day']}-{full[mid - 1]['day']}: "
                  f"{np.median(early):.2f} s; days {full[mid]['day']}-{full[-1]['day']}: {np.median(late):.2f} s "
                  f"(ratio {np.median(late) / np.median(early):.2f})."]
    if len(full) >= 60:
        lines += ["", "| days | median run s | max run s | median written MB | max RSS MB |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for i in range(0, len(full), 30):
            block = full[i:i + 30]
            lines.append(f"| {block[0]['day']}-{block[-1]['day']} | {np.median([r['total_s'] for r in block]):.2f} | "
                         f"{max(r['total_s'] for r in block):.2f} | "
                         f"{np.median([r['written_mb'] for r in block]):.1f} | "
                         f"{max(r['rss_mb'] for r in block):,.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--series", type=int, default=10_000)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--horizon", type=int, default=7)
    ap.add_argument("--actual-days", type=int, default=0, help="actuals of the last N days only (0: all history)")
    ap.add_argument("--checkpoints", default="", help="comma-separated days (default: every 30th and the last)")
    ap.add_argument("--rebuild-until", type=int, default=90,
                    help="time the old reader (rebuild from every change log) only up to this day; it needs memory "
                         "proportional to all history and outgrows 24 GiB some time after day 90 at 10,000 series")
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args(argv)
    checkpoints = ([int(x) for x in a.checkpoints.split(",")] if a.checkpoints
                   else [d for d in range(30, a.days + 1, 30)] + [a.days])
    t0 = time.monotonic()
    rows = run(a.series, a.days, a.horizon, a.actual_days, checkpoints, a.rebuild_until)
    text = render(rows, a, (time.monotonic() - t0) / 60)
    Path(a.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
