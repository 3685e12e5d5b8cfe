import datetime as dt

import numpy as np
import polars as pl
import pytest

from nightcast.schemas.params import RetrainParams, WindowConfig
from nightcast.tasks.data.features import fit_features, inverse_scale, scale_values, transform_features, with_new_series
from nightcast.tasks.data.prepare import prepare_training
from nightcast.tasks.data.validate import validate_observations
from nightcast.tasks.data.window import WindowDataset, WindowError, _stack, make_windows, split_times


def _clean(n=100, sids=("a", "b")) -> pl.DataFrame:
    stamps = [dt.datetime(2024, 1, 1) + dt.timedelta(hours=i) for i in range(n)]
    return pl.concat([pl.DataFrame({
        "series_id": sid, "timestamp": pl.Series(stamps, dtype=pl.Datetime("us")),
        "target": np.arange(n, dtype=float) * (k + 1), "promo": ["on" if i % 7 == 0 else "off" for i in range(n)],
        "temp": np.linspace(0, 1, n), "observed": True, "is_outlier": False, "in_long_gap": False,
    }) for k, sid in enumerate(sids)])


def test_scaler_and_encoders_are_fitted_on_the_training_span_only():
    clean = _clean()
    train_end = clean["timestamp"][59]
    state = fit_features(clean, train_end, "standard", ["temp"], ["promo"], None, [])
    # change everything after the training span: the fitted state must not move
    later = clean.with_columns(pl.when(pl.col("timestamp") > train_end).then(pl.col("target") * 100 + 7)
                               .otherwise("target").alias("target"),
                               pl.when(pl.col("timestamp") > train_end).then(pl.lit("new-category"))
                               .otherwise("promo").alias("promo"))
    assert fit_features(later, train_end, "standard", ["temp"], ["promo"], None, []).to_json() == state.to_json()
    assert state.target_stats["a"][0] == pytest.approx(29.5)  # mean of 0..59
    assert state.categories == {"promo": ["off", "on"]}
    frame, _ = transform_features(later, state)
    assert frame.filter(pl.col("promo") == "new-category")["cat__promo=on"].sum() == 0  # unknown -> all zeros


@pytest.mark.parametrize("scaler", ["standard", "minmax", "robust"])
def test_inverse_scale_roundtrip(scaler):
    clean = _clean()
    state = fit_features(clean, clean["timestamp"][59], scaler, [], [], [], [])
    frame, _ = transform_features(clean, state)
    back = inverse_scale(frame["y"].to_numpy()[:, None].astype(float), frame["series_id"].to_list(), state)
    np.testing.assert_allclose(back[:, 0], clean["target"].to_numpy(), rtol=1e-5, atol=1e-3)


def test_row_scalers_follow_the_state_they_are_read_from():
    """Row lookups read the state's scalers through one frame built per dict: rows in any order and with
    repeats get their own series' centre and scale, a state with series added reads the new ones (no stale
    frame), an id without a scaler is a KeyError naming it, and the saved state is the plain dict."""
    clean = _clean(sids=("a", "b"))
    state = fit_features(clean, clean["timestamp"][59], "standard", [], [], [], [])
    ids = np.array(["b", "a", "b", "b", "a"])
    values = np.arange(5.0)[:, None]
    want = np.array([[(v - state.target_stats[i][0]) / state.target_stats[i][1]] for v, i in zip(range(5), ids)])
    np.testing.assert_array_equal(scale_values(values, ids, state), want)
    np.testing.assert_array_equal(inverse_scale(want, pl.Series(ids), state), values)
    assert state.has_scaler(["a", "zz", "b"]).tolist() == [True, False, True]
    with pytest.raises(KeyError, match="zz"):
        inverse_scale(values[:2], ["a", "zz"], state)
    wider = with_new_series(state, _clean(sids=("zz",)))
    assert wider.target_stats["zz"][0] == pytest.approx(49.5)  # its own history's mean (0..99)
    assert inverse_scale(np.zeros((1, 1)), ["zz"], wider)[0, 0] == pytest.approx(49.5)
    assert not state.has_scaler(["zz"])[0]  # the state read first keeps its own scalers
    assert set(wider.to_json()) == set(state.to_json()) and "_stats" not in wider.to_json()
    assert wider.to_json()["target_stats"] == wider.target_stats


