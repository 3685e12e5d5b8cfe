"""Score the network and the baselines on the same windows; choose what each series is served.

Every function works on stacked arrays over all windows at once (``np.bincount``
per series): no loop over series or windows.

Selection happens on the **validation** windows only: per series, the method
with the lowest mean scaled absolute error there (the network, seasonal naive or
naive) is what that series is served. The test span only reports how the network
alone, each baseline and the served combination did.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from models.baselines import naive, seasonal_naive
from tasks.features import FeatureState, inverse_scale
from tasks.window import WindowIndex

METRICS = ("rmse", "mae", "smape", "mase")
NETWORK = "lstm"  # the method name of the network's forecasts (whatever the cell)
BASELINES = ("seasonal_naive", "naive")
METHODS = (NETWORK, *BASELINES)
SERVED = "served"  # the metrics row of the per-series choice


def mase_scales(index: WindowIndex, train_end: np.datetime64, season: int) -> np.ndarray:
    """Per-series mean |y_t − y_{t−m}| over the training span (the MASE denominator).

    Series with no more than ``season`` training steps use m = 1; 1.0 when undefined.
    """
    n_series = len(index.series_ids)

    def diffs(m: int) -> tuple[np.ndarray, np.ndarray]:
        if len(index.target) <= m:
            return np.zeros(n_series), np.zeros(n_series)
        same = (index.series[m:] == index.series[:-m]) & (index.timestamps[m:] <= train_end)
        d = np.abs(index.target[m:] - index.target[:-m])[same]
        codes = index.series[m:][same]
        return (np.bincount(codes, weights=d, minlength=n_series),
                np.bincount(codes, minlength=n_series).astype(float))

    train_len = np.bincount(index.series[index.timestamps <= train_end], minlength=n_series)
    s_sum, s_n = diffs(season)
    o_sum, o_n = diffs(1)
    use_season = train_len > season
    total, n = np.where(use_season, s_sum, o_sum), np.where(use_season, s_n, o_n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / n
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
    actual, mask = index.target[tidx], index.observed[tidx]
    sid = index.series[index.origin(starts)]
    err = pred - actual
    denom = np.abs(actual) + np.abs(pred)
    smape = np.where(denom > 0, 2 * np.abs(err) / np.where(denom > 0, denom, 1), 0.0)
    return {"sq": err ** 2, "abs": np.abs(err), "smape": smape, "scaled": np.abs(err) / scales[sid][:, None],
            "mask": mask, "sid": np.broadcast_to(sid[:, None], err.shape)}


def score_forecasts(index: WindowIndex, starts: np.ndarray, forecasts: dict[str, np.ndarray],
                    scales: np.ndarray) -> pl.DataFrame:
    """Long table: model, series_id, rmse, mae, smape, mase, n — plus an 'ALL' row per model.

    Only real observations count (filled gap steps are masked out).
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


def select_methods(index: WindowIndex, starts: np.ndarray, forecasts: dict[str, np.ndarray],
                   scales: np.ndarray, margin: float = 0.1, min_horizons: float = 3.0) -> dict[str, str]:
    """Per series, the method to serve, from these (validation) windows only.

    Validation windows overlap and are few per series, so one series' errors are noisy
    evidence. The method with the lowest mean scaled absolute error over *all* series is
    the default; a series switches to another method only when its own windows span at
    least ``min_horizons`` horizons and that method beats the default there by more than
    ``margin`` (relative). (Measured on the benchmark's yearly panel: with one validation
    window per series, per-series switching doubled the test MASE of what was served.)
    """
    order = [m for m in (*BASELINES, *[m for m in forecasts if m not in BASELINES]) if m in forecasts]
    n_series = len(index.series_ids)
    err = np.full((len(order), n_series), np.inf)
    overall = np.full(len(order), np.inf)
    for i, name in enumerate(order):
        e = _errors(index, starts, forecasts[name], scales)
        m = e["mask"]
        total = np.bincount(e["sid"][m], weights=e["scaled"][m], minlength=n_series)
        n = np.bincount(e["sid"][m], minlength=n_series)
        err[i] = np.where(n > 0, total / np.maximum(n, 1), np.inf)
        if n.sum():
            overall[i] = total.sum() / n.sum()
    default = int(np.argmin(overall)) if np.isfinite(overall).any() else 0  # baselines win ties
    best = np.argmin(err, axis=0)
    clear = (err[best, np.arange(n_series)] < (1 - margin) * err[default]) & (
        _span(index, starts, n_series) >= min_horizons * index.horizon)
    choice = np.where(clear, best, default)
    return dict(zip(index.series_ids, np.asarray(order)[choice].tolist()))


def _span(index: WindowIndex, starts: np.ndarray, n_series: int) -> np.ndarray:
    """Per series, how many steps its windows' targets cover (first target to last)."""
    origins = index.origin(starts)
    codes = index.series[origins]
    lo = np.full(n_series, np.iinfo(np.int64).max)
    hi = np.full(n_series, -1)
    np.minimum.at(lo, codes, origins)
    np.maximum.at(hi, codes, origins)
    return np.where(hi >= 0, hi - lo + index.horizon, 0)


