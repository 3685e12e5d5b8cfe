"""The vectorised standard Theta method gives statsforecast's ``Theta`` forecasts, for every history at once."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from nightcast.models import theta as theta_module
from nightcast.models.classical import MIN_HISTORY, classical_forecasts
from nightcast.models.theta import theta_forecasts


def _statsforecast(histories: list[np.ndarray], horizon: int, season: int) -> np.ndarray:
    from statsforecast.models import Theta

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.vstack([Theta(season_length=season).forecast(h.astype(np.float64), horizon)["mean"]
                          for h in histories])


def _stacked(histories: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate(histories), np.array([len(h) for h in histories])


def _real_histories() -> dict[str, tuple[list[np.ndarray], int, int]]:
    """Windows of real series shipped with statsmodels: monthly sea temperatures (seasonal, positive:
    multiplicative), quarterly macro series (some negative: additive, some without a season), yearly
    sunspots (season 11, long cycles)."""
    from statsmodels import datasets

    elnino = datasets.elnino.load_pandas().data.iloc[:, 1:].to_numpy(dtype=float).ravel()
    macro = datasets.macrodata.load_pandas().data
    sunspots = datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(dtype=float)
    return {
        "elnino": ([elnino[s:s + 144] for s in range(0, len(elnino) - 144, 37)], 18, 12),
        "macro": ([macro[c].to_numpy(dtype=float)[-96:] for c in macro.columns[2:]]
                  + [macro[c].to_numpy(dtype=float)[:80] for c in macro.columns[2:]], 8, 4),
        "sunspots": ([sunspots[s:s + 66] for s in range(0, len(sunspots) - 66, 23)], 6, 11),
    }


@pytest.mark.parametrize("name", ["elnino", "macro", "sunspots"])
def test_forecasts_are_statsforecasts_on_real_series(name):
    histories, horizon, season = _real_histories()[name]
    ours = theta_forecasts(*_stacked(histories), horizon, season)
    ref = _statsforecast(histories, horizon, season)
    assert np.isfinite(ours).all()
    rel = np.abs(ours - ref) / np.maximum(np.abs(ref), 1e-9)
    # the same model; only the optimiser differs (a refined grid with the exact best initial level against
    # Nelder-Mead), so most forecasts agree to rounding and none differs by more than a few per cent
    assert np.median(rel) < 1e-5
    assert rel.max() < 0.05


def test_both_decompositions_and_the_plain_path_are_exercised_and_match():
    rng = np.random.default_rng(3)
    t = np.arange(96)
    season = 1 + 0.4 * np.sin(2 * np.pi * t / 12)
    positive = [(50 + 0.2 * t) * season + rng.normal(0, 0.5, 96) for _ in range(6)]  # multiplicative
    signed = [10 * np.sin(2 * np.pi * t / 12) + rng.normal(0, 1, 96) - 3 for _ in range(6)]  # additive
    flat = [20 + 0.05 * t + rng.normal(0, 1, 96) for _ in range(6)]  # no season: no decomposition
    histories = positive + signed + flat
    values, lengths = _stacked(histories)
    seasonal = theta_module._seasonal_test(values.reshape(-1, 96), 12)
    assert seasonal[:12].all() and not seasonal[12:].any()
    _, multiplicative = theta_module._decompose(values.reshape(-1, 96)[:12], 12)
    assert multiplicative[:6].all() and not multiplicative[6:].any()
    np.testing.assert_allclose(theta_forecasts(values, lengths, 12, 12), _statsforecast(histories, 12, 12),
                               rtol=2e-3)


def test_ragged_histories_in_any_order_get_each_its_own_fit(monkeypatch):
    rng = np.random.default_rng(5)
    histories = [100 + np.cumsum(rng.normal(0.3, 2, n)) for n in rng.integers(8, 90, 40)]
    values, lengths = _stacked(histories)
    together = theta_forecasts(values, lengths, 6, 4)
    alone = np.vstack([theta_forecasts(h, np.array([len(h)]), 6, 4) for h in histories])
    np.testing.assert_array_equal(together, alone)
    monkeypatch.setattr(theta_module, "_CHUNK_VALUES", 3 * 90)  # a few histories per pass
    np.testing.assert_array_equal(theta_forecasts(values, lengths, 6, 4), together)
    monkeypatch.setattr(theta_module, "_CHUNK_VALUES", 1 << 21)
    monkeypatch.setattr(theta_module, "_STM_VALUES", 2 * 90)  # smoothing fits of two histories in one pass
    np.testing.assert_array_equal(theta_forecasts(values, lengths, 6, 4), together)
    np.testing.assert_allclose(together, _statsforecast(histories, 6, 4), rtol=0.05)


def test_a_constant_history_forecasts_its_value_and_short_ones_get_none():
    values = np.r_[np.full(40, 7.5), np.arange(5.0)]
    got = classical_forecasts(values, np.array([40, 5]), 4, 12, "theta")
    np.testing.assert_allclose(got[0], 7.5)
    assert 5 < MIN_HISTORY and np.isnan(got[1]).all()
    assert theta_forecasts(np.array([]), np.array([], dtype=np.int64), 3, 12).shape == (0, 3)


def test_ragged_histories_share_one_smoothing_pass(monkeypatch):
    """However many distinct lengths, the smoothing (the costly loop over time steps) runs once per grid
    stage over all histories, right-aligned: not once per length."""
    calls = []
    real = theta_module._objective
    monkeypatch.setattr(theta_module, "_objective", lambda steps, *a: calls.append(steps.shape) or real(steps, *a))
    rng = np.random.default_rng(7)
    lengths = np.arange(20, 60)  # 40 distinct lengths
    values = np.concatenate([50 + np.cumsum(rng.normal(0.1, 1, n)) for n in lengths])
    theta_forecasts(values, lengths, 5, 4)
    assert calls == [(59, 40)] * (len(theta_module._GRIDS) + 1)  # the grid stages, then the chosen weight
