"""The standard Theta method, fitted on every history at once (stacked arrays, no loop over series).

This is the model statsforecast calls ``Theta`` (Fiorucci et al. 2016's STM, theta = 2, the
form of Assimakopoulos & Nikolopoulos' method that won M3), step for step:

1. **Seasonality test** (when the season ``m`` ≥ 4 and the history holds two seasons): the
   autocorrelation at lag ``m`` against its one-sided 95 % bound (a two-sided 90 % test),
   ``|r_m| > 1.645·√((1 + 2·Σ r_k²)/n)``.
2. **Classical decomposition** of seasonal histories (a centred moving average of one season;
   phase means of the detrended values, normalised): multiplicative when every value is positive
   and no seasonal index falls under 0.01, else additive. The history is deseasonalised; the
   forecast is reseasonalised with the last season's indices.
3. **STM**: a line fitted by least squares (intercept ``A``, slope ``B``) and simple exponential
   smoothing, forecast ``f_i = ℓ_{i-1} + ½·(A·(1-α)^i + B·(1-(1-α)^{i+1})/α)``. The smoothing
   weight ``α`` ∈ [0.1, 0.99] and the initial level ``ℓ₀`` minimise the squared one-step errors
   after the first three.

statsforecast fits one history at a time in a Python loop over series (about 3-4 ms per hourly
history here, most of a 10,000-series scoring run) and finds ``(ℓ₀, α)`` with Nelder-Mead. Here all histories are one
right-aligned array (ragged ones padded before their first value): for a given ``α`` the one-step
errors are linear in ``ℓ₀``, so the best ``ℓ₀`` is a closed-form least-squares solution, and ``α`` is
searched on a grid refined twice around the best point, for all histories and grid points at once.
The loops run over time steps, lags, filter taps and distinct lengths (each bounded by the history
length, ≤ 400), never over series; every reduction is row by row (running sums where rows are
padded), so a history's forecast does not depend on which others share its call. The objective
reached is the best on the grid; on real series it was at or below Nelder-Mead's local optimum, up to
the grid's resolution (a grid finds the global minimum only where the objective is unimodal at its
spacing; tested against statsforecast).
"""

from __future__ import annotations

import numpy as np

_Z95 = 1.6448536269514722  # the one-sided 95 % normal quantile (scipy.stats.norm.ppf(0.95))
_ALPHA_LO, _ALPHA_HI = 0.1, 0.99  # statsforecast's bounds on the smoothing weight
_GRIDS = (np.linspace(_ALPHA_LO, _ALPHA_HI, 19), 0.05, 0.005)  # coarse grid, then ± these with 11 points
_BURN = 3  # the first three one-step errors are not in the objective (statsforecast's ``e[3:]``)
_CHUNK_VALUES = 1 << 21  # history values per array pass (16 MiB of float64 per copy): memory stays bounded
_STM_VALUES = 1 << 18  # history values per smoothing fit: its dozen (rows, grid) arrays stay in a core's cache
# (1,820 hourly histories of 144 values: 20,000 of them fitted in 1.06 s against 1.57 s in chunks of 14,563)


