"""Combine candidate forecasts per series, with weights learned on the backtest windows.

Candidates are the network (the median of its seeds), the baselines and a classical model;
each gives (n, H) forecasts for the same windows (NaN where it has none). What is served is
their weighted mean, never a hard switch on one noisy span (M4, M5 and N-BEATS all won with
combinations):

- Per series and candidate, the backtest evidence is its MAE relative to seasonal naive's on
  the same points, combined on the log scale, so no series and no unit dominates.
- Pooled: the trimmed mean of those log ratios over series (a geometric mean of relative MAE,
  10 % trimmed at each end). One near-flat series cannot move it, whatever its MASE.
- Per series: its own log ratio shrunk toward the pooled one by its evidence in horizons,
  ``(n·own + prior·pooled) / (n + prior)``, so a short series is decided mostly by the panel.
- Weights ∝ (relative MAE)^-power over the candidates a window has; with ``trim``, a candidate whose
  shrunk relative MAE is more than ``trim`` times the best one's gets none (a trimmed combination:
  a poor candidate's small weight still costs when it is far off).

Only backtest windows set weights; the test span only reports. Everything runs on stacked
arrays (``np.bincount`` per series), never a loop over series or windows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

REFERENCE = "seasonal_naive"  # relative errors are against it; always available
COMBINATION = "combination"  # the method name of a mixed forecast
_CLIP = np.log(1e3)  # log relative errors are clipped to ±this: a zero MAE cannot make a weight infinite


@dataclass
class Weights:
    """Learned combination: candidates, pooled log relative MAE, per-series weights and evidence."""

    candidates: list[str]
    pooled: np.ndarray  # (C,) log relative MAE over the panel
    series_ids: list[str]
    per_series: np.ndarray  # (S, C) weights (rows sum to 1)
    evidence: np.ndarray  # (S,) horizons of backtest evidence per series
    mode: str = "weighted"
    power: float = 2.0
    trim: float | None = None  # candidates worse than the best by more than this ratio get no weight

    def pooled_weights(self) -> np.ndarray:
        return _normalise(np.exp(-self.power * self.pooled)[None, :], _kept(self.pooled[:, None], self.trim).T)[0]

    def rows(self, series_ids: np.ndarray) -> np.ndarray:
        """(n, C) weights for rows labelled ``series_ids``; unseen series get the pooled weights."""
        import polars as pl

        table = pl.DataFrame({"s": pl.Series(self.series_ids, dtype=pl.String),
                              "i": np.arange(len(self.series_ids), dtype=np.int64)})
        pos = (pl.DataFrame({"s": pl.Series(np.asarray(series_ids, dtype=str), dtype=pl.String)})
               .join(table, on="s", how="left", maintain_order="left")["i"]
               .fill_null(len(self.series_ids)).to_numpy())  # a join, not a loop over series
        per = np.vstack([self.per_series, self.pooled_weights()[None, :]])
        return per[pos]

    def without(self, series: list[str]) -> Weights:
        """These series left out of the per-series table: served, they get the pooled weights as every series
        the backtest never listed does (the series a training index holds only for their rows)."""
        ids = np.asarray(self.series_ids, dtype=object)
        keep = ~np.isin(ids, np.asarray(list(series), dtype=object))
        return dataclasses.replace(self, series_ids=ids[keep].tolist(), per_series=self.per_series[keep],
                                   evidence=self.evidence[keep])

    def to_json(self) -> dict:
        return {"mode": self.mode, "power": self.power, "trim": self.trim, "candidates": self.candidates,
                "pooled_log_rel_mae": [float(v) for v in self.pooled],
                "pooled_weights": [round(float(v), 6) for v in self.pooled_weights()],
                "per_series": {s: [round(float(v), 6) for v in w] for s, w in zip(self.series_ids, self.per_series)},
                "evidence": {s: round(float(v), 3) for s, v in zip(self.series_ids, self.evidence)}}

    @classmethod
    def from_json(cls, d: dict) -> Weights:
        ids = list(d["per_series"])
        c = len(d["candidates"])
        per = np.array([d["per_series"][s] for s in ids], dtype=np.float64).reshape(len(ids), c)
        ev = np.array([d.get("evidence", {}).get(s, 0.0) for s in ids], dtype=np.float64)
        return cls(list(d["candidates"]), np.asarray(d["pooled_log_rel_mae"], dtype=np.float64), ids, per, ev,
                   d.get("mode", "weighted"), float(d.get("power", 2.0)), d.get("trim"))


def _normalise(w: np.ndarray, available: np.ndarray) -> np.ndarray:
    w = np.where(available, w, 0.0)
    total = w.sum(axis=1, keepdims=True)
    return np.divide(w, total, out=np.zeros_like(w), where=total > 0)


def _kept(log_rel: np.ndarray, trim: float | None) -> np.ndarray:
    """(C, S) which candidates keep a weight: within ``trim`` times the best relative MAE (all when None)."""
    if not trim:
        return np.ones(log_rel.shape, bool)
    return log_rel <= log_rel.min(axis=0, keepdims=True) + np.log(trim)


def ensemble_median(members: list[np.ndarray]) -> np.ndarray:
    """The per-point median of several seeds' (n, H) forecasts (one seed: itself)."""
    if len(members) == 1:
        return members[0]
    return np.median(np.stack(members), axis=0)


