"""Combination weights from backtest errors: shrinkage, robustness to one odd series, serving."""

import numpy as np
import pytest

from nightcast.tasks.forecast.combine import COMBINATION, Weights, combine, fit_weights, method_names, robust_mean


def _panel(n_series: int, windows: int, horizon: int, rng: np.random.Generator, noise: dict[str, float]):
    """Truth and candidates for ``windows`` windows per series; each candidate = truth + noise of its size."""
    n = n_series * windows
    truth = rng.normal(100, 10, (n, horizon))
    codes = np.repeat(np.arange(n_series), windows)
    cands = {name: truth + rng.normal(0, sd, truth.shape) for name, sd in noise.items()}
    return truth, codes, cands


def test_the_better_candidate_gets_more_weight_and_unseen_series_get_the_pooled_weights():
    rng = np.random.default_rng(0)
    truth, codes, cands = _panel(40, 3, 6, rng, {"seasonal_naive": 4.0, "lstm": 1.0, "naive": 8.0})
    w = fit_weights(cands, truth, codes, [f"s{i}" for i in range(40)], horizon=6)
    pooled = dict(zip(w.candidates, w.pooled_weights()))
    assert pooled["lstm"] > pooled["seasonal_naive"] > pooled["naive"]
    np.testing.assert_allclose(w.per_series.sum(axis=1), 1.0)
    rows = w.rows(np.array(["s0", "never_seen"]))
    np.testing.assert_allclose(rows[1], w.pooled_weights())
    back = Weights.from_json(w.to_json())  # what the bundle stores serves the same weights
    np.testing.assert_allclose(back.rows(np.array(["s0", "never_seen"])), rows, atol=1e-6)


def test_a_short_series_is_decided_by_the_panel_a_long_one_by_its_own_evidence():
    rng = np.random.default_rng(1)
    horizon = 4
    # the panel: the network is better; series "odd" prefers seasonal naive, with 1 or with 30 windows
    truth, codes, cands = _panel(30, 2, horizon, rng, {"seasonal_naive": 4.0, "lstm": 1.0})
    for windows, expect_own in ((1, False), (30, True)):
        t = rng.normal(100, 10, (windows, horizon))
        odd = {"seasonal_naive": t + rng.normal(0, 0.5, t.shape), "lstm": t + rng.normal(0, 6.0, t.shape)}
        w = fit_weights({m: np.vstack([cands[m], odd[m]]) for m in cands}, np.vstack([truth, t]),
                        np.concatenate([codes, np.full(windows, 30)]), [f"s{i}" for i in range(31)], horizon)
        own = dict(zip(w.candidates, w.per_series[30]))
        assert bool(own["seasonal_naive"] > own["lstm"]) is expect_own, (windows, own)


def test_one_near_flat_series_cannot_move_the_pooled_choice():
    rng = np.random.default_rng(2)
    horizon, ids = 6, [f"s{i}" for i in range(50)]
    truth, codes, cands = _panel(50, 2, horizon, rng, {"seasonal_naive": 2.0, "lstm": 1.5})
    base = fit_weights(cands, truth, codes, ids, horizon)
    # a near-flat series: seasonal naive is exact, the network is off by a lot (relative error ~ 1e6)
    flat = np.full((2, horizon), 5.0)
    odd = {"seasonal_naive": flat.copy(), "lstm": flat + 3.0}
    with_flat = fit_weights({m: np.vstack([cands[m], odd[m]]) for m in cands}, np.vstack([truth, flat]),
                            np.concatenate([codes, [50, 50]]), ids + ["flat"], horizon)
    b, f = dict(zip(base.candidates, base.pooled_weights())), dict(zip(with_flat.candidates, with_flat.pooled_weights()))
    assert b["lstm"] > b["seasonal_naive"] and f["lstm"] > f["seasonal_naive"]
    assert abs(b["lstm"] - f["lstm"]) < 0.02
    # a plain mean of the log ratios would have been dragged by that one series
    assert robust_mean(np.r_[np.zeros(50), 13.8]) == pytest.approx(0.0)


