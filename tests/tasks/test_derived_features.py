"""Calendar, seasonal-lag and PCA features: values, training-span fitting, and the score path."""

import datetime as dt
import json

import numpy as np
import polars as pl
import pytest

from nightcast.schemas.params import FeatureConfig, TuneParams
from nightcast.tasks.data.features import FeatureState, _utc_steps, fit_features, transform_features
from nightcast.tasks.forecast.tune import apply_overrides
from tests.conftest import fast_params


def _clean(n=200) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    stamps = pl.Series([dt.datetime(2024, 1, 1) + dt.timedelta(hours=i) for i in range(n)], dtype=pl.Datetime("us"))
    base = rng.normal(size=n)
    return pl.DataFrame({
        "series_id": "a", "timestamp": stamps, "target": np.arange(n, dtype=float),
        "x1": base, "x2": base * 2 + rng.normal(0, 0.01, n), "x3": rng.normal(size=n),
        "observed": True, "is_outlier": False, "in_long_gap": False})


def test_calendar_features_are_cyclical_and_known_in_the_future():
    clean = _clean()
    state = fit_features(clean, clean["timestamp"][99], "standard", [], [], [], [], calendar=["hour", "dow"])
    assert state.future_columns == ["cal__hour_sin", "cal__hour_cos", "cal__dow_sin", "cal__dow_cos"]
    assert set(state.future_columns) <= set(state.past_columns)
    frame, _ = transform_features(clean, state)
    six = frame.filter(pl.col("timestamp").dt.hour() == 6).row(0, named=True)
    assert six["cal__hour_sin"] == pytest.approx(1.0) and six["cal__hour_cos"] == pytest.approx(0.0, abs=1e-6)
    # a future timestamp with no observation still gets its calendar features
    future = pl.DataFrame({"series_id": ["a"], "timestamp": pl.Series([dt.datetime(2030, 1, 7, 18)],
                                                                     dtype=pl.Datetime("us")), "target": [None]},
                          schema_overrides={"target": pl.Float64})
    row = transform_features(future, state)[0].row(0, named=True)
    assert row["cal__hour_sin"] == pytest.approx(-1.0)  # 18:00
    assert row["cal__dow_sin"] == pytest.approx(0.0, abs=1e-6)  # a Monday


@pytest.mark.parametrize("unit", ["us", "ns", "ms"])
def test_utc_hour_and_weekday_by_arithmetic_equal_polars_calendar(unit):
    # On naive UTC stamps the hour and weekday come from integer arithmetic on the stamps (no date built
    # per row): the same encoded values as polars' own accessors, before 1970 and after, in any time unit.
    rng = np.random.default_rng(1)
    stamps = pl.Series(rng.integers(-4 * 10**15, 5 * 10**15, size=5_000)).cast(pl.Datetime("us")).cast(pl.Datetime(unit))
    clean = pl.DataFrame({"series_id": "a", "timestamp": stamps.sort(), "target": 1.0, "observed": True})
    state = fit_features(clean, clean["timestamp"][-1], "standard", [], [], [], [], calendar=["hour", "dow"])
    frame, _ = transform_features(clean, state)
    hour = clean["timestamp"].dt.hour().cast(pl.Float64) * (2 * np.pi / 24)
    dow = (clean["timestamp"].dt.weekday() - 1).cast(pl.Float64) * (2 * np.pi / 7)
    for column, angle, fn in (("cal__hour_sin", hour, np.sin), ("cal__hour_cos", hour, np.cos),
                              ("cal__dow_sin", dow, np.sin), ("cal__dow_cos", dow, np.cos)):
        assert np.array_equal(frame[column].to_numpy(), fn(angle.to_numpy()).astype(np.float32)), column
    for chunk in (7, 4096):  # computed a chunk of rows at a time: chunks cut anywhere give the same values
        assert (_utc_steps(stamps, 3_600_000_000, 24, chunk=chunk) == stamps.dt.hour()).all()
        assert (_utc_steps(stamps, 86_400_000_000, 7, 3, chunk=chunk) == stamps.dt.weekday() - 1).all()


