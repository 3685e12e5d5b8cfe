"""Naive and seasonal-naive forecasts: what every model must beat."""

from __future__ import annotations

import numpy as np


def naive(target: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
    """Repeat the last observed value: (n,) origin indices -> (n, H)."""
    return np.repeat(target[origins][:, None], horizon, axis=1)


def seasonal_lag(h, season: int):  # noqa: ANN001, ANN201 - an int, a numpy array or a polars expression
    """How many steps before its target seasonal naive reads horizon step ``h`` (1-based): m·ceil(h/m), the
    same phase of the last full season before the origin. The one rule the backtest, scoring and the monitor
    (on a polars expression over stored forecasts) share."""
    return ((h - 1) // season + 1) * season


def seasonal_naive(target: np.ndarray, origins: np.ndarray, horizon: int, season: int,
                   series_start: np.ndarray) -> np.ndarray:
    """Repeat the last full season: ŷ[t+h] = y[t+h − m·ceil(h/m)].

    Falls back to naive where a series has less than one season of history.
    """
    h = np.arange(1, horizon + 1)
    back = seasonal_lag(h, season)
    idx = origins[:, None] + h - back  # (n, H)
    ok = idx >= series_start[:, None]
    return np.where(ok, target[np.maximum(idx, 0)], target[origins][:, None])