def test_splits_are_strictly_time_ordered():
    clean = _clean(200)
    state = fit_features(clean, clean["timestamp"][139], "standard", [], [], [], [])
    frame, _ = transform_features(clean, state)
    te, ve = split_times(clean, 0.15, 0.15, horizon=5)
    idx = make_windows(frame, state.past_columns, [], 24, 5, te, ve)
    ts = idx.timestamps
    tr, va, tt = (idx.splits[k] for k in ("train", "val", "test"))
    assert len(tr) and len(va) and len(tt)
    assert ts[tr + 24 + 5 - 1].max() <= np.datetime64(te)  # train targets end by train_end
    assert ts[va + 24].min() > np.datetime64(te) and ts[va + 28].max() <= np.datetime64(ve)
    assert ts[tt + 24].min() > np.datetime64(ve)


def test_windows_are_indices_memory_does_not_grow_with_lookback():
    clean = _clean(400)
    state = fit_features(clean, clean["timestamp"][250], "standard", [], [], [], [])
    frame, _ = transform_features(clean, state)
    te, ve = split_times(clean, 0.15, 0.15, horizon=6)
    sizes = []
    for lookback in (8, 64, 256):
        idx = make_windows(frame, state.past_columns, [], lookback, 6, te, ve)
        sizes.append(idx.past.nbytes + idx.future.nbytes + idx.target.nbytes)
        ds = WindowDataset(idx, idx.splits["train"])
        past, _, y = ds.__getitems__([0, 1])
        assert past.shape == (2, lookback, 1) and y.shape == (2, 6)
        s = idx.splits["train"][1]
        np.testing.assert_allclose(past[1, :, 0].numpy(), idx.past[s:s + lookback, 0])
    assert sizes[0] == sizes[1] == sizes[2]


def test_long_gap_windows_excluded_and_short_series_reported():
    clean = _clean(100).with_columns(
        ((pl.col("series_id") == "a") & pl.col("timestamp").is_between(
            dt.datetime(2024, 1, 2), dt.datetime(2024, 1, 2, 5))).alias("in_long_gap"))
    short = _clean(10, sids=("tiny",))
    both = pl.concat([clean, short])
    state = fit_features(both, both["timestamp"].max(), "standard", [], [], [], [])
    frame, _ = transform_features(both, state)
    idx = make_windows(frame, state.past_columns, [], 12, 4)
    assert idx.short_series == ["tiny"]
    gap = np.flatnonzero(frame.sort("series_id", "timestamp")["in_long_gap"].to_numpy())
    for s in idx.splits["all"]:
        assert not ((gap >= s) & (gap < s + 16)).any()


@pytest.mark.parametrize("min_input", [None, 3])
def test_long_gap_rule_equals_a_brute_force_check_on_random_panels(min_input):
    """Windows are dropped exactly when a real step (from the lookback's start, or the series' start when the
    window is padded, to the horizon's end) is in a long gap: checked window by window against the flags, on
    panels where some series have no gap, some several, some a gap at their first or last row."""
    from nightcast.tasks.data.window import _index

    rng = np.random.default_rng(5)
    for trial in range(20):
        parts = []
        for k in range(int(rng.integers(1, 6))):
            n = int(rng.integers(5, 40))
            gap = np.zeros(n, bool)
            if rng.random() < 0.6:
                for _ in range(int(rng.integers(1, 3))):
                    a = int(rng.integers(0, n))
                    gap[a:a + int(rng.integers(1, 4))] = True
            parts.append(pl.DataFrame({"series_id": f"s{k}", "timestamp": [dt.datetime(2024, 1, 1) + dt.timedelta(hours=i)
                                                                            for i in range(n)],
                                       "target": rng.normal(size=n), "observed": True, "in_long_gap": gap}))
        frame = pl.concat(parts)
        lookback, horizon = int(rng.integers(2, 8)), int(rng.integers(1, 4))
        got = _index(frame, lookback, horizon, None, None, 1, min_input)["splits"]["all"]
        flags, want = frame["in_long_gap"].to_numpy(), []
        first = 0
        for part in parts:  # the reference: every row of every series, one by one
            need = lookback if min_input is None else min(min_input, lookback)
            for origin in range(first + need - 1, first + part.height - horizon):
                lo = max(origin - lookback + 1, first)
                if not flags[lo:origin + horizon + 1].any():
                    want.append(origin - lookback + 1)
            first += part.height
        assert got.tolist() == want, (trial, lookback, horizon)


