"""The metrics (one definition of each: RMSE, MAE, sMAPE, MASE and its scale) and the baselines'
forecasts on stacked windows, judged on the raw observed values.

Every function works on stacked arrays over all windows at once (``np.bincount``
per series): no loop over series or windows. What is served is decided in
``nightcast.tasks.forecast.backtest`` / ``nightcast.tasks.forecast.combine``.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from nightcast.models.baselines import naive, seasonal_naive
from nightcast.tasks.data.features import FeatureState, inverse_scale
from nightcast.tasks.data.window import WindowIndex

METRICS = ("rmse", "mae", "smape", "mase")
NETWORK = "lstm"  # the method name of the network's forecasts (whatever the cell)
BASELINES = ("seasonal_naive", "naive")
SERVED = "served"  # the metrics row of the per-series choice


def mase_scales(index: WindowIndex, train_end: np.datetime64, season: int) -> np.ndarray:
    """Per-series MASE denominator: mean |y_t − y_{t−m}| over the raw observed values of the training span.

    Series with no more than ``season`` training steps use m = 1. Scales are floored against the
    panel: a series whose scale relative to its level is below a tenth of the panel's median ratio
    gets that floor, so one near-flat series cannot blow its MASE up to thousands and decide a
    pooled figure for the rest. 1.0 where undefined.
    """
    n_series = len(index.series_ids)
    y = index.truth
    in_train = index.timestamps <= train_end

    def diffs(m: int) -> tuple[np.ndarray, np.ndarray]:
        if len(y) <= m:
            return np.zeros(n_series), np.zeros(n_series)
        d = np.abs(y[m:] - y[:-m])
        same = (index.series[m:] == index.series[:-m]) & in_train[m:] & np.isfinite(d)
        codes = index.series[m:][same]
        return (np.bincount(codes, weights=d[same], minlength=n_series),
                np.bincount(codes, minlength=n_series).astype(float))

    seen = in_train & np.isfinite(y)
    train_len = np.bincount(index.series[seen], minlength=n_series)
    level = np.bincount(index.series[seen], weights=np.abs(y[seen]), minlength=n_series) / np.maximum(train_len, 1)
    return mase_scale_rule(*diffs(season), *diffs(1), train_len, level, season)


def mase_scale_rule(season_sum: np.ndarray, season_n: np.ndarray, one_sum: np.ndarray, one_n: np.ndarray,
                    length: np.ndarray, level: np.ndarray, season: int) -> np.ndarray:
    """The MASE denominator, one rule for evaluation, the backtest and the monitor, from per-series sums of
    ``|y_t - y_(t-m)|`` (and their counts) at lag ``season`` and at lag 1, the number of observed values and
    their mean absolute level: the seasonal mean, lag 1 for a series with no more than ``season`` values,
    floored at a tenth of the panel's median scale/level ratio times the level, 1.0 where undefined."""
    use_season = length > season
    total, n = np.where(use_season, season_sum, one_sum), np.where(use_season, season_n, one_n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / n
        ratio = mean / level
    ok = (n > 0) & np.isfinite(ratio) & (ratio > 0)
    if ok.any():
        mean = np.where(n > 0, np.maximum(mean, 0.1 * np.median(ratio[ok]) * level), mean)
    return np.where((n > 0) & (mean > 1e-12), mean, 1.0)


def baseline_forecasts(index: WindowIndex, starts: np.ndarray, season: int) -> dict[str, np.ndarray]:
    origins = index.origin(starts)
    series_start = index.offsets[index.series[origins]]
    return {"seasonal_naive": seasonal_naive(index.target, origins, index.horizon, season, series_start),
            "naive": naive(index.target, origins, index.horizon)}


def network_forecasts(index: WindowIndex, state: FeatureState, starts: np.ndarray,
                      scaled: np.ndarray) -> np.ndarray:
    """The network's (n, H) scaled predictions in the target's units."""
    return inverse_scale(scaled.astype(np.float64), index.series_of(starts), state)


def _errors(index: WindowIndex, starts: np.ndarray, pred: np.ndarray,
            scales: np.ndarray) -> dict[str, np.ndarray]:
    tidx = index.target_index(starts)
    actual = index.truth[tidx]  # raw observed values: a clipped spike counts as observed, a filled step not at all
    mask = np.isfinite(actual) & np.isfinite(pred)
    actual = np.where(mask, actual, 0.0)
    pred = np.where(mask, pred, 0.0)
    sid = index.series[index.origin(starts)]
    err = pred - actual
    denom = np.abs(actual) + np.abs(pred)
    smape = np.where(denom > 0, 2 * np.abs(err) / np.where(denom > 0, denom, 1), 0.0)
    return {"sq": err ** 2, "abs": np.abs(err), "smape": smape, "scaled": np.abs(err) / scales[sid][:, None],
            "mask": mask, "sid": np.broadcast_to(sid[:, None], err.shape)}


def score_forecasts(index: WindowIndex, starts: np.ndarray, forecasts: dict[str, np.ndarray],
                    scales: np.ndarray) -> pl.DataFrame:
    """Long table: model, series_id, rmse, mae, smape, mase, n — plus an 'ALL' row per model.

    Judged on the raw observed values (filled gap steps are masked out, clipped outliers count as
    observed); points a forecast has none for (NaN) are left out of its rows.
    """
    n_series = len(index.series_ids)
    frames = []
    for name, pred in forecasts.items():
        e = _errors(index, starts, pred, scales)
        m, codes = e["mask"], e["sid"][e["mask"]]
        sums = {k: np.bincount(codes, weights=e[k][m], minlength=n_series) for k in ("sq", "abs", "smape", "scaled")}
        n = np.bincount(codes, minlength=n_series)
        totals = {k: v.sum() for k, v in sums.items()}
        keep = n > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            per = pl.DataFrame({
                "model": name, "series_id": np.asarray(index.series_ids, dtype=object)[keep].astype(str),
                "rmse": np.sqrt(sums["sq"][keep] / n[keep]), "mae": sums["abs"][keep] / n[keep],
                "smape": 100 * sums["smape"][keep] / n[keep], "mase": sums["scaled"][keep] / n[keep],
                "n": n[keep].astype(np.int64)})
        if n.sum() == 0:
            continue
        total_n = int(n.sum())
        overall = pl.DataFrame({"model": [name], "series_id": ["ALL"], "rmse": [float(np.sqrt(totals["sq"] / total_n))],
                                "mae": [totals["abs"] / total_n], "smape": [100 * totals["smape"] / total_n],
                                "mase": [totals["scaled"] / total_n], "n": [total_n]})
        frames += [per, overall]
    if not frames:
        return pl.DataFrame(schema={"model": pl.String, "series_id": pl.String, **{k: pl.Float64 for k in METRICS},
                                    "n": pl.Int64})
    return pl.concat(frames)


def evaluate_models(index: WindowIndex, state: FeatureState, scaled_preds: dict[str, np.ndarray],
                    train_end: np.datetime64, season: int, split: str = "test") -> pl.DataFrame:
    """Metrics for each neural model (scaled predictions, inverted here) and both baselines (tuning folds)."""
    starts = index.splits[split]
    forecasts = {name: network_forecasts(index, state, starts, p) for name, p in scaled_preds.items()}
    forecasts.update(baseline_forecasts(index, starts, season))
    return score_forecasts(index, starts, forecasts, mase_scales(index, train_end, season))


def format_metrics(metrics: pl.DataFrame) -> str:
    """A compact text table of the overall rows, one line per model."""
    overall = metrics.filter(pl.col("series_id") == "ALL").sort("mase")
    lines = [f"{'model':<16}{'RMSE':>10}{'MAE':>10}{'sMAPE %':>10}{'MASE':>8}{'points':>9}"]
    for r in overall.iter_rows(named=True):
        lines.append(f"{r['model']:<16}{r['rmse']:>10.3f}{r['mae']:>10.3f}{r['smape']:>10.2f}{r['mase']:>8.3f}{r['n']:>9}")
    return "\n".join(lines)


