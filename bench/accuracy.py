"""Accuracy benchmark: nightcast against naive, seasonal naive and statistical references.

    python bench/accuracy.py            # or: make bench-accuracy
    python bench/accuracy.py --quick    # fewer trials and epochs, for a smoke run

Data ships inside PyPI packages (statsmodels' ``co2``, ``elnino``, ``sunspots``)
plus a seeded synthetic hourly panel (``tasks.sample.make_sample``); nothing is
downloaded. Each dataset goes through nightcast's own validation, cleaning and
windowing with a time-ordered split. Every model is scored on the same
rolling origins in the test span: one origin every H steps per series, each
forecasting H steps from the data up to that origin. The neural models are
trained once on the training span (validation for early stopping); AutoETS and
AutoTheta (``statsforecast``, optional) are refitted at every origin.

Rows:
- ``nightcast default``: the default network, window and training settings.
- ``nightcast tuned``: TPE over ``--trials`` trials (default space without the lookback,
  at most 2 layers of 64 units, plus a one-season lag), 2 rolling-origin folds inside the span before the test
  span (the test span is never seen by tuning), median pruning.
- ``+ calendar`` / ``+ lags`` / ``+ pca`` (synthetic panel): the default with one feature
  group switched on, to show whether it helps.
- ``naive``, ``seasonal naive``, ``AutoETS``, ``AutoTheta``.

The table goes to stdout and to ``bench/results/accuracy.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from schemas.params import (CleanConfig, Dimension, FeatureConfig, ModelConfig, RetrainParams,  # noqa: E402
                            TrainConfig, TuneParams, WindowConfig)
from tasks.evaluate import baseline_forecasts, mase_scales, score_forecasts  # noqa: E402
from tasks.features import inverse_scale  # noqa: E402
from tasks.prepare import prepare_training  # noqa: E402
from tasks.sample import make_sample  # noqa: E402
from tasks.train import predict_scaled, train_model  # noqa: E402
from tasks.tune import apply_overrides, open_study, rolling_origin_folds, run_trial, summarize  # noqa: E402
from tasks.validate import validate_observations  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "accuracy.md"


def _long(series_id: str, stamps: list, values) -> pl.DataFrame:  # noqa: ANN001
    return pl.DataFrame({"series_id": series_id, "timestamp": [str(t) for t in stamps],
                         "target": [None if v is None or not np.isfinite(v) else str(float(v)) for v in values]})


def co2() -> pl.DataFrame:
    import statsmodels.api as sm

    data = sm.datasets.co2.load_pandas().data
    return _long("co2", [t.date() for t in data.index], data["co2"].to_numpy())


def elnino() -> pl.DataFrame:
    import statsmodels.api as sm

    data = sm.datasets.elnino.load_pandas().data
    months = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
    stamps, values = [], []
    for row in data.itertuples(index=False):
        for m, name in enumerate(months, start=1):
            stamps.append(dt.date(int(row.YEAR), m, 1))
            values.append(getattr(row, name))
    return _long("elnino", stamps, values)


def sunspots() -> pl.DataFrame:
    import statsmodels.api as sm

    data = sm.datasets.sunspots.load_pandas().data
    return _long("sunspots", [dt.date(int(y), 1, 1) for y in data["YEAR"]], data["SUNACTIVITY"].to_numpy())


def synthetic() -> pl.DataFrame:
    return make_sample(n_series=8, days=42, seed=11)


def base_params(name: str, quick: bool) -> tuple[RetrainParams, int]:
    """Per dataset: horizon, lookback, season; otherwise nightcast's defaults."""
    spec = {  # horizon, lookback, frequency, season
        "co2": (13, 52, "1w", 52), "elnino": (12, 36, "1mo", 12),
        "sunspots": (5, 22, "1y", 11), "synthetic panel": (24, 48, "1h", 24),
    }[name]
    h, lookback, freq, season = spec
    train = TrainConfig(max_epochs=8 if quick else 25, patience=3 if quick else 5)
    return RetrainParams(data="-", window=WindowConfig(lookback=lookback, horizon=h),
                         clean=CleanConfig(frequency=freq, season_length=season), train=train), season