@pytest.mark.parametrize("stride", [1, 3])
def test_splits_equal_a_window_by_window_reference_on_random_panels(stride):
    """Each window's split from its target times (train: last target by ``train_end``, every ``stride``-th
    origin of a series from its first; validation: targets in (train_end, val_end]; test: after val_end),
    checked window by window on ragged panels with long gaps, at random cuts and at a refit's cuts (both at
    the newest step: every window a training window)."""
    from nightcast.tasks.data.window import _index

    rng = np.random.default_rng(11)
    for trial in range(30):
        parts = []
        for k in range(int(rng.integers(1, 6))):
            n = int(rng.integers(5, 40))
            start = dt.datetime(2024, 1, 1) + dt.timedelta(hours=int(rng.integers(0, 10)))
            parts.append(pl.DataFrame({"series_id": f"s{k}", "timestamp": [start + dt.timedelta(hours=i) for i in range(n)],
                                       "target": rng.normal(size=n), "observed": True,
                                       "in_long_gap": rng.random(n) < 0.05}))
        frame = pl.concat(parts)
        lookback, horizon = int(rng.integers(2, 8)), int(rng.integers(1, 4))
        stamps = frame["timestamp"].unique().sort()
        refit = trial % 3 == 0
        te = stamps[-1] if refit else stamps[int(rng.integers(0, len(stamps)))]
        ve = te if refit else stamps[int(rng.integers(stamps.to_list().index(te), len(stamps)))]
        got = _index(frame, lookback, horizon, te, ve, stride, None)["splits"]
        every = _index(frame, lookback, horizon, None, None, 1, None)["splits"]["all"]  # valid windows, all splits
        ts = frame["timestamp"].to_list()
        firsts = np.r_[0, np.cumsum([p.height for p in parts])]
        want = {"train": [], "val": [], "test": []}
        for start in every.tolist():  # the reference: window by window
            origin = start + lookback - 1
            first_row = firsts[np.searchsorted(firsts, origin, side="right") - 1]
            first_t, last_t = ts[origin + 1], ts[origin + horizon]
            if last_t <= te and (origin - first_row - (lookback - 1)) % stride == 0:
                want["train"].append(start)
            if te < first_t and last_t <= ve:
                want["val"].append(start)
            if first_t > ve:
                want["test"].append(start)
        assert {k: v.tolist() for k, v in got.items()} == want, (trial, lookback, horizon, stride)


def test_prepare_training_on_the_sample(sample_raw):
    valid = validate_observations(sample_raw)
    prepared = prepare_training(valid, RetrainParams(data="-", window=WindowConfig(lookback=24, horizon=6)))
    assert prepared.calendar.frequency == "1h" and prepared.season_length == 24
    assert prepared.report.outliers > 0 and prepared.report.short_gaps_filled > 0
    assert prepared.state.past_columns[0] == "y"


def test_the_refit_index_reads_the_clean_frame_in_place(sample_raw):
    """The refit's windows cover the same clean rows as the frame it was cut from: its timestamps, target and
    truth are the clean frame's own buffers (no row-sized copies beside the training index's), the truth is
    NaN exactly where nothing was observed, and every window is a training window."""
    from nightcast.tasks.data.prepare import prepare_refit

    valid = validate_observations(sample_raw)
    params = RetrainParams(data="-", window=WindowConfig(lookback=24, horizon=6))
    prepared = prepare_training(valid, params)
    refit = prepare_refit(prepared, valid, params)
    clean, index = refit.clean, refit.index
    assert clean["raw"].null_count() == 0 and clean["raw"].n_chunks() == 1
    assert np.array_equal(np.isnan(clean["raw"].to_numpy()), ~clean["observed"].to_numpy())  # filled steps: NaN
    for array, column in ((index.truth, "raw"), (index.target, "target"), (index.timestamps, "timestamp")):
        assert np.shares_memory(array, clean[column].to_numpy()), column
    assert len(index.splits["val"]) == len(index.splits["test"]) == 0 and len(index.splits["train"]) > 0