def robust_mean(values: np.ndarray, trim: float = 0.1) -> float:
    """Mean after dropping the ``trim`` share at each end (the median below 10 values): the panel's
    figure, which one series, however extreme, moves by at most one rank."""
    v = np.sort(values[np.isfinite(values)])
    if v.size == 0:
        return float(_CLIP)
    if v.size < 10:
        return float(np.median(v))
    k = int(trim * v.size)
    return float(v[k:v.size - k].mean())


def relative_errors(forecasts: dict[str, np.ndarray], truth: np.ndarray, codes: np.ndarray,
                    n_series: int) -> tuple[np.ndarray, np.ndarray]:
    """(C, S) log relative MAE of each candidate against seasonal naive on the same points (NaN where a
    series has none) and (S,) points of evidence per series. ``truth`` is the raw value (NaN: none)."""
    ref = forecasts[REFERENCE]
    rel = np.full((len(forecasts), n_series), np.nan)
    points = np.zeros(n_series)
    codes = np.broadcast_to(codes[:, None], truth.shape)
    for i, f in enumerate(forecasts.values()):  # a handful of candidates
        m = np.isfinite(truth) & np.isfinite(f) & np.isfinite(ref)
        own = np.bincount(codes[m], weights=np.abs(f - truth)[m], minlength=n_series)
        base = np.bincount(codes[m], weights=np.abs(ref - truth)[m], minlength=n_series)
        n = np.bincount(codes[m], minlength=n_series)
        with np.errstate(divide="ignore", invalid="ignore"):
            lr = np.log(np.maximum(own, 1e-12) / np.maximum(base, 1e-12))
        rel[i] = np.where(n > 0, np.clip(lr, -_CLIP, _CLIP), np.nan)
        points = np.maximum(points, n)
    return rel, points


def fit_weights(forecasts: dict[str, np.ndarray], truth: np.ndarray, codes: np.ndarray, series_ids: list[str],
                horizon: int, mode: str = "weighted", prior: float = 4.0, power: float = 2.0,
                trim: float | None = None) -> Weights:
    """Combination weights from backtest forecasts of each candidate (see the module docstring).

    ``mode``: ``weighted`` (the default), ``mean`` (equal weights), ``median`` (served as the median of
    the candidates; weights record equal shares), or ``switch`` (each series' single best candidate
    after shrinkage: the hard switch, kept for comparison).
    """
    if REFERENCE not in forecasts:
        raise ValueError(f"the candidates must include {REFERENCE}")
    names = list(forecasts)
    rel, points = relative_errors(forecasts, truth, codes, len(series_ids))
    has = np.isfinite(rel)
    pooled = np.array([robust_mean(rel[i][has[i]]) for i in range(len(names))])
    evidence = points / max(1, horizon)  # horizons of backtest evidence
    own = np.where(has, rel, pooled[:, None])
    n = np.where(has, evidence[None, :], 0.0)
    shrunk = (n * own + prior * pooled[:, None]) / (n + prior)  # (C, S)
    if mode == "weighted":
        w = np.where(_kept(shrunk, trim).T, np.exp(-power * shrunk.T), 0.0)
    elif mode in ("mean", "median"):
        w = np.ones((len(series_ids), len(names)))
    elif mode == "switch":
        w = np.zeros((len(series_ids), len(names)))
        w[np.arange(len(series_ids)), np.argmin(shrunk, axis=0)] = 1.0
    else:
        raise ValueError(f"combination mode must be weighted, mean, median or switch, not {mode!r}")
    per = _normalise(w, np.ones_like(w, dtype=bool))
    return Weights(names, pooled, list(series_ids), per, evidence, mode, power, trim if mode == "weighted" else None)


def combine(forecasts: dict[str, np.ndarray], weights: np.ndarray, mode: str = "weighted") -> np.ndarray:
    """(n, H) served forecasts: each row's weighted mean over the candidates it has (``weights``: (n, C) in
    the order of ``forecasts``); the median of the available candidates in ``median`` mode. Seasonal naive
    is always available, so no row is left empty."""
    stack = np.stack([forecasts[m] for m in forecasts])  # (C, n, H)
    ok = np.isfinite(stack)
    if mode == "median":
        with np.errstate(all="ignore"):
            return np.nanmedian(np.where(ok, stack, np.nan), axis=0)
    w = np.where(ok, weights.T[:, :, None], 0.0)  # (C, n, H)
    total = w.sum(axis=0)
    served = (np.where(ok, stack, 0.0) * w).sum(axis=0) / np.where(total > 0, total, 1.0)
    return np.where(total > 0, served, forecasts[REFERENCE])


def method_names(weights: np.ndarray, candidates: list[str], share: float = 0.999) -> np.ndarray:
    """(n,) what made each row's forecast: a candidate's name when it carries (nearly) all the weight,
    else ``combination``."""
    if weights.size == 0:
        return np.zeros(0, dtype=object)
    top = np.argmax(weights, axis=1)
    single = weights[np.arange(len(weights)), top] >= share
    return np.where(single, np.asarray(candidates, dtype=object)[top], COMBINATION)