def test_combine_uses_the_candidates_a_row_has_and_names_the_method():
    f = {"seasonal_naive": np.array([[1.0, 1.0], [2.0, 2.0]]), "lstm": np.array([[3.0, 3.0], [np.nan, np.nan]])}
    w = np.array([[0.5, 0.5], [0.5, 0.5]])
    out = combine(f, w)
    np.testing.assert_allclose(out, [[2.0, 2.0], [2.0, 2.0]])  # row 2: the network has none, naive serves
    np.testing.assert_allclose(combine(f, w, "median"), [[2.0, 2.0], [2.0, 2.0]])
    names = method_names(np.array([[0.5, 0.5], [1.0, 0.0]]), ["seasonal_naive", "lstm"])
    assert names.tolist() == [COMBINATION, "seasonal_naive"]


def test_switch_mode_is_a_hard_choice_per_series():
    rng = np.random.default_rng(3)
    truth, codes, cands = _panel(10, 3, 4, rng, {"seasonal_naive": 4.0, "lstm": 1.0})
    w = fit_weights(cands, truth, codes, [f"s{i}" for i in range(10)], 4, mode="switch")
    assert set(np.unique(w.per_series)) <= {0.0, 1.0} and (w.per_series.sum(axis=1) == 1).all()


def test_trim_drops_a_candidate_far_worse_than_the_best_and_keeps_the_close_ones():
    """With trim 1.5 a candidate whose relative MAE is over 1.5x the best one's gets no weight, in every
    series and in the pooled weights unseen series get; a close second keeps its share. Without trim the
    far-off candidate keeps a small weight that costs when it is far off."""
    rng = np.random.default_rng(1)
    truth, codes, cands = _panel(30, 4, 6, rng, {"seasonal_naive": 1.2, "lstm": 1.0, "autotheta": 4.0})
    ids = [f"s{i}" for i in range(30)]
    trimmed = fit_weights(cands, truth, codes, ids, horizon=6, trim=1.5)
    plain = fit_weights(cands, truth, codes, ids, horizon=6)
    far, close = trimmed.candidates.index("autotheta"), trimmed.candidates.index("seasonal_naive")
    assert np.all(trimmed.per_series[:, far] == 0) and trimmed.pooled_weights()[far] == 0
    assert np.all(plain.per_series[:, far] > 0)
    assert np.all(trimmed.per_series[:, close] > 0.2)
    np.testing.assert_allclose(trimmed.per_series.sum(axis=1), 1.0)
    back = Weights.from_json(trimmed.to_json())
    assert back.trim == 1.5 and back.pooled_weights()[far] == 0


@pytest.mark.parametrize("mode", ["weighted", "mean", "switch"])
def test_series_held_only_for_their_rows_are_served_the_pooled_weights_in_every_mode(mode):
    """A training index holds late-born series (no scaler) for their rows only: the backtest lists them with no
    evidence, and ``without`` takes them out of the table, so that, served, they get the pooled weights as a
    series the backtest never saw does (listed, ``mean`` would give them equal weights and ``switch`` one
    candidate)."""
    rng = np.random.default_rng(4)
    truth, codes, cands = _panel(10, 3, 4, rng, {"seasonal_naive": 4.0, "lstm": 1.0, "naive": 6.0})
    ids = [f"s{i}" for i in range(10)] + ["late"]
    listed = fit_weights(cands, truth, codes, ids, 4, mode=mode)
    w = listed.without(["late"])
    assert w.series_ids == ids[:-1] and len(w.per_series) == len(w.evidence) == 10
    np.testing.assert_array_equal(w.per_series, listed.per_series[:10])
    np.testing.assert_array_equal(w.rows(np.array(["late"]))[0], listed.pooled_weights())
    assert "late" not in w.to_json()["per_series"]
    if mode != "weighted":
        assert not np.allclose(listed.rows(np.array(["late"]))[0], listed.pooled_weights())
