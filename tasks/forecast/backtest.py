"""Decide on backtests: candidate forecasts on the backtest and test windows, the combination
weights and interval widths fitted on the backtest (validation) windows only, the test span
reported, and the comparison with the champion.

The backtest windows are the rolling origins of the validation span (the newest history
before the test span); the test span never sets a weight or a width. Every forecast is
judged on the raw observed values (``WindowIndex.truth``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from nightcast.models.classical import choose_classical, classical_forecasts, tail_length
from nightcast.schemas.params import RetrainParams, ServeConfig
from nightcast.tasks.forecast.combine import REFERENCE, Weights, combine, ensemble_median, fit_weights, method_names
from nightcast.tasks.forecast.evaluate import NETWORK, SERVED, baseline_forecasts, mase_scales, score_forecasts
from nightcast.tasks.data.features import FeatureState, inverse_scale, scale_values
from nightcast.tasks.forecast.intervals import coverage, fit_conformal
from nightcast.tasks.data.window import WindowIndex, space_windows
from nightcast.tasks.data.prepare import Prepared
from nightcast.tasks.forecast.evaluate import format_metrics
from nightcast.tasks.forecast.predict import predict_seeds
from nightcast.tasks.ops.registry import Bundle, Decision, RegistryError, decide_promotion, load_bundle
from nightcast.tasks.ops.storage import Store

if TYPE_CHECKING:  # training (and Lightning) is not imported by scoring, which reads champion_weights here
    from nightcast.tasks.forecast.train import TrainResult


@dataclass
class Backtest:
    weights: Weights
    metrics: pl.DataFrame  # test span: every candidate and the served combination, per series and ALL
    served_test: np.ndarray  # (n_test, H) served forecasts on the test windows, in the target's units
    candidates_test: dict[str, np.ndarray]  # (n_test, H) each candidate on the test windows
    intervals: dict | None  # half-widths (per-series scaled units, per horizon step) and test coverage
    served_counts: dict[str, int]  # series by what serves them (a candidate or the combination)
    test_starts: np.ndarray | None = None  # the test windows all of the above are on


def window_histories(index: WindowIndex, starts: np.ndarray, tail: int) -> tuple[np.ndarray, np.ndarray]:
    """The clean target of each window's series up to its origin, at most ``tail`` steps, stacked:
    (values, lengths). No loop over windows: one gather of concatenated ranges."""
    origins = index.origin(starts)
    lo = np.maximum(origins - tail + 1, index.offsets[index.series[origins]])
    lengths = (origins - lo + 1).astype(np.int64)
    total = int(lengths.sum())
    within = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return index.target[np.repeat(lo, lengths) + within], lengths


def candidate_forecasts(index: WindowIndex, state: FeatureState, starts: np.ndarray,
                        network_scaled: list[np.ndarray], season: int, cfg: ServeConfig,
                        classical: list[str]) -> dict[str, np.ndarray]:
    """(n, H) forecasts of every candidate for the windows ``starts``, in the target's units: the network
    (median of its seeds), seasonal naive, naive and the classical models fitted at each origin."""
    sids = index.series_of(starts)
    out = {NETWORK: ensemble_median([inverse_scale(p.astype(np.float64), sids, state) for p in network_scaled])}
    base = baseline_forecasts(index, starts, season)
    out[REFERENCE] = base["seasonal_naive"]
    if cfg.naive:
        out["naive"] = base["naive"]
    if classical:
        values, lengths = window_histories(index, starts, tail_length(season, index.horizon))
        for model in classical:
            out[model] = (classical_forecasts(values, lengths, index.horizon, season, model) if len(starts)
                          else np.zeros((0, index.horizon)))
    return out


def _truth(index: WindowIndex, starts: np.ndarray) -> np.ndarray:
    return index.truth[index.target_index(starts)]


def run_backtest(index: WindowIndex, state: FeatureState, train_end: np.datetime64, season: int,
                 val_scaled: list[np.ndarray], test_scaled: list[np.ndarray], cfg: ServeConfig,
                 interval_level: float | None) -> Backtest:
    """Weights and widths from the backtest (validation) windows; the test span scored and reported."""
    if cfg.truth == "clean":  # ablation only: judge on the cleaned values
        index.truth = np.where(index.observed, index.target, np.nan)
    # origins H/2 apart: overlapping neighbours add little evidence and cost a classical fit each
    spacing = max(1, index.horizon // 2)
    val, test = space_windows(index, index.splits["val"], spacing), space_windows(index, index.splits["test"], spacing)
    val_scaled = [p[np.isin(index.splits["val"], val)] for p in val_scaled]
    test_scaled = [p[np.isin(index.splits["test"], test)] for p in test_scaled]
    classical = choose_classical(cfg.classical, len(val) + len(test), tail_length(season, index.horizon),
                                 cfg.classical_budget_s)
    cand_val = candidate_forecasts(index, state, val, val_scaled, season, cfg, classical)
    codes = index.series[index.origin(val)]
    weights = fit_weights(cand_val, _truth(index, val), codes, index.series_ids, index.horizon, cfg.combine,
                          cfg.prior, cfg.power, cfg.trim)
    if index.unscaled:  # held for their rows only (no scaler, no window): not listed, as if left out of the index
        weights = weights.without(index.unscaled)
    cand_test = candidate_forecasts(index, state, test, test_scaled, season, cfg, classical)
    served_test = combine(cand_test, weights.rows(index.series_of(test)), cfg.combine)
    metrics = score_forecasts(index, test, {**cand_test, SERVED: served_test}, mase_scales(index, train_end, season))
    intervals = None
    if interval_level is not None:
        served_val = combine(cand_val, weights.rows(index.series_of(val)), cfg.combine)
        scaled = {n: scale_values(f, index.series_of(s), state) for n, f, s in
                  (("val", served_val, val), ("test", served_test, test))}
        widths = fit_conformal(index, state, scaled["val"], val, interval_level)
        intervals = {"method": "conformal", "level": interval_level, "half_widths": widths,
                     "test": coverage(index, state, scaled["test"], test, widths)}
    names = method_names(weights.per_series, weights.candidates)
    counts = {str(m): int(n) for m, n in zip(*np.unique(names.astype(str), return_counts=True))}
    return Backtest(weights, metrics, served_test, cand_test, intervals, counts, test)


def champion_weights(champion) -> Weights:  # noqa: ANN001 - a registry Bundle
    """The champion's combination; a bundle from before combinations serves its per-series choice
    (one-hot weights over the network and the baselines; the network where it chose nothing)."""
    pre = champion.preprocessing
    if pre.get("combination"):
        return Weights.from_json(pre["combination"])
    selection = pre.get("selection") or {}
    names = [NETWORK, REFERENCE, "naive"]
    ids = list(selection)
    per = np.zeros((len(ids), 3))
    per[np.arange(len(ids)), [names.index(selection[s]) if selection[s] in names else 0 for s in ids]] = 1.0
    pooled = np.array([0.0, 1.0, 1.0]) * 10  # unseen series: the network
    return Weights(names, pooled, ids, per, np.zeros(len(ids)), "switch")


def _relative(table: pl.DataFrame, metric: str) -> dict[str, float]:
    return {r["model"]: r[metric] for r in table.filter(pl.col("series_id") == "ALL").iter_rows(named=True)}


def _recorded_comparison(champion, result: dict, metric: str) -> dict:  # noqa: ANN001 - a registry Bundle
    """The champion's own recorded test-span result as a ratio to seasonal naive on its windows, scaled to this
    run's seasonal naive (spans of different difficulty compare); not comparable when it records none."""
    recorded = _relative(pl.DataFrame(champion.metrics["test"]), metric) if champion.metrics.get("test") else {}
    if recorded.get(SERVED) is None or not recorded.get("seasonal_naive"):
        return {**result, "comparable": False,
                "note": "champion saw every test window (refit on them) and records no test-span result"}
    ratio = recorded[SERVED] / recorded["seasonal_naive"]
    return {**result, "champion": ratio * result["seasonal_naive"], "windows": 0,
            "note": (f"champion was refit on every test window: its recorded test-span {metric} relative to "
                     f"seasonal naive ({ratio:.4f}) is compared")}


