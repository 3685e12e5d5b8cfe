"""Score the LSTM and the baselines on exactly the same test windows."""

from __future__ import annotations

import numpy as np
import polars as pl

from models.baselines import naive, seasonal_naive
from tasks.features import FeatureState, inverse_scale
from tasks.window import WindowIndex

METRICS = ("rmse", "mae", "smape", "mase")


def mase_scales(index: WindowIndex, train_end: np.datetime64, season: int) -> np.ndarray:
    """Per-series mean |y_t − y_{t−m}| over the training span (the MASE denominator)."""
    scales = np.ones(len(index.series_ids))
    for i in range(len(index.series_ids)):
        a, b = index.offsets[i], index.offsets[i + 1]
        y = index.target[a:b][index.timestamps[a:b] <= train_end]
        m = season if len(y) > season else 1
        d = np.abs(y[m:] - y[:-m]) if len(y) > m else np.array([])
        scales[i] = d.mean() if d.size and d.mean() > 1e-12 else 1.0
    return scales


def baseline_forecasts(index: WindowIndex, starts: np.ndarray, season: int) -> dict[str, np.ndarray]:
    origins = index.origin(starts)
    series_start = index.offsets[index.series[origins]]
    return {"naive": naive(index.target, origins, index.horizon),
            "seasonal_naive": seasonal_naive(index.target, origins, index.horizon, season, series_start)}


def score_forecasts(index: WindowIndex, starts: np.ndarray, forecasts: dict[str, np.ndarray],
                    scales: np.ndarray) -> pl.DataFrame:
    """Long table: model, series_id, rmse, mae, smape, mase, n — plus an 'ALL' row per model.

    Only real observations count (filled gap steps are masked out).
    """
    tidx = index.target_index(starts)
    actual, mask = index.target[tidx], index.observed[tidx]
    sid = index.series[index.origin(starts)]
    rows = []
    for name, pred in forecasts.items():
        err = pred - actual
        denom = np.abs(actual) + np.abs(pred)
        smape = np.where(denom > 0, 2 * np.abs(err) / np.where(denom > 0, denom, 1), 0.0)
        scaled = np.abs(err) / scales[sid][:, None]
        for code in [*np.unique(sid), None]:
            sel = mask & ((sid == code)[:, None] if code is not None else True)
            n = int(sel.sum())
            if n == 0:
                continue
            rows.append({
                "model": name, "series_id": index.series_ids[code] if code is not None else "ALL",
                "rmse": float(np.sqrt(np.mean(err[sel] ** 2))), "mae": float(np.mean(np.abs(err[sel]))),
                "smape": float(100 * np.mean(smape[sel])), "mase": float(np.mean(scaled[sel])), "n": n,
            })
    return pl.DataFrame(rows)


def evaluate_models(index: WindowIndex, state: FeatureState, scaled_preds: dict[str, np.ndarray],
                    train_end: np.datetime64, season: int, split: str = "test") -> pl.DataFrame:
    """Metrics for each neural model (scaled predictions, inverted here) and both baselines."""
    starts = index.splits[split]
    sids = index.series_of(starts)
    forecasts = {name: inverse_scale(p.astype(np.float64), sids, state) for name, p in scaled_preds.items()}
    forecasts.update(baseline_forecasts(index, starts, season))
    return score_forecasts(index, starts, forecasts, mase_scales(index, train_end, season))


def format_metrics(metrics: pl.DataFrame) -> str:
    """A compact text table of the overall rows, one line per model."""
    overall = metrics.filter(pl.col("series_id") == "ALL").sort("mase")
    lines = [f"{'model':<16}{'RMSE':>10}{'MAE':>10}{'sMAPE %':>10}{'MASE':>8}{'points':>9}"]
    for r in overall.iter_rows(named=True):
        lines.append(f"{r['model']:<16}{r['rmse']:>10.3f}{r['mae']:>10.3f}{r['smape']:>10.2f}{r['mase']:>8.3f}{r['n']:>9}")
    return "\n".join(lines)


def compare_with_champion(champion, prepared, new_test_preds: np.ndarray, metric: str) -> dict:  # noqa: ANN001
    """New model vs champion vs seasonal naive on the test windows both models can forecast.

    Returns the three metric values, the number of common windows and a note.
    ``comparable`` is False when the champion cannot forecast these windows.
    """
    from tasks.prepare import index_with_state, window_keys
    from tasks.train import predict_scaled
    from tasks.features import FeatureState

    index, season = prepared.index, prepared.season_length
    overall = evaluate_models(index, prepared.state, {"new": new_test_preds},
                              np.datetime64(prepared.train_end, "us"), season).filter(pl.col("series_id") == "ALL")
    pick = {r["model"]: r[metric] for r in overall.iter_rows(named=True)}
    result = {"new": pick["new"], "seasonal_naive": pick["seasonal_naive"], "champion": None,
              "champion_version": None, "comparable": True, "windows": len(index.splits["test"]), "note": ""}
    if champion is None:
        result["note"] = "no champion yet"
        return result
    result["champion_version"] = champion.version
    w = champion.config["params"]["window"]
    if w["horizon"] != index.horizon:
        return {**result, "comparable": False,
                "note": f"champion horizon {w['horizon']} differs from {index.horizon}"}
    try:
        state = FeatureState.from_json(champion.preprocessing["features"])
        c_index = index_with_state(prepared.clean, state, w["lookback"], w["horizon"],
                                   prepared.train_end, prepared.val_end)
    except Exception as exc:  # any mismatch in layout means "not comparable", said plainly
        return {**result, "comparable": False, "note": f"champion cannot read this data: {exc}"}
    common = window_keys(index).join(window_keys(c_index), on=["series_id", "origin"], suffix="_c")
    if common.height == 0:
        return {**result, "comparable": False, "note": "champion shares no test windows with the new model"}
    mine, theirs = common["pos"].to_numpy(), common["pos_c"].to_numpy()
    starts = index.splits["test"][mine]
    sids = index.series_of(starts)
    champ_scaled = predict_scaled(champion.network(), c_index, c_index.splits["test"][theirs])
    forecasts = {
        "new": inverse_scale(new_test_preds[mine].astype(np.float64), sids, prepared.state),
        "champion": inverse_scale(champ_scaled.astype(np.float64), sids, state),
        "seasonal_naive": baseline_forecasts(index, starts, season)["seasonal_naive"],
    }
    table = score_forecasts(index, starts, forecasts,
                            mase_scales(index, np.datetime64(prepared.train_end, "us"), season))
    vals = {r["model"]: r[metric] for r in table.filter(pl.col("series_id") == "ALL").iter_rows(named=True)}
    return {**result, **vals, "windows": common.height,
            "note": f"compared on {common.height} common test windows"}