def space(season: int) -> dict[str, Dimension]:
    """The default search space, minus the lookback (every row must share the same windows),
    capped at 2 layers of 64 units so that the whole benchmark runs in minutes on 2 cores,
    plus a seasonal lag of one season."""
    out = {k: v for k, v in TuneParams().space.items() if k != "window.lookback"}
    out["model.num_layers"] = Dimension(choices=[1, 2])
    out["model.hidden_size"] = Dimension(choices=[16, 32, 64])
    out["features.seasonal_lags"] = Dimension(choices=[[], [season]])
    return out


def _stats_forecasts(index, starts: np.ndarray, season: int) -> dict[str, np.ndarray]:  # noqa: ANN001
    try:
        from statsforecast.models import AutoETS, AutoTheta
    except ImportError:
        return {}
    out: dict[str, list] = {"AutoETS": [], "AutoTheta": []}
    for s in starts:
        origin = s + index.lookback - 1
        first = index.offsets[index.series[origin]]
        y = index.target[first : origin + 1].astype(np.float64)
        m = season if len(y) > 2 * season else 1
        for name, model in (("AutoETS", AutoETS(season_length=m)), ("AutoTheta", AutoTheta(season_length=m))):
            try:
                out[name].append(model.forecast(y=y, h=index.horizon)["mean"])
            except Exception:  # a failed fit falls back to the last value, and the table says so below
                out[name].append(np.full(index.horizon, y[-1]))
    return {k: np.asarray(v) for k, v in out.items()}


def _neural(prepared, run: RetrainParams, starts: np.ndarray) -> np.ndarray:  # noqa: ANN001
    trained = train_model(prepared.index, run.model, run.train, progress=False)
    scaled = predict_scaled(trained.net, prepared.index, starts)
    sids = prepared.index.series_of(starts)
    return inverse_scale(scaled.astype(np.float64), sids, prepared.state)


def _tune(checked, params: RetrainParams, trials: int, name: str, workdir: str,  # noqa: ANN001
          season: int) -> tuple[RetrainParams, dict]:
    tp = TuneParams(base=params, space=space(season), sampler="tpe", n_trials=trials, folds=2, fold_fraction=0.08,
                    storage=f"sqlite:///{workdir}/bench.db", study_name=name.replace(" ", "-"), pruning=True)
    folds = rolling_origin_folds(checked, params, tp.folds, tp.fold_fraction)
    for _ in range(trials):
        run_trial(tp, params, checked, folds, tp.storage, tp.study_name)
    best = summarize(open_study(tp, tp.storage, tp.study_name), tp, tp.storage, folds)
    return apply_overrides(params, best["best_params"]), best


def run_dataset(name: str, frame: pl.DataFrame, trials: int, quick: bool, workdir: str) -> tuple[pl.DataFrame, dict]:
    params, season = base_params(name, quick)
    checked = validate_observations(frame, max_bad_share=0.2)
    prepared = prepare_training(checked, params)
    index, h = prepared.index, params.window.horizon
    starts = np.concatenate([  # one origin every H steps, per series, across the test span
        t[::h] for t in np.split(index.splits["test"],
                                 np.flatnonzero(np.diff(index.series[index.origin(index.splits["test"])])) + 1)])
    torch.manual_seed(0)
    forecasts: dict[str, np.ndarray] = {"nightcast default": _neural(prepared, params, starts)}
    variants = {}
    if name == "synthetic panel":
        # PCA needs several numeric covariates; the sample panel has one (temperature), so no PCA row here
        variants = {"+ calendar": FeatureConfig(calendar=["hour", "dow"]),
                    "+ lags": FeatureConfig(seasonal_lags=[168])}
    for label, feats in variants.items():
        run = params.model_copy(update={"features": feats})
        prep = prepare_training(checked, run)
        assert np.array_equal(prep.index.timestamps, index.timestamps)  # same rows, same windows
        forecasts[f"nightcast {label}"] = _neural(prep, run, starts)
    started = time.monotonic()
    tuned_run, best = _tune(checked, params, trials, name, workdir, season)
    tuned_prep = prepare_training(checked, tuned_run)
    forecasts["nightcast tuned"] = _neural(tuned_prep, tuned_run, starts)
    best["seconds"] = time.monotonic() - started
    forecasts.update({k.replace("_", " "): v for k, v in baseline_forecasts(index, starts, season).items()})
    forecasts.update(_stats_forecasts(index, starts, season))
    table = score_forecasts(index, starts, forecasts, mase_scales(index, np.datetime64(prepared.train_end, "us"),
                                                                   season))
    overall = table.filter(pl.col("series_id") == "ALL").select(
        pl.lit(name).alias("dataset"), "model", "mase", "smape", "rmse", "n").sort("mase")
    return overall, {"origins": len(starts), "horizon": h, "season": season, "best": best}