def compare_with_champion(champion, prepared, backtest: Backtest, metric: str) -> dict:  # noqa: ANN001
    """The new served forecasts vs the champion's vs seasonal naive, on test windows the champion never saw.

    A champion refit on all its history has seen every test window whose origin is before the end of its
    data; judging it there would favour it. When no test window starts after its data, the champion's own
    recorded test-span result is used, as a ratio to seasonal naive on its windows (so spans of different
    difficulty compare), and the note says so. ``comparable`` is False when neither is possible.
    """
    from nightcast.tasks.data.prepare import index_with_state, window_keys

    index, season = prepared.index, prepared.season_length
    train_end = np.datetime64(prepared.train_end, "us")
    pick = _relative(backtest.metrics, metric)
    result = {"new": pick[SERVED], "seasonal_naive": pick["seasonal_naive"], "champion": None,
              "champion_version": None, "comparable": True, "windows": len(backtest.test_starts), "note": ""}
    if champion is None:
        return {**result, "note": "no champion yet"}
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
    cut = pl.lit(np.datetime64(str((champion.manifest.get("data") or {}).get("end") or "1970-01-01"), "us"))
    keys = pl.DataFrame({"series_id": index.series_of(backtest.test_starts),
                         "origin": index.timestamps[index.origin(backtest.test_starts)],
                         "pos": np.arange(len(backtest.test_starts))},
                        schema={"series_id": pl.String, "origin": pl.Datetime("us"), "pos": pl.Int64})
    common = (keys.filter(pl.col("origin") >= cut.cast(pl.Datetime("us")))
              .join(window_keys(c_index), on=["series_id", "origin"], suffix="_c"))
    if common.height == 0:
        return _recorded_comparison(champion, result, metric)
    mine, theirs = common["pos"].to_numpy(), common["pos_c"].to_numpy()
    starts, c_starts = backtest.test_starts[mine], c_index.splits["test"][theirs]
    shared = {m: f[mine] for m, f in backtest.candidates_test.items()}
    champ_net = ensemble_median([inverse_scale(p.astype(np.float64), c_index.series_of(c_starts), state)
                                 for p in predict_seeds(champion.networks(), c_index, c_starts)])
    cw = champion_weights(champion)
    champ_cands = {m: (champ_net if m == NETWORK else shared.get(m, np.full_like(champ_net, np.nan)))
                   for m in cw.candidates}
    champ = combine(champ_cands, cw.rows(index.series_of(starts)), cw.mode)
    table = score_forecasts(index, starts, {"new": backtest.served_test[mine], "champion": champ,
                                            "seasonal_naive": shared[REFERENCE]},
                            mase_scales(index, train_end, season))
    vals = _relative(table, metric)
    return {**result, "new": vals["new"], "champion": vals["champion"], "seasonal_naive": vals["seasonal_naive"],
            "windows": common.height,
            "note": f"compared on {common.height} common test windows after the champion's data"}


