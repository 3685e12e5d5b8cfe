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

import numpy as np

from tasks.features import FeatureState, inverse_scale, scale_values
from tasks.window import WindowIndex


def conformal_widths(residual: np.ndarray, level: float) -> list[float]:
    """Per horizon step, the ``ceil((n + 1)·level)``-th smallest |residual| (NaN: no observation there):
    the split-conformal half-width, with the finite-sample correction."""
    if residual.shape[0] == 0:
        raise ValueError("no validation windows to calibrate intervals on")
    out = []
    for h in range(residual.shape[1]):  # H steps, not windows
        r = np.sort(np.abs(residual[:, h][np.isfinite(residual[:, h])]))
        if r.size == 0:
            raise ValueError(f"no observed validation targets at horizon {h + 1}")
        out.append(float(r[min(math.ceil((r.size + 1) * level), r.size) - 1]))
    return out


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