def test_series_too_short_for_any_span_is_a_clear_error():
    with pytest.raises(WindowError, match="too few"):
        split_times(_clean(10), 0.15, 0.15, horizon=6)


def test_split_points_on_the_clean_frame_equal_those_on_the_placed_grid(sample_raw):
    # prepare_training splits on the cleaned frame (one pass) unless IQR needs the span first
    from nightcast.schemas.params import CleanConfig
    from nightcast.tasks.data.clean import clean_observations, decide_calendar, regularize

    valid = validate_observations(sample_raw).valid
    calendar = decide_calendar(valid, CleanConfig())
    placed, _ = regularize(valid, calendar)
    clean, _, _ = clean_observations(valid, CleanConfig(), calendar)
    assert split_times(clean, 0.15, 0.15, 6) == split_times(placed, 0.15, 0.15, 6)


def test_trailing_ends_cut_the_split_and_the_folds_by_one_rule():
    from nightcast.tasks.data.window import trailing_ends

    assert trailing_ends(100, [15, 15]) == [69, 84, 99]  # train ends at 69, validation at 84, test at 99
    ends = trailing_ends(100, [8] * 4)  # three folds of 8 steps
    assert ends == [67, 75, 83, 91, 99]
    assert trailing_ends(10, []) == [9]


def test_series_without_a_scaler_are_dropped_without_copying_the_catalogue(monkeypatch):
    """Late-starting series (no observation in the training span) are dropped from the features frame; the
    rows kept are those of a filter, in order, but as slices of the clean frame (no copy of every column)."""
    import nightcast.tasks.data.features as features

    clean = _clean(40, sids=("a", "b", "c", "d", "e"))
    train_end = clean["timestamp"][29]
    state = fit_features(clean.filter(pl.col("series_id").is_in(["a", "c", "e"])), train_end, "standard", [], [],
                         None, [])
    frame, unknown = transform_features(clean, state)
    assert unknown == ["b", "d"]
    kept = clean.filter(~pl.col("series_id").is_in(unknown))
    assert frame.select(clean.columns).equals(kept)
    assert frame["target"].n_chunks() == 3  # three runs of kept rows, each a slice of the clean frame
    # ids not grouped by series: more runs than the cap, so a filter (the same rows)
    monkeypatch.setattr(features, "_MAX_SLICES", 2)
    shuffled = clean.sample(fraction=1.0, shuffle=True, seed=1)
    frame, _ = transform_features(shuffled, state)
    assert frame.select(clean.columns).equals(shuffled.filter(~pl.col("series_id").is_in(unknown)))
    assert frame["target"].n_chunks() == 1