def evaluate_candidates(params: RetrainParams, prepared: Prepared, trained: list[TrainResult], champion: Bundle | None,
              champion_error: str, log: logging.Logger | None = None) -> dict:
    """Backtest: weights and widths from the validation windows; the test span scored and compared."""
    logger = log or logging.getLogger(__name__)
    index = prepared.index
    val, test = index.splits["val"], index.splits["test"]
    if len(test) == 0:
        raise ValueError("no test windows: the test span is shorter than the horizon for every series")
    level = params.intervals.level if params.intervals.method == "conformal" else None
    bt = run_backtest(index, prepared.state, np.datetime64(prepared.train_end, "us"), prepared.season_length,
                      predict_seeds([t.net for t in trained], index, val),
                      predict_seeds([t.net for t in trained], index, test), params.serve, level)
    comparison = compare_with_champion(champion, prepared, bt, params.promotion.metric)
    if champion_error:
        comparison["note"] = f"champion unusable ({champion_error})"
    pooled = dict(zip(bt.weights.candidates, np.round(bt.weights.pooled_weights(), 3).tolist()))
    logger.info("combination (%s) weights pooled over the panel, from %d backtest windows: %s; series served by: %s",
                params.serve.combine, len(val), pooled, bt.served_counts)
    logger.info("test-span metrics (%d windows):\n%s", len(test), format_metrics(bt.metrics))
    if bt.intervals:
        t = bt.intervals["test"]
        logger.info("%.0f%% conformal intervals: test coverage %.1f%% over %d points, mean width %.3f",
                    100 * level, 100 * t["coverage"], t["points"], t["mean_width"])
    return {"metrics": bt.metrics, "comparison": comparison, "intervals": bt.intervals, "backtest": bt,
            "served_counts": bt.served_counts}


def promotion_decision(params: RetrainParams, comp: dict) -> Decision:
    """The promotion rule applied to a comparison with the champion (or with none)."""
    if comp["comparable"]:
        return decide_promotion(params.promotion, comp["new"], comp["seasonal_naive"], comp["champion"], comp["note"])
    if not params.promotion.beat_champion:
        return decide_promotion(params.promotion, comp["new"], comp["seasonal_naive"], None, comp["note"])
    return Decision(False, f"not promoted: {comp['note']}; the champion stays "
                           "(set promotion.beat_champion=false to replace it)")


def champion_decider(store: Store, params: RetrainParams, prepared: Prepared, evaluation: dict,
              log: logging.Logger | None = None):  # noqa: ANN202
    """``promote``'s judge: the comparison made at evaluation time while the champion is the one this run
    compared with; a fresh comparison on the same test windows when another run moved the pointer since."""
    logger = log or logging.getLogger(__name__)
    first = evaluation["comparison"]

    def decide(current: dict | None) -> tuple[Decision, dict]:
        comp = first
        if (current or {}).get("version") != first["champion_version"]:
            champion, why = None, ""
            if current is not None:
                try:
                    champion = load_bundle(store, params.model_name, current["version"])
                except RegistryError as exc:
                    why = str(exc)
            logger.info("the champion moved to %s while this run trained; comparing with it again",
                        None if current is None else current["version"])
            comp = compare_with_champion(champion, prepared, evaluation["backtest"], params.promotion.metric)
            if why:
                comp["note"] = f"champion unusable ({why})"
        evaluation["comparison"] = comp
        return promotion_decision(params, comp), {params.promotion.metric: comp["new"], "windows": comp["windows"]}

    return decide