def test_calendar_features_follow_the_local_clock_across_dst():
    """Europe/Berlin: 06:00 local is 05:00 UTC in winter and 04:00 UTC in summer (DST from 2024-03-31); the
    hour feature follows the local clock, the timestamps stay UTC. The zone is kept with the fitted state."""
    clean = _clean(24 * 100)  # 2024-01-01 .. 2024-04-09, hourly UTC
    state = fit_features(clean, clean["timestamp"][99], "standard", [], [], [], [], calendar=["hour", "dow"],
                         timezone="Europe/Berlin")
    frame, _ = transform_features(clean, state)

    def hour_sin(stamp: dt.datetime) -> float:
        return frame.filter(pl.col("timestamp") == stamp)["cal__hour_sin"].item()

    assert hour_sin(dt.datetime(2024, 1, 10, 5)) == pytest.approx(1.0)  # 06:00 CET
    assert hour_sin(dt.datetime(2024, 4, 5, 4)) == pytest.approx(1.0)  # 06:00 CEST
    assert hour_sin(dt.datetime(2024, 4, 5, 5)) != pytest.approx(1.0)
    assert frame["timestamp"].dtype == pl.Datetime("us")  # naive UTC, unchanged
    again = FeatureState.from_json(json.loads(json.dumps(state.to_json())))
    assert again.timezone == "Europe/Berlin"
    assert transform_features(clean, again)[0].equals(frame)
    # bundles fitted before the setting read their calendar in UTC
    old = {k: v for k, v in state.to_json().items() if k != "timezone"}
    assert FeatureState.from_json(old).timezone == "UTC"
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        FeatureConfig(calendar=["hour"], timezone="Mars/Olympus")


def test_seasonal_lags_look_back_exactly_n_steps_per_series():
    clean = pl.concat([_clean(50), _clean(50).with_columns(pl.lit("b").alias("series_id"),
                                                           (pl.col("target") + 1000).alias("target"))])
    state = fit_features(clean, clean["timestamp"][30], "standard", [], [], [], [], lags=[24, 3])
    assert state.lags == [3, 24] and state.past_columns[-2:] == ["lag__3", "lag__24"]
    frame, _ = transform_features(clean, state)
    for sid in ("a", "b"):
        part = frame.filter(pl.col("series_id") == sid).sort("timestamp")
        y = part["y"].to_numpy()
        np.testing.assert_allclose(part["lag__24"].to_numpy()[24:], y[:-24], rtol=1e-6)
        assert (part["lag__3"].to_numpy()[:3] == 0).all()  # no history yet: 0 (the scaled mean)


def test_pca_is_fitted_on_the_training_span_and_compresses():
    clean = _clean()
    train_end = clean["timestamp"][99]
    state = fit_features(clean, train_end, "standard", ["x1", "x2", "x3"], [], None, [], pca_components=2)
    assert [c for c in state.past_columns if c.startswith(("num__", "pca__"))] == ["pca__0", "pca__1"]
    assert state.pca["explained_variance_ratio"][0] > 0.6  # x1 and x2 move together
    later = clean.with_columns(pl.when(pl.col("timestamp") > train_end).then(pl.col("x3") * 50)
                               .otherwise("x3").alias("x3"))
    assert fit_features(later, train_end, "standard", ["x1", "x2", "x3"], [], None, [],
                        pca_components=2).pca == state.pca  # nothing after the training span moves it
    frame, _ = transform_features(clean, state)
    assert frame.select("pca__0", "pca__1").null_count().sum_horizontal().item() == 0
    again = FeatureState.from_json(json.loads(json.dumps(state.to_json())))  # survives the bundle's JSON
    np.testing.assert_allclose(transform_features(clean, again)[0]["pca__0"], frame["pca__0"])