def serve(index: WindowIndex, starts: np.ndarray, forecasts: dict[str, np.ndarray],
          selection: dict[str, str], default: str = "seasonal_naive") -> tuple[np.ndarray, np.ndarray]:
    """Each window's forecast from its series' selected method: (n, H) values and (n,) method names."""
    names = list(forecasts)
    code_of = {m: i for i, m in enumerate(names)}
    pick = np.array([code_of.get(selection.get(s, default), code_of.get(default, 0)) for s in index.series_ids],
                    dtype=np.int64)  # one lookup per series, not per window
    chosen = pick[index.series[index.origin(starts)]] if len(starts) else np.zeros(0, np.int64)
    stacked = np.stack([forecasts[m] for m in names])  # (methods, n, H)
    values = stacked[chosen, np.arange(len(starts))] if len(starts) else np.zeros((0, index.horizon))
    return values, np.asarray(names, dtype=object)[chosen]


def evaluate_models(index: WindowIndex, state: FeatureState, scaled_preds: dict[str, np.ndarray],
                    train_end: np.datetime64, season: int, split: str = "test",
                    selection: dict[str, str] | None = None) -> pl.DataFrame:
    """Metrics for each neural model (scaled predictions, inverted here), both baselines and,
    given a ``selection``, the served combination (the first neural model where chosen)."""
    starts = index.splits[split]
    forecasts = {name: network_forecasts(index, state, starts, p) for name, p in scaled_preds.items()}
    forecasts.update(baseline_forecasts(index, starts, season))
    if selection is not None and scaled_preds:
        first = next(iter(scaled_preds))
        by_method = {NETWORK: forecasts[first], **{b: forecasts[b] for b in BASELINES}}
        forecasts[SERVED] = serve(index, starts, by_method, selection)[0]
    return score_forecasts(index, starts, forecasts, mase_scales(index, train_end, season))


def format_metrics(metrics: pl.DataFrame) -> str:
    """A compact text table of the overall rows, one line per model."""
    overall = metrics.filter(pl.col("series_id") == "ALL").sort("mase")
    lines = [f"{'model':<16}{'RMSE':>10}{'MAE':>10}{'sMAPE %':>10}{'MASE':>8}{'points':>9}"]
    for r in overall.iter_rows(named=True):
        lines.append(f"{r['model']:<16}{r['rmse']:>10.3f}{r['mae']:>10.3f}{r['smape']:>10.2f}{r['mase']:>8.3f}{r['n']:>9}")
    return "\n".join(lines)


def selection_summary(selection: dict[str, str]) -> dict[str, int]:
    """How many series each method serves."""
    out = {m: 0 for m in METHODS}
    for m in selection.values():
        out[m] = out.get(m, 0) + 1
    return out


def compare_with_champion(champion, prepared, new_test_preds: np.ndarray, metric: str,  # noqa: ANN001
                          selection: dict[str, str]) -> dict:
    """The new served forecasts vs the champion's served forecasts vs seasonal naive, on the test
    windows both models can forecast.

    Returns the three metric values, the number of common windows and a note.
    ``comparable`` is False when the champion cannot forecast these windows.
    """
    from tasks.prepare import index_with_state, window_keys
    from tasks.train import predict_scaled

    index, season = prepared.index, prepared.season_length
    train_end = np.datetime64(prepared.train_end, "us")
    overall = evaluate_models(index, prepared.state, {NETWORK: new_test_preds}, train_end, season,
                              selection=selection).filter(pl.col("series_id") == "ALL")
    pick = {r["model"]: r[metric] for r in overall.iter_rows(named=True)}
    result = {"new": pick[SERVED], "seasonal_naive": pick["seasonal_naive"], "champion": None,
              "champion_version": None, "comparable": True, "windows": len(index.splits["test"]), "note": ""}
    if champion is None:
        result["note"] = "no champion yet"
        return result
    result["champion_version"] = champion.version
    args = champion.config["network_args"]
    if args["horizon"] != index.horizon:
        return {**result, "comparable": False,
                "note": f"champion horizon {args['horizon']} differs from {index.horizon}"}
    try:
        state = FeatureState.from_json(champion.preprocessing["features"])
        c_index = index_with_state(prepared.clean, state, args, prepared.train_end, prepared.val_end,
                                   champion.config["params"]["window"]["lookback"])
    except Exception as exc:  # any mismatch in layout means "not comparable", said plainly
        return {**result, "comparable": False, "note": f"champion cannot read this data: {exc}"}
    common = window_keys(index).join(window_keys(c_index), on=["series_id", "origin"], suffix="_c")
    if common.height == 0:
        return {**result, "comparable": False, "note": "champion shares no test windows with the new model"}
    mine, theirs = common["pos"].to_numpy(), common["pos_c"].to_numpy()
    starts = index.splits["test"][mine]
    c_starts = c_index.splits["test"][theirs]
    base = baseline_forecasts(index, starts, season)
    new = serve(index, starts, {NETWORK: network_forecasts(index, prepared.state, starts, new_test_preds[mine]),
                                **base}, selection)[0]
    champ_net = network_forecasts(c_index, state, c_starts, predict_scaled(champion.network(), c_index, c_starts))
    champ_selection = champion.preprocessing.get("selection") or {}  # first-generation bundles: the network
    champ = serve(index, starts, {NETWORK: champ_net, **base}, champ_selection, default=NETWORK)[0]
    table = score_forecasts(index, starts, {"new": new, "champion": champ, "seasonal_naive": base["seasonal_naive"]},
                            mase_scales(index, train_end, season))
    vals = {r["model"]: r[metric] for r in table.filter(pl.col("series_id") == "ALL").iter_rows(named=True)}
    return {**result, **vals, "windows": common.height,
            "note": f"compared on {common.height} common test windows"}
