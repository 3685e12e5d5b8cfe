"""Split-conformal prediction intervals from the validation windows' residuals.

Residuals are taken in the scaled space (each series standardised by its own
training-span scaler), per horizon step, over every validation window with an
observed target. The interval for step ``h`` is the point forecast ± the
``ceil((n + 1)·level) / n`` empirical quantile of ``|residual|`` at ``h``; the
bounds are then unscaled like the forecast. Validation windows come after the
training span and before the test span, so the test span measures coverage
honestly. (Early stopping also looked at the validation span, which can make
the intervals slightly narrow; the reported test coverage shows by how much.)
"""

from __future__ import annotations

import math

import numpy as np

from tasks.features import FeatureState, inverse_scale
from tasks.window import WindowIndex


def fit_conformal(index: WindowIndex, scaled_preds: np.ndarray, starts: np.ndarray, level: float) -> list[float]:
    """Per-horizon half-widths (scaled units) from the windows ``starts`` and their predictions."""
    if len(starts) == 0:
        raise ValueError("no validation windows to calibrate intervals on")
    tidx = index.target_index(starts)
    truth = index.past[tidx, 0].astype(np.float64)  # column 0 of past = the scaled target
    residual = np.abs(truth - scaled_preds.astype(np.float64))
    residual[~index.observed[tidx]] = np.nan  # filled gap steps are not evidence
    out = []
    for h in range(index.horizon):
        r = residual[:, h]
        r = np.sort(r[~np.isnan(r)])
        if r.size == 0:
            raise ValueError(f"no observed validation targets at horizon {h + 1}")
        k = min(math.ceil((r.size + 1) * level), r.size)  # finite-sample correction
        out.append(float(r[k - 1]))
    return out


def bounds(scaled_preds: np.ndarray, half_widths, series_ids: list[str],  # noqa: ANN001
           state: FeatureState) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds in the target's units for (n, H) scaled predictions.

    ``half_widths``: (H,) for every row, or (n, H) row by row (each row's served method).
    """
    q = np.asarray(half_widths, dtype=np.float64)
    q = q[None, :] if q.ndim == 1 else q
    p = scaled_preds.astype(np.float64)
    return inverse_scale(p - q, series_ids, state), inverse_scale(p + q, series_ids, state)


def by_method(half_widths: dict[str, list[float]], methods: np.ndarray) -> np.ndarray:
    """(n, H) half-widths: row i gets those of ``methods[i]``."""
    names = list(half_widths)
    table = np.stack([np.asarray(half_widths[m], dtype=np.float64) for m in names])  # (methods, H)
    code = {m: i for i, m in enumerate(names)}
    uniq, inverse = np.unique(np.asarray(methods, dtype=str), return_inverse=True)
    return table[np.array([code[m] for m in uniq], dtype=np.int64)[inverse]] if len(methods) else table[:0]


def coverage(index: WindowIndex, state: FeatureState, scaled_preds: np.ndarray, starts: np.ndarray,
             half_widths) -> dict[str, float]:  # noqa: ANN001 - (H,) or (n, H)
    """Share of observed targets inside the interval, and the mean width, on the windows ``starts``."""
    sids = index.series_of(starts)
    lo, hi = bounds(scaled_preds, half_widths, sids, state)
    tidx = index.target_index(starts)
    y, seen = index.target[tidx], index.observed[tidx]
    inside = (y >= lo) & (y <= hi)
    return {"coverage": float(inside[seen].mean()), "mean_width": float((hi - lo)[seen].mean()),
            "points": int(seen.sum())}