def test_features_are_reachable_from_config_and_the_search_space():
    with pytest.raises(ValueError, match="seasonal_lags must be >= 1"):
        FeatureConfig(seasonal_lags=[0])
    params = TuneParams(space={"features.calendar": {"choices": [[], ["hour", "dow"]]},
                               "features.seasonal_lags": {"choices": [[], [24]]},
                               "features.pca_components": {"choices": [None, 2]}})
    run = apply_overrides(fast_params("-"), {"features.calendar": ["hour"], "features.seasonal_lags": [24]})
    assert run.features.calendar == ["hour"] and run.features.seasonal_lags == [24]
    assert params.space["features.calendar"].grid_values() == [[], ["hour", "dow"]]


def test_sub_daily_data_sees_its_weekly_cycle_by_default(sample_raw):
    """No calendar given: hourly data gets hour and day-of-week features (the weekly cycle a 24-step season
    and a two-day lookback cannot show), daily and monthly data none; an explicit [] turns them off."""
    from nightcast.schemas.params import RetrainParams, WindowConfig
    from nightcast.tasks.data.clean import Calendar, calendar_parts_for
    from nightcast.tasks.data.prepare import prepare_training
    from nightcast.tasks.data.validate import validate_observations

    assert calendar_parts_for(Calendar("1h")) == calendar_parts_for(Calendar("15m")) == ["hour", "dow"]
    assert calendar_parts_for(Calendar("1d")) == calendar_parts_for(Calendar("1mo")) == []
    valid = validate_observations(sample_raw)
    auto = prepare_training(valid, RetrainParams(window=WindowConfig(lookback=24, horizon=6)))
    assert auto.state.calendar == ["hour", "dow"] and len(auto.state.future_columns) == 4
    off = prepare_training(valid, RetrainParams(window=WindowConfig(lookback=24, horizon=6),
                                                features=FeatureConfig(calendar=[])))
    assert off.state.calendar == [] and off.state.future_columns == []


def test_a_covariate_named_like_a_cleaning_column_is_fitted_without_error():
    # "observed" is also the cleaning flag's name: fitting selects each column once.
    clean = _clean()
    state = fit_features(clean, clean["timestamp"][99], "standard", [], ["observed"], ["observed"], [])
    assert state.categories == {"observed": [True]}


def test_a_null_timestamp_gets_null_calendar_features_as_polars_gives():
    clean = _clean(10)
    state = fit_features(clean, clean["timestamp"][9], "standard", [], [], [], [], calendar=["hour", "dow"])
    rows = clean.with_columns(pl.when(pl.int_range(pl.len()) == 9).then(None).otherwise(pl.col("timestamp"))
                              .alias("timestamp"))
    frame, _ = transform_features(rows, state)
    assert frame["cal__hour_sin"].null_count() == 1 and frame["cal__hour_sin"][9] is None
    assert frame["cal__dow_cos"].slice(0, 9).equals(transform_features(clean, state)[0]["cal__dow_cos"].slice(0, 9))


def _rich(series=("a", "b", "c"), n=60) -> pl.DataFrame:
    """Three series (one unknown to the scalers below) with numeric, categorical and known-future inputs."""
    rng = np.random.default_rng(3)
    parts = []
    for k, sid in enumerate(series):
        stamps = pl.Series([dt.datetime(2024, 3, 30) + dt.timedelta(hours=i + k) for i in range(n)],
                           dtype=pl.Datetime("us"))
        base = rng.normal(size=n)
        parts.append(pl.DataFrame({
            "series_id": sid, "timestamp": stamps, "target": rng.normal(10 * (k + 1), 1 + k, n),
            "x1": base, "x2": base * 2 + rng.normal(0, 0.01, n), "x3": rng.normal(size=n),
            "promo": rng.choice(["on", "off", None], n), "price": rng.normal(size=n),
            "observed": True, "is_outlier": False, "in_long_gap": False}))
    return pl.concat(parts)