def render(tables: dict[str, tuple[pl.DataFrame, dict]], trials: int, seconds: float) -> str:
    lines = ["| dataset | model | MASE | sMAPE % | RMSE | points |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    notes = []
    for name, (t, info) in tables.items():
        for r in t.iter_rows(named=True):
            lines.append(f"| {name} | {r['model']} | {r['mase']:.3f} | {r['smape']:.2f} | {r['rmse']:.3f} | {r['n']} |")
        m = {r["model"]: r for r in t.iter_rows(named=True)}
        tuned, default, snaive = m["nightcast tuned"], m["nightcast default"], m["seasonal naive"]
        cut = 1 - tuned["rmse"] / default["rmse"]  # > 0: tuned is better
        verdict = [f"tuned {'beats' if tuned['mase'] < snaive['mase'] else 'does NOT beat'} seasonal naive "
                   f"(MASE {tuned['mase']:.3f} vs {snaive['mase']:.3f})",
                   (f"tuned RMSE {cut:.0%} lower than default" if cut >= 0 else
                    f"tuned RMSE {-cut:.0%} HIGHER than default")
                   + f" ({'meets' if cut >= 0.2 else 'misses'} the 20% cut target)"]
        for ref in ("AutoETS", "AutoTheta"):
            if ref in m:
                verdict.append(f"{'beats' if tuned['mase'] < m[ref]['mase'] else 'loses to'} {ref}")
        notes.append(f"- **{name}** ({info['origins']} origins × H={info['horizon']}, season {info['season']}): "
                     + "; ".join(verdict) + f". Tuning: {info['best']['trials']} in {info['best']['seconds']:.0f} s, "
                     f"best {info['best']['best_params']}")
    head = (f"Measured by `python bench/accuracy.py` ({trials} TPE trials per dataset) on "
            f"{platform.machine()} with {os.cpu_count()} CPU(s), torch threads 1, in {seconds / 60:.1f} min. "
            "Lower is better; MASE is scaled by the training span's seasonal naive error.\n")
    return head + "\n" + "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10, help="tuning trials per dataset (10)")
    parser.add_argument("--quick", action="store_true", help="3 trials, few epochs: a smoke run, not a result")
    parser.add_argument("--datasets", nargs="*", default=["co2", "elnino", "sunspots", "synthetic panel"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    trials = 3 if args.quick else args.trials
    torch.set_num_threads(1)
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for noisy in ("lightning.pytorch", "lightning.fabric", "optuna"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    loaders = {"co2": co2, "elnino": elnino, "sunspots": sunspots, "synthetic panel": synthetic}
    started = time.monotonic()
    tables = {}
    with tempfile.TemporaryDirectory(prefix="nightcast-bench-") as workdir:
        for name in args.datasets:
            t0 = time.monotonic()
            print(f"[{name}] training, tuning ({trials} trials) and fitting the references ...", flush=True)
            tables[name] = run_dataset(name, loaders[name](), trials, args.quick, workdir)
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