def test_series_without_a_scaler_keep_their_rows_in_the_training_index_but_get_no_window():
    """The training index keeps the rows of series without a scaler (late-born: no observation in the training
    span) so that it reads the clean frame's columns in place; they get no window, and every window, its
    inputs (padded ones too, whose padding reads the rows before their series) and its truth equal those of an
    index built without those rows."""
    from nightcast.tasks.data.features import FeatureEncoder

    clean = _clean(40, sids=("a", "b", "c", "d", "e"))
    clean = clean.with_columns(pl.when(pl.col("series_id") == "b").then(np.inf).otherwise(pl.col("temp"))
                               .alias("temp")).rechunk()  # a late-born series' covariate is not even finite
    train_end, val_end = clean["timestamp"][29], clean["timestamp"][34]
    state = fit_features(clean.filter(pl.col("series_id").is_in(["a", "c", "e"])), train_end, "standard", ["temp"],
                         ["promo"], None, [])
    args = (state.past_columns, state.future_columns, 12, 3, train_end, val_end)
    kept = make_windows(FeatureEncoder(clean, state, drop_unknown=False), *args, min_input=4)
    dropped = make_windows(FeatureEncoder(clean, state), *args, min_input=4)
    assert kept.series_ids == ["a", "b", "c", "d", "e"] and dropped.series_ids == ["a", "c", "e"]
    assert kept.unscaled == ["b", "d"] and dropped.unscaled is None
    assert np.shares_memory(kept.target, clean["target"].to_numpy())  # no copy of the catalogue's columns
    for split, starts in kept.splits.items():
        assert set(kept.series_of(starts)) <= {"a", "c", "e"}, split
        other = dropped.splits[split]
        assert kept.series_of(starts).tolist() == dropped.series_of(other).tolist(), split
        assert np.array_equal(kept.timestamps[kept.origin(starts)], dropped.timestamps[dropped.origin(other)])
        assert np.array_equal(kept.truth[kept.target_index(starts)], dropped.truth[dropped.target_index(other)])
        mine, theirs = WindowDataset(kept, starts), WindowDataset(dropped, other)
        assert len(mine) > 0
        for a, b in zip(mine.__getitems__(list(range(len(mine)))), theirs.__getitems__(list(range(len(theirs))))):
            assert not a.isnan().any()  # the padding before "c" reads "b"'s rows (inf covariate): 0, never NaN
            assert np.array_equal(a.numpy(), b.numpy()), split
    assert (kept.past[kept.offsets[1]:kept.offsets[2], 0] == 0).all()  # "b" has no scaler: its target reads 0


def test_scaling_is_per_series_whatever_the_row_order():
    """Each row gets its own series' centre and scale when the rows are grouped by series, and when they are
    interleaved (rows of a, b, a, b, ...): the scalers are joined per run of equal ids."""
    clean = _clean(60, sids=("a", "b", "c"))
    state = fit_features(clean, clean["timestamp"][39], "standard", [], [], [], [])
    grouped, _ = transform_features(clean, state)
    mixed, _ = transform_features(clean.sort("timestamp", "series_id"), state)
    by_key = ["series_id", "timestamp"]
    assert mixed.sort(by_key).select(*by_key, "y").equals(grouped.sort(by_key).select(*by_key, "y"))
    c, s = (np.array([state.target_stats[i][k] for i in grouped["series_id"]]) for k in (0, 1))
    np.testing.assert_allclose(grouped["y"].to_numpy(), (grouped["target"].to_numpy() - c) / s, rtol=1e-6)
    assert set(np.round(s, 6)) == {round(v[1], 6) for v in state.target_stats.values()} and len(set(s)) == 3


@pytest.mark.parametrize("block_values", [7, 1000, 1 << 20])  # blocks cut anywhere, and one block
def test_stacked_features_are_the_columns_in_order_whatever_the_block(block_values):
    # Float32 columns without nulls are read in place and transposed a block at a time; any other column
    # (float64, nulls) is cast alone. The array must be the columns side by side, C order, in the asked order.
    rng = np.random.default_rng(0)
    n = 10_007
    frame = pl.DataFrame({"a": rng.normal(size=n).astype(np.float32), "b": rng.normal(size=n),
                          "c": rng.normal(size=n).astype(np.float32),
                          "d": pl.Series(np.where(rng.random(n) < .1, np.nan, 1.0), dtype=pl.Float32).fill_nan(None)})
    frame = frame.with_columns(  # a float32 column of two chunks (as after dropping unknown series): cast alone
        e=pl.concat([frame["a"].slice(0, 5_000), frame["a"].slice(5_000)], rechunk=False))
    assert frame["e"].n_chunks() == 2
    columns = ["c", "a", "b", "d", "e"]
    expected = np.column_stack([frame[c].cast(pl.Float32).to_numpy() for c in columns])
    for cols, want in ((columns, expected), (["a", "c"], expected[:, [1, 0]])):
        got = _stack(frame, cols, block_values=block_values)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        assert np.array_equal(got, want, equal_nan=True)
    assert _stack(frame, [], block_values=block_values).shape == (n, 0)