@pytest.mark.parametrize("future", [[], ["promo", "price"]])
def test_windows_encoded_a_block_at_a_time_equal_the_transformed_frame(monkeypatch, future):
    """``make_windows`` over a ``FeatureEncoder`` writes the inputs straight into its arrays, a block of rows
    at a time (blocks of 7 rows here, so blocks and lags cross series): the same arrays as stacking the
    columns ``transform_features`` adds, for scaled targets, numeric, categorical, PCA, calendar parts read
    in a local zone across a DST change, and seasonal lags; series without a scaler left out of both."""
    import nightcast.tasks.data.window as window
    from nightcast.tasks.data.features import FeatureEncoder
    from nightcast.tasks.data.window import make_windows

    clean = _rich()
    known = clean.filter(pl.col("series_id") != "b")
    state = fit_features(known, known["timestamp"][40], "standard", ["x1", "x2", "x3", "price"], ["promo"],
                         None if not future else ["x1", "x2", "x3"], future, calendar=["hour", "dow"],
                         lags=[2, 5], pca_components=2, timezone="Europe/Berlin")
    frame, unknown = transform_features(clean, state)
    want = make_windows(frame, state.past_columns, state.future_columns, 8, 3)
    monkeypatch.setattr(window, "ENCODE_ROWS", 7)
    monkeypatch.setattr(window, "LAG_ROWS", 5)
    encoder = FeatureEncoder(clean, state)
    calls = []
    block = encoder.block
    monkeypatch.setattr(encoder, "block", lambda lo, hi, *only: calls.append(lo) or block(lo, hi, *only))
    got = make_windows(encoder, state.past_columns, state.future_columns, 8, 3, compact=False)
    assert calls == list(range(0, encoder.height, 7))  # each block encoded once, for past and future alike
    assert unknown == encoder.unknown == ["b"]
    assert got.past.shape == want.past.shape and got.series_ids == want.series_ids == ["a", "c"]
    assert np.array_equal(got.past, want.past) and np.array_equal(got.future, want.future)
    assert np.array_equal(got.splits["all"], want.splits["all"])
    lag = state.past_columns.index("lag__5")
    assert (got.past[got.offsets[1]:got.offsets[1] + 5, lag] == 0).all()  # the second series' first rows
    shared = np.shares_memory(got.future, got.past)
    assert shared == (not future)  # calendar parts only: the past array's last columns, not a copy


def _with_static(n: int = 50) -> pl.DataFrame:
    """Four series: ``region`` and ``size`` fixed per series (one series without a region), ``promo`` changing
    within series, ``tier`` fixed per series but a known-future input."""
    rng = np.random.default_rng(5)
    parts = []
    for k, (sid, region) in enumerate([("a", "north"), ("b", "south"), ("c", None), ("d", "north")]):
        stamps = pl.Series([dt.datetime(2024, 1, 1) + dt.timedelta(hours=i) for i in range(n - 7 * k)],
                           dtype=pl.Datetime("us"))
        m = len(stamps)
        parts.append(pl.DataFrame({
            "series_id": sid, "timestamp": stamps, "target": rng.normal(5 * (k + 1), 1, m),
            "region": pl.Series([region] * m, dtype=pl.String), "size": float(k + 1) * 10,
            "promo": rng.choice(["on", "off"], m), "tier": f"t{k % 2}",
            "observed": True, "is_outlier": False, "in_long_gap": False}))
    return pl.concat(parts)