def theta_forecasts(values: np.ndarray, lengths: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """(n, H) standard Theta forecasts of ``n`` histories stored back to back (``lengths`` their sizes).
    A history needs at least 4 values (statsforecast's minimum); shorter ones, and any whose fit is not
    finite, get NaN rows.

    The seasonal test and decomposition run on the histories of each length together (a handful of
    array passes per distinct length); the smoothing then runs over all of them right-aligned (``_stm``), so
    ragged histories cost one pass over the longest, not one per length, in blocks of ``_STM_VALUES`` values
    (a block's arrays stay in cache; every row's arithmetic is its own, so the blocks never change a value)."""
    with np.errstate(all="ignore"):  # a degenerate history (inf, overflow, a zero index) gives a NaN row, not warnings
        return _theta_forecasts(np.asarray(values, dtype=np.float64), np.asarray(lengths, dtype=np.int64),
                                horizon, int(season))


def _theta_forecasts(values: np.ndarray, lengths: np.ndarray, horizon: int, season: int) -> np.ndarray:
    out = np.full((len(lengths), horizon), np.nan)
    fit = np.flatnonzero(lengths > _BURN)
    if not fit.size:
        return out
    ends = np.cumsum(lengths)
    chunk = max(1, _CHUNK_VALUES // int(lengths[fit].max()))
    for lo in range(0, len(fit), chunk):
        rows = fit[lo:lo + chunk]
        width = int(lengths[rows].max())
        padded = np.zeros((len(rows), width))  # right-aligned; zeros before a history's first value
        ahead = np.zeros((len(rows), horizon))  # the seasonal indices each forecast step gets
        multiplicative = np.zeros(len(rows), bool)
        for length in np.unique(lengths[rows]):  # per distinct length (≤ the tail length), never per series
            at = np.flatnonzero(lengths[rows] == length)
            y = values[(ends[rows[at]] - length)[:, None] + np.arange(length)]
            padded[at, width - length:], ahead[at], multiplicative[at] = _deseasonalise(y, horizon, season)
        start, sub = width - lengths[rows], max(1, _STM_VALUES // width)
        mean = np.concatenate([_stm(padded[a:a + sub], start[a:a + sub], horizon) for a in range(0, len(rows), sub)])
        out[rows] = np.where(multiplicative[:, None], mean * ahead, mean + ahead)
    out[~np.isfinite(out).all(axis=1)] = np.nan
    return out


def _deseasonalise(y: np.ndarray, horizon: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For ``k`` histories of one length (a (k, n) array): the values the model is fitted on (seasonally
    adjusted where the test finds a season, else as they are), the (k, H) indices that reseasonalise the
    forecast (0 to add where none), and whether each is multiplicative (then the forecast is multiplied)."""
    k, n = y.shape
    seasonal = _seasonal_test(y, m) if m >= 4 and n >= 2 * m else np.zeros(k, bool)
    adjusted, ahead, multiplicative = y.copy(), np.zeros((k, horizon)), np.zeros(k, bool)
    if seasonal.any():
        ys = y[seasonal]
        index, mult = _decompose(ys, m)  # (k_s, m) seasonal index by phase, kind per history
        phase = np.arange(n) % m
        adjusted[seasonal] = np.where(mult[:, None], ys / index[:, phase], ys - index[:, phase])
        ahead[seasonal] = index[:, (n + np.arange(horizon)) % m]  # the last season's indices, repeated
        multiplicative[seasonal] = mult
    return adjusted, ahead, multiplicative


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


def _stm(y: np.ndarray, start: np.ndarray, horizon: int) -> np.ndarray:
    """(k, H) STM forecasts of (k, w) right-aligned histories (row ``r``'s first value in column
    ``start[r]``, zeros before it): ``(ℓ₀, α)`` fitted (see the module docstring)."""
    k, width = y.shape
    n = (width - start).astype(np.float64)
    steps = np.ascontiguousarray(y.T)  # one contiguous row per time step
    total, weighted = np.zeros(k), np.zeros(k)
    for col in range(width):  # running sums: the zeros before a history add exactly nothing
        total += steps[col]
        weighted += steps[col] * (col - start + 1)
    mean = total / n
    slope = 6 * (2 * weighted / n - (n + 1) * mean) / (n * n - 1)  # the least-squares line on t = 1..n
    intercept = mean - (n + 1) * slope / 2
    best = np.full(k, _GRIDS[0][0])
    for stage, grid in enumerate(_GRIDS):
        if stage == 0:
            alphas = np.broadcast_to(grid, (k, len(grid)))
        else:
            alphas = np.clip(best[:, None] + np.linspace(-grid, grid, 11), _ALPHA_LO, _ALPHA_HI)
        sse, _ = _objective(steps, start, intercept, slope, alphas)
        best = alphas[np.arange(k), np.nanargmin(np.where(np.isfinite(sse), sse, np.inf), axis=1)]
    _, (level, alpha) = _objective(steps, start, intercept, slope, best[:, None])
    return _ahead(level[:, 0], alpha[:, 0], intercept, slope, n, horizon)


def _objective(steps: np.ndarray, start: np.ndarray, a: np.ndarray, b: np.ndarray,
               alphas: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """For each history and candidate ``α`` (``alphas``: (k, g)): the squared one-step errors after the
    burn-in at the best initial level, and the level after the last value with that initial level.
    ``steps`` is the (w, k) transposed right-aligned array, history ``r`` starting at ``start[r]``.

    With ``q = 1 - α`` the level before step ``i`` is ``q^i·ℓ₀ + s_{i-1}`` (``s``: the smoothing run from
    0) and the drift term is ``½·(A·q^i + B·(1 - q^{i+1})/α) = c₁ + c₂·q^i``, so the error at ``i`` is
    ``r_i - q^i·ℓ₀`` with ``r_i = y_i - s_{i-1} - c₁ - c₂·q^i``: the best ``ℓ₀`` is ``Σ r_i q^i / Σ q^2i``
    (the latter a geometric sum). Before a history starts its smoothing stays 0 (its zeros), ``q^i``
    does not advance and nothing is summed, so each row's arithmetic is what it would be alone."""
    width, k = steps.shape
    q = 1.0 - alphas
    c1 = 0.5 * b[:, None] / alphas  # drift = 1 - 1/theta = ½ (theta = 2)
    c2 = 0.5 * (a[:, None] - b[:, None] * q / alphas)
    smooth = alphas * steps[0][:, None]  # s_0 for histories starting in column 0, else 0
    qi = q.copy()  # q^i, from i = 1
    s_rq = np.zeros_like(alphas)
    s_rr = np.zeros_like(alphas)
    r, tmp = np.empty(alphas.shape), np.empty(alphas.shape)  # every product lands in these: no array per step
    first, last_start = int(start.min()), int(start.max())
    for col in range(1, width):
        value = steps[col][:, None]
        # masks only while some history has not started (ragged input); all-true columns take plain ops
        counted = True if col >= last_start + _BURN else (col - start >= _BURN)[:, None]
        if col >= first + _BURN:
            np.subtract(value, c1, out=r)
            r -= smooth
            r -= np.multiply(c2, qi, out=tmp)
            np.add(s_rr, np.multiply(r, r, out=tmp), out=s_rr, where=counted)
            r *= qi
            np.add(s_rq, r, out=s_rq, where=counted)
        smooth *= q
        smooth += np.multiply(alphas, value, out=tmp)
        np.multiply(qi, q, out=qi, where=True if col >= last_start + 1 else (col - start >= 1)[:, None])
    q2 = q * q
    n = (width - start)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        s_qq = q2 ** _BURN * (1 - q2 ** (n - _BURN)) / (1 - q2)  # Σ_{i=3}^{n-1} q^2i
        level0 = np.clip(np.where(s_qq > 0, s_rq / s_qq, 0.0), -1e10, 1e10)
    sse = s_rr - 2 * level0 * s_rq + level0 * level0 * s_qq
    last = qi * level0 + smooth  # q^n ℓ₀ + s_{n-1}: the level after the last value
    return sse, (last, alphas)


def _ahead(level: np.ndarray, alpha: np.ndarray, a: np.ndarray, b: np.ndarray, n: np.ndarray,
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