def test_the_window_index_reads_the_encoders_runs_of_the_ids(monkeypatch):
    """An index built over a ``FeatureEncoder`` takes the encoder's run lengths of the ids (a pass over every
    id of a catalogue each, ~0.12 s at 19 M rows) and gives the index an index without them gives."""
    from nightcast.tasks.data.features import FeatureEncoder

    clean = _clean(40, sids=("a", "b", "c"))
    train_end, val_end = clean["timestamp"][29], clean["timestamp"][34]
    state = fit_features(clean, train_end, "standard", ["temp"], ["promo"], None, [])
    args = (state.past_columns, state.future_columns, 12, 3, train_end, val_end)
    encoder = FeatureEncoder(clean, state, drop_unknown=False)
    passes, real = [], pl.Series.rle
    monkeypatch.setattr(pl.Series, "rle", lambda self: passes.append(self.name) or real(self))
    index = make_windows(encoder, *args, min_input=4)
    assert "series_id" not in passes
    monkeypatch.undo()
    from nightcast.tasks.data.window import _index

    plain = _index(clean, 12, 3, train_end, val_end, 1, 4)  # its own pass over the ids
    assert index.series_ids == plain["series_ids"] and np.array_equal(index.offsets, plain["offsets"])
    assert all(np.array_equal(index.splits[k], plain["splits"][k]) for k in plain["splits"]) and len(index.splits["train"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_skipped_series_lose_exactly_their_own_windows(seed):
    """The series an index skips (no training data) lose their windows and no other series does: on ragged
    series of different lengths, some with a long gap, every split equals the unskipped index's without the
    skipped series' windows (each series' origins are one run of the sorted origins, cut out by its count)."""
    from nightcast.tasks.data.window import _index

    rng = np.random.default_rng(seed)
    parts = []
    for k in range(12):
        n = int(rng.integers(5, 60))
        stamps = [dt.datetime(2024, 1, 1) + dt.timedelta(hours=int(rng.integers(0, 20)) + i) for i in range(n)]
        gap = np.zeros(n, bool)
        if rng.random() < 0.3:
            gap[n // 3: n // 3 + 3] = True
        parts.append(pl.DataFrame({"series_id": f"s{k:02d}", "timestamp": pl.Series(stamps, dtype=pl.Datetime("us")),
                                   "target": rng.normal(size=n), "observed": True, "in_long_gap": gap}))
    clean = pl.concat(parts)
    cut = sorted(clean["timestamp"].unique())
    train_end, val_end = cut[len(cut) // 2], cut[3 * len(cut) // 4]
    skip = sorted(rng.choice([f"s{k:02d}" for k in range(12)], 4, replace=False).tolist())
    whole = _index(clean, 6, 3, train_end, val_end, 1, 4)
    skipped = _index(clean, 6, 3, train_end, val_end, 1, 4, skip)
    codes = whole["series"]
    gone = np.isin(np.array(whole["series_ids"]), skip)
    for split, starts in whole["splits"].items():
        origins = starts + 5
        assert np.array_equal(skipped["splits"][split], starts[~gone[codes[origins]]]), split
    assert any(len(s) for s in skipped["splits"].values())


@pytest.mark.parametrize("seed", range(4))
def test_window_splits_equal_the_per_window_definition(seed):
    """The index builds each split as one range of origins per series; every split equals the definition
    checked window by window: an origin with ``min_input`` steps of its series up to it and a full horizon
    after, no real step in a long gap, not in a skipped series; train: its last target at or before
    train_end (every stride-th origin of a series, from its first); validation: its first target after
    train_end and its last at or before val_end; test: its first target after val_end. Ragged series that
    start and end at different times, some too short, with long gaps, padded or not."""
    from nightcast.tasks.data.window import _index

    rng = np.random.default_rng(seed)
    for trial in range(60):
        parts = []
        for k in range(int(rng.integers(1, 7))):
            n, h0 = int(rng.integers(1, 40)), int(rng.integers(0, 15))
            gap = np.zeros(n, bool)
            if rng.random() < 0.3:
                g0 = int(rng.integers(0, n))
                gap[g0: g0 + int(rng.integers(1, 5))] = True
            parts.append(pl.DataFrame({
                "series_id": f"s{k}", "target": rng.normal(size=n), "observed": True, "in_long_gap": gap,
                "timestamp": pl.Series([dt.datetime(2024, 1, 1) + dt.timedelta(hours=h0 + i) for i in range(n)],
                                       dtype=pl.Datetime("us"))}))
        clean = pl.concat(parts)
        lookback, horizon = int(rng.integers(1, 8)), int(rng.integers(1, 5))
        min_input = None if rng.random() < 0.4 else int(rng.integers(1, lookback + 1))
        stride = int(rng.choice([1, 2, 3]))
        ids = sorted(set(clean["series_id"]))
        skip = sorted(set(rng.choice(ids, int(rng.integers(1, 3))).tolist())) if rng.random() < 0.4 else None
        stamps = sorted(clean["timestamp"].unique())
        i = int(rng.integers(0, len(stamps)))
        train_end, val_end = (None, None) if rng.random() < 0.2 else (stamps[i], stamps[int(rng.integers(i, len(stamps)))])
        got = _index(clean, lookback, horizon, train_end, val_end, stride, min_input, skip)["splits"]

        need = lookback if min_input is None else min_input
        want: dict[str, list[int]] = {"all": [], "train": [], "val": [], "test": []}
        t, gap = clean["timestamp"].to_list(), clean["in_long_gap"].to_numpy()
        row = 0
        for part in parts:
            n, name = part.height, part["series_id"][0]
            for o in range(row + need - 1, row + n - horizon):  # each origin of this series
                if name in (skip or []) or gap[max(o - lookback + 1, row): o + horizon + 1].any():
                    continue
                if train_end is None:
                    want["all"].append(o)
                elif t[o + horizon] <= train_end:
                    if (o - (row + need - 1)) % stride == 0:
                        want["train"].append(o)
                elif t[o + 1] > train_end and t[o + horizon] <= val_end:
                    want["val"].append(o)
                if train_end is not None and t[o + 1] > val_end:
                    want["test"].append(o)
            row += n
        assert set(got) == ({"all"} if train_end is None else {"train", "val", "test"}), trial
        for split, starts in got.items():
            assert starts.tolist() == [o - lookback + 1 for o in want[split]], (trial, split)


def test_a_training_cut_without_a_validation_cut_gives_training_windows_only():
    """``make_windows`` with ``train_end`` alone: the training windows, and no validation or test window (none
    of the training windows leaks into the test split)."""
    frame = pl.DataFrame({"series_id": "a", "timestamp": pl.datetime_range(dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 10),
                                                                          "1d", eager=True).cast(pl.Datetime("us")),
                          "target": np.arange(10.0)})
    index = make_windows(frame, ["target"], [], 3, 2, train_end=dt.datetime(2024, 1, 6))
    assert index.splits["train"].tolist() == [0, 1] and not len(index.splits["val"]) and not len(index.splits["test"])


def test_preparing_reads_the_validated_ids_once_for_the_calendar_and_placing(sample_raw, monkeypatch):
    """The validated frame's ids are read once (a run-length pass over a catalogue's text ids costs ~0.15 s at
    19 M rows) for both the frequency's inference and placing on the grid, one pass fewer than when each reads
    them itself, with the same clean frame, report and windows."""
    import nightcast.tasks.data.prepare as prepare

    valid = validate_observations(sample_raw)
    params = RetrainParams(data="-", window=WindowConfig(lookback=24, horizon=6))
    passes, real = [], pl.Series.rle
    monkeypatch.setattr(pl.Series, "rle", lambda self: passes.append(self.name) or real(self))
    prepared = prepare_training(valid, params)
    handed = passes.count("series_id")
    passes.clear()
    monkeypatch.setattr(prepare, "id_runs", lambda ids: None)  # nothing handed over: each step reads the ids
    alone = prepare_training(valid, params)
    assert handed == passes.count("series_id") - 1, (handed, passes)
    assert prepared.clean.equals(alone.clean) and prepared.report.to_json() == alone.report.to_json()
    assert all(np.array_equal(prepared.index.splits[k], alone.index.splits[k]) for k in alone.index.splits)
