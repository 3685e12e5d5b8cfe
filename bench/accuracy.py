"""Accuracy benchmark: nightcast against naive, seasonal naive, statistical and neural references.

    python bench/accuracy.py            # or: make bench-accuracy
    python bench/accuracy.py --quick    # one trial, short training: a smoke run, not a result

Real data ships inside PyPI packages (``bench/datasets.py``: statsmodels, arch, river, pvlib),
plus nightcast's seeded synthetic hourly panel; nothing is downloaded. Protocol, the same for
every row: the last ``3 × H`` steps are the test span; forecasts are made at 3 rolling origins
H steps apart in it, from the data up to each origin. Everything nightcast fits (network,
scalers, the per-series choice of what is served) uses the steps before the test span only:
a validation span (15 %, at least H) for early stopping and selection, the rest for training.
AutoETS and AutoTheta (statsforecast) are refitted at every origin; neuralforecast's LSTM
(optional) is trained once on the data before the test span with its defaults, except its
input window, set to nightcast's lookback (its default, the whole history, ran for minutes
per single series on this machine).

Rows:
- ``nightcast served``: what a user gets by default: per series, the network or a baseline,
  whichever validation preferred.
- ``nightcast LSTM``: the network alone, default settings.
- ``nightcast tuned``: ``--trials`` TPE trials (trial 0 = the default) over 3 rolling-origin
  folds before the test span, each trial on a fixed small budget (300 steps); the best
  configuration then trains with the default budget and is served like the default.
- ablations of the default network (window normalisation, no skip, MAE loss): ``− window norm``,
  ``skip seasonal`` / ``skip last`` / ``skip auto`` (a correction to seasonal naive, the last value,
  or whichever is better on the training windows), ``MSE loss``.
- ``naive``, ``seasonal naive``, ``AutoETS``, ``AutoTheta``, ``neuralforecast LSTM``.

The table (with fit seconds) goes to stdout and to ``bench/results/accuracy.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from schemas.params import CleanConfig, Dimension, ModelConfig, RetrainParams, TrainConfig, TuneParams, WindowConfig  # noqa: E402
from tasks.clean import decide_calendar, regularize  # noqa: E402
from tasks.evaluate import (NETWORK, baseline_forecasts, mase_scales, network_forecasts, score_forecasts,  # noqa: E402
                            select_methods, serve)
from tasks.prepare import prepare_training  # noqa: E402
from tasks.sample import make_sample  # noqa: E402
from tasks.train import predict_scaled, train_model  # noqa: E402
from tasks.tune import apply_overrides, open_study, run_trial, summarize, Fold  # noqa: E402
from tasks.validate import validate_observations  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "accuracy.md"


ORIGINS = 3
DATASETS = ["co2", "elnino", "elec_equip", "macro", "sunspots", "fertility", "indices", "trump_approval",
            "tmy_temp", "synthetic hourly"]


def load_dataset(name: str):  # noqa: ANN201 - bench/datasets.Dataset
    import datasets

    if name == "synthetic hourly":
        frame = make_sample(n_series=8, days=42, seed=11).select("series_id", "timestamp", "target")
        return datasets.Dataset("synthetic hourly", frame, "1h", 24, 24, "tasks.sample.make_sample(8, 42, seed=11)")
    return datasets.load(name)


def cuts_for(checked, params: RetrainParams, horizon: int) -> tuple:  # noqa: ANN001
    """(train_end, val_end, test_start): the last ORIGINS·H steps are the test span."""
    placed, _ = regularize(checked.valid, decide_calendar(checked.valid, params.clean))
    stamps = placed["timestamp"].unique().sort()
    n_pre = stamps.len() - ORIGINS * horizon
    n_val = max(int(0.15 * n_pre), horizon)
    return stamps[n_pre - n_val - 1], stamps[n_pre - 1]


def test_origins(index, horizon: int) -> np.ndarray:  # noqa: ANN001
    """Per series, ORIGINS test windows H steps apart from the first step after the validation span."""
    test = index.splits["test"]
    parts = np.split(test, np.flatnonzero(np.diff(index.series[index.origin(test)])) + 1) if len(test) else []
    return np.concatenate([p[::horizon][:ORIGINS] for p in parts]) if parts else test


def fit_nightcast(prepared, run: RetrainParams, starts: np.ndarray) -> tuple[dict[str, np.ndarray], float]:  # noqa: ANN001
    """The network alone and the served choice at ``starts``; seconds to train."""
    t0 = time.monotonic()
    trained = train_model(prepared.index, run.model, run.train, progress=False)
    seconds = time.monotonic() - t0
    index, state, season = prepared.index, prepared.state, prepared.season_length
    val = index.splits["val"]
    val_fc = {NETWORK: network_forecasts(index, state, val, predict_scaled(trained.net, index, val)),
              **baseline_forecasts(index, val, season)}
    selection = select_methods(index, val, val_fc, mase_scales(index, np.datetime64(prepared.train_end, "us"), season))
    fc = {NETWORK: network_forecasts(index, state, starts, predict_scaled(trained.net, index, starts)),
          **baseline_forecasts(index, starts, season)}
    served, methods = serve(index, starts, fc, selection)
    share = float(np.mean([m == NETWORK for m in selection.values()]))
    return {"lstm": fc[NETWORK], "served": served, "lstm_share": share}, seconds


def space(season: int) -> dict[str, Dimension]:
    """A small search space so the benchmark runs in minutes on 2 cores."""
    return {"model.hidden_size": Dimension(choices=[64, 32, 128]), "model.num_layers": Dimension(choices=[2, 1]),
            "train.learning_rate": Dimension(low=1e-3, high=1e-2, log=True),
            "model.dropout": Dimension(low=0.0, high=0.3), "model.skip": Dimension(choices=["none", "auto", "seasonal", "last"])}


def tune(checked, params: RetrainParams, trials: int, name: str, workdir: str, season: int,  # noqa: ANN001
         val_end) -> tuple[RetrainParams, dict]:  # noqa: ANN001
    """TPE over rolling-origin folds inside the span before the test span (the test span is never seen)."""
    # trials are ranked on a fixed small budget (300 steps each); the winner then trains like the default
    quick = params.model_copy(update={"train": params.train.model_copy(update={"max_steps": min(
        300, params.train.max_steps or 300)})})
    tp = TuneParams(base=quick, space=space(season), sampler="tpe", n_trials=trials, folds=3, fold_fraction=0.08,
                    study_name=name.replace(" ", "-"), pruning=False)
    storage = f"sqlite:///{workdir}/bench.db"
    before = checked.valid.filter(pl.col("timestamp") <= val_end)
    stamps = before["timestamp"].unique().sort()
    h = params.window.horizon
    block = max(int(stamps.len() * tp.fold_fraction), h)
    folds = [Fold(stamps[e - 2 * block], stamps[e - block], stamps[e])
             for e in (stamps.len() - 1 - (tp.folds - 1 - j) * block for j in range(tp.folds))]
    sub = type(checked)(before, checked.quarantine, before.height, 0, checked.categorical, checked.numeric)
    for _ in range(trials):
        run_trial(tp, quick, sub, folds, storage, tp.study_name)
    best = summarize(open_study(tp, storage, tp.study_name), tp, storage, folds)
    return apply_overrides(params, best["best_params"]), best


def stats_forecasts(index, starts: np.ndarray, season: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:  # noqa: ANN001
    try:
        from statsforecast.models import AutoETS, AutoTheta
    except ImportError:
        return {}, {}
    out: dict[str, list] = {"AutoETS": [], "AutoTheta": []}
    secs = {"AutoETS": 0.0, "AutoTheta": 0.0}
    for s in starts:
        origin = s + index.lookback - 1
        first = index.offsets[index.series[origin]]
        y = index.target[first : origin + 1].astype(np.float64)
        m = season if len(y) > 2 * season else 1
        for name, model in (("AutoETS", AutoETS(season_length=m)), ("AutoTheta", AutoTheta(season_length=m))):
            t0 = time.monotonic()
            try:
                out[name].append(model.forecast(y=y, h=index.horizon)["mean"])
            except Exception:  # a failed fit falls back to the last value
                out[name].append(np.full(index.horizon, y[-1]))
            secs[name] += time.monotonic() - t0
    return {k: np.asarray(v) for k, v in out.items()}, secs


def neuralforecast_lstm(index, starts: np.ndarray, ds, val_end) -> tuple[np.ndarray | None, float]:  # noqa: ANN001
    """neuralforecast's LSTM with its defaults (input_size from the horizon), trained once before the test
    span, then asked for each origin with the history up to it (no refit). ``None`` when not installed."""
    try:
        import logging

        from neuralforecast import NeuralForecast
        from neuralforecast.models import LSTM
    except ImportError:
        return None, 0.0
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    import pandas as pd

    frame = pl.DataFrame({"unique_id": np.asarray(index.series_ids)[index.series], "ds": index.timestamps,
                          "y": index.target})
    freq = {"1h": "h", "1d": "D", "1w": "W-SAT", "1mo": "MS", "3mo": "QS", "1y": "YS"}.get(ds.frequency, "D")
    if ds.calendar == "business":
        freq = "B"
    t0 = time.monotonic()
    # its defaults, except the input window: the default (-1, the whole history, recurrent) took
    # minutes per series here; it gets the same lookback nightcast uses
    nf = NeuralForecast(models=[LSTM(h=index.horizon, input_size=index.lookback, random_seed=0,
                                     enable_progress_bar=False, logger=False, enable_model_summary=False)], freq=freq)
    train = frame.filter(pl.col("ds") <= np.datetime64(val_end, "us")).to_pandas()
    nf.fit(train)
    seconds = time.monotonic() - t0
    out = []
    for s in starts:  # one origin at a time: its own history up to the origin
        origin = s + index.lookback - 1
        first = index.offsets[index.series[origin]]
        hist = pd.DataFrame({"unique_id": index.series_ids[index.series[origin]],
                             "ds": index.timestamps[first : origin + 1], "y": index.target[first : origin + 1]})
        out.append(nf.predict(df=hist)["LSTM"].to_numpy()[: index.horizon])
    return np.asarray(out), seconds


def run_dataset(name: str, trials: int, quick: bool, workdir: str) -> tuple[pl.DataFrame, dict]:
    ds = load_dataset(name)
    h, season = ds.horizon, ds.season
    train_cfg = TrainConfig(max_steps=60, steps_per_epoch=20) if quick else TrainConfig()
    params = RetrainParams(data="-", window=WindowConfig(horizon=h), train=train_cfg,
                           clean=CleanConfig(frequency=ds.frequency, season_length=season, calendar=ds.calendar))
    checked = validate_observations(ds.frame.with_columns(pl.col("timestamp").cast(pl.String),
                                                          pl.col("target").cast(pl.String)), max_bad_share=0.2)
    train_end, val_end = cuts_for(checked, params, h)
    prepared = prepare_training(checked, params, cuts=(train_end, val_end))
    index = prepared.index
    starts = test_origins(index, h)
    torch.manual_seed(0)
    forecasts: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    default, seconds["nightcast served"] = fit_nightcast(prepared, params, starts)
    forecasts["nightcast served"], forecasts["nightcast LSTM"] = default["served"], default["lstm"]
    seconds["nightcast LSTM"] = seconds["nightcast served"]
    ablations = {"− window norm": {"model": ModelConfig(norm="none")},
                 "skip seasonal": {"model": ModelConfig(skip="seasonal")},
                 "skip last": {"model": ModelConfig(skip="last")},
                 "skip auto": {"model": ModelConfig(skip="auto")},
                 "MSE loss": {"train": train_cfg.model_copy(update={"loss": "mse"})}}
    for label, change in ({} if quick else ablations).items():
        run = params.model_copy(update=change)
        prep = prepare_training(checked, run, cuts=(train_end, val_end))
        out, seconds[f"LSTM {label}"] = fit_nightcast(prep, run, starts)
        forecasts[f"LSTM {label}"] = out["lstm"]
    t0 = time.monotonic()
    tuned_run, best = tune(checked, params, trials, name, workdir, season, val_end)
    tuned, _ = fit_nightcast(prepare_training(checked, tuned_run, cuts=(train_end, val_end)), tuned_run, starts)
    forecasts["nightcast tuned"] = tuned["served"]
    seconds["nightcast tuned"] = best["seconds"] = time.monotonic() - t0
    forecasts.update({k.replace("_", " "): v for k, v in baseline_forecasts(index, starts, season).items()})
    stats, stat_secs = stats_forecasts(index, starts, season)
    forecasts.update(stats)
    seconds.update(stat_secs)
    nf, seconds["neuralforecast LSTM"] = (None, 0.0) if quick else neuralforecast_lstm(index, starts, ds, val_end)
    if nf is not None:
        forecasts["neuralforecast LSTM"] = nf
    table = score_forecasts(index, starts, forecasts, mase_scales(index, np.datetime64(train_end, "us"), season))
    overall = table.filter(pl.col("series_id") == "ALL").select(
        pl.lit(name).alias("dataset"), "model", "mase", "smape", "rmse", "n").sort("mase").with_columns(
        pl.col("model").replace_strict(seconds, default=None, return_dtype=pl.Float64).alias("seconds"))
    info = {"origins": len(starts), "series": len(index.series_ids), "horizon": h, "season": season,
            "frequency": ds.frequency, "source": ds.source, "best": best, "lstm_share": default["lstm_share"],
            "lookback": index.lookback, "steps": None}
    return overall, info


def render(tables: dict[str, tuple[pl.DataFrame, dict]], trials: int, seconds: float) -> str:
    lines = ["| dataset | model | MASE | sMAPE % | RMSE | points | fit s |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    notes, summary = [], []
    for name, (t, info) in tables.items():
        for r in t.iter_rows(named=True):
            secs = "" if r["seconds"] is None else f"{r['seconds']:.1f}"
            lines.append(f"| {name} | {r['model']} | {r['mase']:.3f} | {r['smape']:.2f} | {r['rmse']:.3f} | "
                         f"{r['n']} | {secs} |")
        m = {r["model"]: r["mase"] for r in t.iter_rows(named=True)}
        summary.append({"dataset": name, **m})
        served, snaive = m["nightcast served"], m["seasonal naive"]
        verdict = [f"served {'beats' if served < snaive else 'ties' if served == snaive else 'LOSES TO'} "
                   f"seasonal naive ({served:.3f} vs {snaive:.3f})",
                   f"LSTM alone {'beats' if m['nightcast LSTM'] < snaive else 'loses to'} it ({m['nightcast LSTM']:.3f})",
                   f"tuned {m['nightcast tuned']:.3f} vs default served {served:.3f}"]
        notes.append(f"- **{name}** ({info['source']}; {info['series']} series, {info['frequency']}, "
                     f"{info['origins']} origins × H={info['horizon']}, season {info['season']}, lookback "
                     f"{info['lookback']}; network served for {info['lstm_share']:.0%} of series): "
                     + "; ".join(verdict) + f". Tuning best: {info['best']['best_params']}")
    frame = pl.DataFrame(summary)
    means = ["", "**Mean MASE over datasets** (each dataset weighs the same):", "",
             "| model | mean MASE | datasets where it beats seasonal naive |", "| --- | ---: | ---: |"]
    for col in [c for c in frame.columns if c != "dataset"]:
        vals = frame[col].drop_nulls()
        wins = int((frame[col] < frame["seasonal naive"]).sum()) if col != "seasonal naive" else "-"
        means.append(f"| {col} | {vals.mean():.3f} | {wins} / {vals.len()} |")
    head = (f"Measured by `python bench/accuracy.py` ({trials} TPE trials per dataset, trial 0 = default) on "
            f"{platform.machine()} with {os.cpu_count()} CPU(s), torch threads 1, in {seconds / 60:.1f} min. "
            "Lower is better; MASE is scaled by each series' training-span seasonal-naive error.\n")
    return head + "\n" + "\n".join(lines) + "\n" + "\n".join(means) + "\n\n" + "\n".join(notes) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4, help="tuning trials per dataset (4)")
    parser.add_argument("--quick", action="store_true", help="1 trial, 60 steps: a smoke run, not a result")
    parser.add_argument("--datasets", nargs="*", default=DATASETS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    trials = 1 if args.quick else args.trials
    torch.set_num_threads(1)
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for noisy in ("lightning.pytorch", "lightning.fabric", "optuna", "pytorch_lightning"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    started = time.monotonic()
    tables = {}
    with tempfile.TemporaryDirectory(prefix="nightcast-bench-") as workdir:
        for name in args.datasets:
            t0 = time.monotonic()
            print(f"[{name}] ...", flush=True)
            tables[name] = run_dataset(name, trials, args.quick, workdir)
            print(tables[name][0], f"\n[{name}] {time.monotonic() - t0:.0f} s", flush=True)
    text = render(tables, trials, time.monotonic() - started)
    print("\n" + text)
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# Accuracy benchmark\n\n" + text)
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
