"""The standard Theta method, fitted on every history at once (stacked arrays, no loop over series).

This is the model statsforecast calls ``Theta`` (Fiorucci et al. 2016's STM, theta = 2, the
form of Assimakopoulos & Nikolopoulos' method that won M3), step for step:

1. **Seasonality test** (when the season ``m`` ≥ 4 and the history holds two seasons): the
   autocorrelation at lag ``m`` against its 90 % one-sided bound, ``|r_m| > 1.645·√((1 + 2·Σ r_k²)/n)``.
2. **Classical decomposition** of seasonal histories (a centred moving average of one season;
   phase means of the detrended values, normalised): multiplicative when every value is positive
   and no seasonal index falls under 0.01, else additive. The history is deseasonalised; the
   forecast is reseasonalised with the last season's indices.
3. **STM**: a line fitted by least squares (intercept ``A``, slope ``B``) and simple exponential
   smoothing, forecast ``f_i = ℓ_{i-1} + ½·(A·(1-α)^i + B·(1-(1-α)^{i+1})/α)``. The smoothing
   weight ``α`` ∈ [0.1, 0.99] and the initial level ``ℓ₀`` minimise the squared one-step errors
   after the first three.

statsforecast fits one history at a time in a Python loop over series (about 1-3 ms each, most
of a 10,000-series scoring run) and finds ``(ℓ₀, α)`` with Nelder-Mead. Here every history of
one length is one array: for a given ``α`` the one-step errors are linear in ``ℓ₀``, so the best
``ℓ₀`` is a closed-form least-squares solution, and ``α`` is searched on a grid refined twice
around the best point, for all histories and grid points at once. The loops run over time steps,
lags and filter taps (bounded by the history length, ≤ 400), never over series; every reduction
is row by row, so a history's forecast does not depend on which others share its call. The objective reached
is the global one on the grid, so it is at or below Nelder-Mead's local optimum (tested against
statsforecast on real series).
"""

from __future__ import annotations

import numpy as np

_Z95 = 1.6448536269514722  # the one-sided 95 % normal quantile (scipy.stats.norm.ppf(0.95))
_ALPHA_LO, _ALPHA_HI = 0.1, 0.99  # statsforecast's bounds on the smoothing weight
_GRIDS = (np.linspace(_ALPHA_LO, _ALPHA_HI, 19), 0.05, 0.005)  # coarse grid, then ± these with 11 points
_BURN = 3  # the first three one-step errors are not in the objective (statsforecast's ``e[3:]``)
_CHUNK = 50_000  # histories per array pass: memory stays (chunk × grid), not (histories × grid)