@pytest.mark.parametrize("pad", [False, True])
def test_per_series_channels_are_kept_once_per_series_and_give_the_same_windows(pad):
    """A covariate whose value never changes within a series (one-hot or scaled) is kept once per series, not
    once per row, and each calendar part as its value (2 bytes a row, not two float32 channels, in UTC or on a
    local clock); every window ``WindowDataset`` gathers (masked or not, padded or not) holds exactly the
    inputs, past and known-future, it held with every channel per row. A covariate that changes within a
    series, or a known-future one, stays per row."""
    import torch

    from nightcast.tasks.data.features import FeatureEncoder
    from nightcast.tasks.data.window import WindowDataset, make_windows

    clean = _with_static()
    state = fit_features(clean, clean["timestamp"][30], "standard", ["size"], ["region", "promo", "tier"],
                         None, ["tier"], calendar=["hour", "dow"], lags=[3],
                         timezone="America/New_York" if pad else "UTC")  # a local clock: polars' path
    encoder = FeatureEncoder(clean, state)
    fixed = ["cat__region=north", "cat__region=south", "num__size"]
    assert sorted(encoder.static_columns()) == fixed
    kw = dict(min_input=4 if pad else None)
    got = make_windows(encoder, state.past_columns, state.future_columns, 12, 3, **kw)
    want = make_windows(FeatureEncoder(clean, state), state.past_columns, state.future_columns, 12, 3,
                        compact=False, **kw)
    assert got.static_at == [state.past_columns.index(c) for c in fixed]
    # per row: the target, promo's two, tier's two, the lag (region and size per series, the calendar as codes)
    assert got.past.shape == (want.past.shape[0], want.past.shape[1] - 3 - 4) and got.static.shape == (4, 3)
    assert got.codes.shape == (want.past.shape[0], 2) and got.codes.dtype == np.int16  # hour, weekday
    assert got.n_past == want.n_past == len(state.past_columns)
    assert got.n_future == want.n_future == len(state.future_columns) and got.future.shape[1] == 2  # tier's
    assert np.array_equal(got.static[2, :2], [0, 0])  # no region: no category, as on every row before
    assert np.array_equal(got.splits["all"], want.splits["all"])
    starts = got.splits["all"]
    assert (starts < got.offsets[got.series[got.origin(starts)]]).any() == pad  # padded windows are in the test
    items = torch.arange(len(starts))
    for mask in {pad, True}:  # an unpadded index is read with and without the mask channel
        a = WindowDataset(got, starts, mask=mask).__getitems__(items)
        b = WindowDataset(want, starts, mask=mask).__getitems__(items)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    # one row of one series changes its region: that covariate is per row again
    moved = clean.with_columns(pl.when((pl.col("series_id") == "d") & (pl.col("timestamp") == clean["timestamp"][10]))
                               .then(pl.lit("south")).otherwise(pl.col("region")).alias("region"))
    assert FeatureEncoder(moved, state).static_columns() == ["num__size"]


def test_transform_features_keeps_the_row_order_without_lags():
    clean = _rich(("a", "c")).sample(fraction=1.0, shuffle=True, seed=2)
    state = fit_features(clean, clean["timestamp"].max(), "standard", ["x1"], [], None, [])
    frame, _ = transform_features(clean, state)
    assert frame.select(clean.columns).equals(clean)


def test_make_windows_refuses_an_encoder_out_of_series_order_and_transform_replaces_columns():
    from nightcast.tasks.data.features import FeatureEncoder
    from nightcast.tasks.data.window import make_windows

    clean = _rich(("a", "c")).sample(fraction=1.0, shuffle=True, seed=4)
    state = fit_features(clean, clean["timestamp"].max(), "standard", ["x1"], [], None, [])
    with pytest.raises(ValueError, match="series order"):
        make_windows(FeatureEncoder(clean, state, in_series_order=False), state.past_columns, [], 8, 3)
    assert make_windows(FeatureEncoder(clean, state), state.past_columns, [], 8, 3).series_ids == ["a", "c"]
    frame, _ = transform_features(clean.with_columns(y=pl.lit(99.0)), state)  # an input column named like an input
    assert frame["y"].equals(transform_features(clean, state)[0]["y"])
