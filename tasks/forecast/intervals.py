"""Split-conformal prediction intervals from the validation windows' residuals.

Residuals are taken in the scaled space (each series standardised by its own
scaler), per horizon step, over every backtest window, against the raw observed
value (a filled step is no evidence). The interval for step ``h`` is the point forecast ± the
``ceil((n + 1)·level) / n`` empirical quantile of ``|residual|`` at ``h``; the
bounds are then unscaled like the forecast. Validation windows come after the
training span and before the test span, so the test span measures coverage
honestly. (Early stopping also looked at the validation span, which can make
the intervals slightly narrow; the reported test coverage shows by how much.)
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import polars as pl

from nightcast.tasks.data.features import FeatureState, inverse_scale, scale_values
from nightcast.tasks.data.window import WindowIndex

FrameT = TypeVar("FrameT", pl.DataFrame, pl.LazyFrame)


def conformal_widths(residual: np.ndarray, level: float) -> list[float]:
    """Per horizon step, the ``ceil((n + 1)·level)``-th smallest |residual| (NaN: no observation there):
    the split-conformal half-width, with the finite-sample correction."""
    if residual.shape[0] == 0:
        raise ValueError("no validation windows to calibrate intervals on")
    out = []
    for h in range(residual.shape[1]):  # H steps, not windows
        r = np.abs(residual[:, h][np.isfinite(residual[:, h])])
        if r.size == 0:
            raise ValueError(f"no observed validation targets at horizon {h + 1}")
        out.append(conformal_quantile(r, level))
    return out


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The ``ceil((n + 1)·level)``-th smallest of ``n`` scores: split conformal's finite-sample quantile."""
    r = np.sort(scores)
    return float(r[min(math.ceil((r.size + 1) * level), r.size) - 1])


def fit_conformal(index: WindowIndex, state: FeatureState, scaled_preds: np.ndarray, starts: np.ndarray,
                  level: float) -> list[float]:
    """Per-horizon half-widths (scaled units) from the windows ``starts`` and their predictions, against
    the raw observed values (filled steps are not evidence)."""
    if len(starts) == 0:
        raise ValueError("no validation windows to calibrate intervals on")
    truth = scale_values(index.truth[index.target_index(starts)], index.series_of(starts), state)
    return conformal_widths(truth - scaled_preds.astype(np.float64), level)


def bounds(scaled_preds: np.ndarray, half_widths, series_ids: list[str],  # noqa: ANN001
           state: FeatureState) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds in the target's units for (n, H) scaled predictions.

    ``half_widths``: (H,) for every row, or (n, H) row by row (each row's served method).
    """
    q = np.asarray(half_widths, dtype=np.float64)
    q = q[None, :] if q.ndim == 1 else q
    p = scaled_preds.astype(np.float64)
    return inverse_scale(p - q, series_ids, state), inverse_scale(p + q, series_ids, state)


def coverage(index: WindowIndex, state: FeatureState, scaled_preds: np.ndarray, starts: np.ndarray,
             half_widths) -> dict[str, float]:  # noqa: ANN001 - (H,) or (n, H)
    """Share of observed targets inside the interval, and the mean width, on the windows ``starts``."""
    sids = index.series_of(starts)
    lo, hi = bounds(scaled_preds, half_widths, sids, state)
    y = index.truth[index.target_index(starts)]
    seen = np.isfinite(y)
    inside = (y >= lo) & (y <= hi)
    return {"coverage": float(inside[seen].mean()), "mean_width": float((hi - lo)[seen].mean()),
            "points": int(seen.sum())}


# Adapting widths from the monitor's actuals: a multiplier per horizon step, shrunk toward 1 by
# the evidence (PRIOR_POINTS) and kept within [1/MAX_FACTOR, MAX_FACTOR].
PRIOR_POINTS = 50.0
MIN_POINTS = 20
MAX_FACTOR = 4.0


def recalibrate(points: pl.DataFrame, half_widths: list[float], state: FeatureState, level: float) -> dict:
    """Multipliers of the bundle's per-horizon half-widths from monitored actuals (online conformal).

    ``points``: scored points of the bundle (``series_id``, ``horizon``, ``forecast``, ``actual``). Each
    point's score is its absolute error in the series' scaled units over the bundle's own half-width at
    its step (what the bundle alone would have served, whatever multiplier its forecast was written
    with, so the rule does not chase itself). The multiplier for step ``h`` is the conformal quantile of
    those scores: the width that would have covered ``level`` of the recent actuals. With ``n`` points it
    is shrunk toward 1 on the log scale by ``n / (n + PRIOR_POINTS)``; under ``MIN_POINTS`` it is 1.
    """
    horizon = len(half_widths)
    known = points.filter(state.scaled(), pl.col("actual").is_not_null(),
                          pl.col("horizon").is_between(1, horizon))
    ids = known["series_id"].to_numpy().astype(str)
    pair = known.select("actual", "forecast").to_numpy().astype(np.float64)  # (n, 2): rows scale per series
    scaled = scale_values(pair, ids, state)
    err = np.abs(scaled[:, 0] - scaled[:, 1])
    steps = known["horizon"].to_numpy().astype(np.int64)
    scores = err / np.maximum(np.asarray(half_widths, dtype=np.float64)[steps - 1], 1e-12)
    factors, counts = [], []
    for h in range(1, horizon + 1):  # H steps, not points
        s = scores[(steps == h) & np.isfinite(scores)]
        counts.append(int(s.size))
        if s.size < MIN_POINTS:
            factors.append(1.0)
            continue
        q = max(conformal_quantile(s, level), 1e-12)
        shrunk = math.exp(math.log(q) * s.size / (s.size + PRIOR_POINTS))
        factors.append(round(float(np.clip(shrunk, 1 / MAX_FACTOR, MAX_FACTOR)), 6))
    return {"factors": factors, "points": counts, "level": level}


def widen(forecasts: FrameT, factors: list[float]) -> FrameT:
    """Bounds moved away from (or toward) the forecast by each horizon step's multiplier (a DataFrame, or a
    LazyFrame as the sharded assemble reads)."""
    f = pl.Series("f", factors, dtype=pl.Float64)
    step = pl.DataFrame({"horizon": pl.int_range(1, len(factors) + 1, eager=True).cast(pl.Int32), "_f": f})
    out = forecasts.join(step.lazy() if isinstance(forecasts, pl.LazyFrame) else step, on="horizon", how="left",
                         maintain_order="left")
    factor = pl.col("_f").fill_null(1.0)
    return out.with_columns(lower=pl.col("forecast") - factor * (pl.col("forecast") - pl.col("lower")),
                            upper=pl.col("forecast") + factor * (pl.col("upper") - pl.col("forecast"))).drop("_f")