def theta_forecasts(values: np.ndarray, lengths: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """(n, H) standard Theta forecasts of ``n`` histories stored back to back (``lengths`` their sizes).
    A history needs at least 4 values (statsforecast's minimum); shorter ones, and any whose fit is not
    finite, get NaN rows."""
    values = np.asarray(values, dtype=np.float64)
    lengths = np.asarray(lengths, dtype=np.int64)
    out = np.full((len(lengths), horizon), np.nan)
    if not len(lengths):
        return out
    ends = np.cumsum(lengths)
    for length in np.unique(lengths[lengths > _BURN]):  # one array per distinct length (≤ the tail length)
        rows = np.flatnonzero(lengths == length)
        for lo in range(0, len(rows), _CHUNK):
            part = rows[lo:lo + _CHUNK]
            y = values[(ends[part] - length)[:, None] + np.arange(length)]
            out[part] = _fit_forecast(y, horizon, int(season))
    out[~np.isfinite(out).all(axis=1)] = np.nan
    return out


def _fit_forecast(y: np.ndarray, horizon: int, m: int) -> np.ndarray:
    """(k, H) forecasts for ``k`` histories of one length (a (k, n) array)."""
    k, n = y.shape
    seasonal = _seasonal_test(y, m) if m >= 4 and n >= 2 * m else np.zeros(k, bool)
    fc = np.empty((k, horizon))
    plain = ~seasonal
    if plain.any():
        fc[plain] = _stm(y[plain], horizon)
    if seasonal.any():
        ys = y[seasonal]
        index, multiplicative = _decompose(ys, m)  # (k_s, m) seasonal index by phase, kind per history
        phase = np.arange(n) % m
        adjusted = np.where(multiplicative[:, None], ys / index[:, phase], ys - index[:, phase])
        ahead = index[:, (n + np.arange(horizon)) % m]  # the last season's indices, repeated
        mean = _stm(adjusted, horizon)
        fc[seasonal] = np.where(multiplicative[:, None], mean * ahead, mean + ahead)
    return fc


def _seasonal_test(y: np.ndarray, m: int) -> np.ndarray:
    """(k,) whether each history's lag-``m`` autocorrelation is significant (statsmodels' ``acf``, biased)."""
    d = y - y.mean(axis=1, keepdims=True)
    c0 = (d * d).sum(axis=1)
    r = np.stack([(d[:, :-lag] * d[:, lag:]).sum(axis=1) for lag in range(1, m + 1)], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = r / c0[:, None]
        stat = np.sqrt((1 + 2 * np.sum(r[:, :-1] ** 2, axis=1)) / y.shape[1])
        return np.abs(r[:, -1]) / stat > _Z95  # a constant history: NaN, not seasonal


def _decompose(y: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Classical decomposition (statsmodels' ``seasonal_decompose``): (k, m) seasonal indices by phase
    (phase 0 = the history's first step) and (k,) whether each is multiplicative."""
    k, n = y.shape
    filt = np.r_[0.5, np.ones(m - 1), 0.5] / m if m % 2 == 0 else np.full(m, 1.0 / m)
    half = len(filt) // 2
    trend = np.full((k, n), np.nan)
    inner = trend[:, half:n - half]
    inner[:] = 0.0
    for tap, weight in enumerate(filt):  # one pass per filter tap (≤ season + 1), never per series
        inner += weight * y[:, tap:tap + n - 2 * half]

    def indices(multiplicative: bool) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            detrended = y / trend if multiplicative else y - trend
        padded = np.full((k, -(-n // m) * m), np.nan)
        padded[:, :n] = detrended
        with np.errstate(all="ignore"):
            means = np.nanmean(padded.reshape(k, -1, m), axis=1)
        return means / means.mean(axis=1, keepdims=True) if multiplicative else means - means.mean(axis=1, keepdims=True)

    mult = y.min(axis=1) > 0
    index = indices(False)
    if mult.any():
        ratio = indices(True)
        mult &= ~(ratio < 0.01).any(axis=1)  # an index near zero: additive instead (statsforecast's rule)
        index = np.where(mult[:, None], ratio, index)
    return index, mult


def _stm(y: np.ndarray, horizon: int) -> np.ndarray:
    """(k, H) STM forecasts of (k, n) histories: ``(ℓ₀, α)`` fitted (see the module docstring)."""
    k, n = y.shape
    t = np.arange(1, n + 1, dtype=np.float64)
    mean = y.mean(axis=1)
    slope = 6 * (2 * (y * t).sum(axis=1) / n - (n + 1) * mean) / (n * n - 1)  # the least-squares line on t = 1..n
    intercept = mean - (n + 1) * slope / 2
    best = np.full(k, _GRIDS[0][0])
    for step, grid in enumerate(_GRIDS):
        if step == 0:
            alphas = np.broadcast_to(grid, (k, len(grid)))
        else:
            alphas = np.clip(best[:, None] + np.linspace(-grid, grid, 11), _ALPHA_LO, _ALPHA_HI)
        sse, _ = _objective(y, intercept, slope, alphas)
        best = alphas[np.arange(k), np.nanargmin(np.where(np.isfinite(sse), sse, np.inf), axis=1)]
    _, (level, alpha) = _objective(y, intercept, slope, best[:, None])
    return _ahead(level[:, 0], alpha[:, 0], intercept, slope, n, horizon)


def _objective(y: np.ndarray, a: np.ndarray, b: np.ndarray,
               alphas: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """For each history and candidate ``α`` (``alphas``: (k, g)): the squared one-step errors after the
    burn-in at the best initial level, and the level after the last value with that initial level.

    With ``q = 1 - α`` the level before step ``i`` is ``q^i·ℓ₀ + s_{i-1}`` (``s``: the smoothing run from
    0) and the drift term is ``½·(A·q^i + B·(1 - q^{i+1})/α) = c₁ + c₂·q^i``, so the error at ``i`` is
    ``r_i - q^i·ℓ₀`` with ``r_i = y_i - s_{i-1} - c₁ - c₂·q^i``: the best ``ℓ₀`` is ``Σ r_i q^i / Σ q^2i``
    (the latter a geometric sum)."""
    k, n = y.shape
    q = 1.0 - alphas
    c1 = 0.5 * b[:, None] / alphas  # drift = 1 - 1/theta = ½ (theta = 2)
    c2 = 0.5 * (a[:, None] - b[:, None] * q / alphas)
    steps = np.ascontiguousarray(y.T)  # one contiguous row per time step
    smooth = alphas * steps[0][:, None]  # s_0 (the level after y_0 when ℓ₀ = 0)
    qi = q.copy()  # q^i, from i = 1
    s_rq = np.zeros_like(alphas)
    s_rr = np.zeros_like(alphas)
    r = np.empty_like(alphas)
    for i in range(1, n):
        value = steps[i][:, None]
        if i >= _BURN:
            np.subtract(value, c1, out=r)
            r -= smooth
            r -= c2 * qi
            s_rr += r * r
            r *= qi
            s_rq += r
        smooth *= q
        smooth += alphas * value
        qi *= q
    q2 = q * q
    with np.errstate(divide="ignore", invalid="ignore"):
        s_qq = q2 ** _BURN * (1 - q2 ** (n - _BURN)) / (1 - q2)  # Σ_{i=3}^{n-1} q^2i
        level0 = np.clip(np.where(s_qq > 0, s_rq / s_qq, 0.0), -1e10, 1e10)
    sse = s_rr - 2 * level0 * s_rq + level0 * level0 * s_qq
    last = qi * level0 + smooth  # q^n ℓ₀ + s_{n-1}: the level after the last value
    return sse, (last, alphas)


def _ahead(level: np.ndarray, alpha: np.ndarray, a: np.ndarray, b: np.ndarray, n: int,
           horizon: int) -> np.ndarray:
    """(k, H) the STM forecast path from the level after ``n`` values: each step's forecast becomes the
    next step's value (statsforecast's ``forecast`` with ``usemu``)."""
    q = 1.0 - alpha
    out = np.empty((len(level), horizon))
    qi = q ** n
    for j in range(horizon):
        mu = level + 0.5 * (a * qi + b * (1 - qi * q) / alpha)
        out[:, j] = mu
        level = alpha * mu + q * level
        qi = qi * q
    return out
