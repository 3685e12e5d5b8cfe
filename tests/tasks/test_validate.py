import polars as pl
import pytest

from nightcast.tasks.data.validate import DataValidationError, validate_observations


def _raw(n: int = 40, **cols) -> pl.DataFrame:
    base = {"series_id": ["a"] * n,
            "timestamp": [f"2024-01-{1 + i // 24:02d} {i % 24:02d}:00:00" for i in range(n)],
            "target": [str(float(i)) for i in range(n)]}
    base.update(cols)
    return pl.DataFrame(base)


def test_clean_input_passes_typed_and_sorted():
    raw = _raw().reverse()  # unsorted input
    out = validate_observations(raw)
    assert out.n_quarantined == 0
    assert out.valid.schema["timestamp"] == pl.Datetime("us") and out.valid.schema["target"] == pl.Float64
    assert out.valid["timestamp"].is_sorted()


@pytest.mark.parametrize("bad, rule", [("inf", "target:finite"),
                                       ("-inf", "target:finite"), ("abc", "target:target_numeric")])
def test_bad_target_rows_are_quarantined_with_their_rule(bad, rule):
    raw = _raw().with_columns(pl.when(pl.int_range(pl.len()) == 5).then(pl.lit(bad)).otherwise("target").alias("target"))
    out = validate_observations(raw)
    assert out.quarantine["_row"].to_list() == [5]
    assert rule in out.quarantine["_rules"][0]
    assert out.valid.height == 39


def test_unparseable_timestamp_and_null_series_are_quarantined():
    raw = _raw().with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("not a date")).otherwise("timestamp").alias("timestamp"),
        pl.when(pl.int_range(pl.len()) == 7).then(None).otherwise("series_id").alias("series_id"),
    )
    out = validate_observations(raw, max_bad_share=0.1)
    rules = dict(zip(out.quarantine["_row"].to_list(), out.quarantine["_rules"].to_list()))
    assert "timestamp:timestamp_parseable" in rules[3]
    assert "series_id:not_nullable" in rules[7]


def test_conflicting_duplicates_quarantined_exact_duplicates_dropped():
    raw = _raw(10)
    exact = raw.slice(2, 1)
    conflict = raw.slice(4, 1).with_columns(pl.lit("99.0").alias("target"))
    out = validate_observations(pl.concat([raw, exact, conflict]), max_bad_share=0.5)
    assert out.exact_duplicates == 1
    assert sorted(out.quarantine["_row"].to_list()) == [4, 11]  # both rows of the conflicting key
    assert set(out.quarantine["_rules"]) == {"series_id+timestamp:multiple_fields_uniqueness"}


def test_too_many_bad_rows_stop_with_column_rule_and_sample_rows():
    raw = _raw(20).with_columns(pl.when(pl.int_range(pl.len()) < 5).then(pl.lit("oops")).otherwise("target").alias("target"))
    with pytest.raises(DataValidationError) as err:
        validate_observations(raw, max_bad_share=0.05)
    msg = str(err.value)
    assert "5 of 20 rows (25.0%)" in msg
    assert "column 'target', rule target_numeric: 5 failure(s)" in msg
    assert "'target': 'oops'" in msg and "rows [0, 1, 2]" in msg


def test_wrong_type_of_whole_column_stops():
    raw = _raw(10).with_columns(pl.lit(True).alias("target"))
    with pytest.raises(DataValidationError, match="column 'target' has type Boolean"):
        validate_observations(raw)


def test_header_only_file_is_an_error():
    with pytest.raises(DataValidationError, match="no rows"):
        validate_observations(_raw(0))


def test_covariates_typed_numeric_or_categorical():
    out = validate_observations(_raw(4, temp=["1", "2.5", "3", "4"], promo=["on", "off", "on", "3"]))
    assert out.numeric == ["temp"] and out.categorical == ["promo"]


def test_typed_input_needs_no_raw_text_and_is_checked_the_same():
    """Parquet-like input: typed columns, out of order, a NaN target (a gap) and a conflicting duplicate."""
    import datetime as dt

    ts = [dt.datetime(2024, 1, 1, h, tzinfo=dt.timezone(dt.timedelta(hours=2))) for h in range(6)]
    raw = pl.DataFrame({"series_id": ["b", "a", "a", "a", "a", "a", "a"],
                        "timestamp": [ts[0], ts[3], ts[1], ts[2], ts[0], ts[4], ts[1]],
                        "target": [1.0, 2.0, float("nan"), 4.0, 5.0, 6.0, 7.0]})
    out = validate_observations(raw, max_bad_share=0.5)
    assert dict(zip(out.quarantine["_row"], out.quarantine["_rules"])) == {
        2: "series_id+timestamp:multiple_fields_uniqueness",
        6: "series_id+timestamp:multiple_fields_uniqueness"}
    assert out.notes["targets_missing_marker"] == 1
    assert out.valid.columns == ["series_id", "timestamp", "target"]
    assert out.valid["series_id"].to_list() == ["a", "a", "a", "a", "b"]
    assert out.valid["timestamp"].dt.hour().to_list() == [22, 0, 1, 2, 22]  # UTC, naive, sorted in each series


def test_repeated_unparseable_timestamps_are_not_one_key():
    """A timestamp that does not parse is unknown, not equal to another: each row breaks one rule."""
    raw = _raw(30).with_columns(
        pl.when(pl.int_range(pl.len()).is_in([3, 20])).then(pl.lit("never")).otherwise("timestamp").alias("timestamp"))
    out = validate_observations(raw, max_bad_share=0.1)
    rules = dict(zip(out.quarantine["_row"].to_list(), out.quarantine["_rules"].to_list()))
    assert rules == {3: "timestamp:timestamp_parseable", 20: "timestamp:timestamp_parseable"}


def test_exact_duplicates_far_apart_are_dropped_not_quarantined():
    raw = _raw(30)
    out = validate_observations(pl.concat([raw, raw.slice(0, 3)]).reverse())
    assert out.exact_duplicates == 3 and out.n_quarantined == 0
    assert out.valid.height == 30 and out.valid["timestamp"].is_sorted()


def test_covariates_are_typed_as_the_model_was_trained_when_kinds_are_given():
    """One day's (or one shard's) promo codes may all be digits and its temperatures all blank: scoring
    reads them as the model does, and text in a numeric covariate is a clear error."""
    raw = pl.DataFrame({"series_id": ["a", "a", "b"], "timestamp": ["2026-01-01", "2026-01-02", "2026-01-01"],
                        "target": ["1", "2", "3"], "promo": ["0", "1", "0"], "temp": ["", "NA", ""]})
    guessed = validate_observations(raw).valid
    assert guessed.schema["promo"] == pl.Float64 and guessed.schema["temp"] == pl.String  # what inference makes of it
    typed = validate_observations(raw, kinds={"promo": "categorical", "temp": "numeric"}).valid
    assert typed.schema["promo"] == pl.String and typed["promo"].to_list() == ["0", "1", "0"]
    assert typed.schema["temp"] == pl.Float64 and typed["temp"].null_count() == 3
    bad = raw.with_columns(pl.Series("temp", ["1.5", "warm", ""]))
    with pytest.raises(DataValidationError, match=r"column 'temp', rule numeric_as_trained: .* rows \[1\]: \['warm'\]"):
        validate_observations(bad, kinds={"temp": "numeric"})


def test_the_order_check_agrees_with_the_row_by_row_rule(monkeypatch):
    """``_sorted_by`` keeps a frame as it is exactly when every row's (id, time) is at or after the previous
    row's, and otherwise sorts it: 2,000 random small frames (ids out of order, times repeated or going back
    inside a series, at a series boundary, null times)."""
    import numpy as np

    from nightcast.tasks.data.validate import _neighbours, _sorted_by

    key = ["series_id", "timestamp"]
    sorts, real_sort = [], pl.DataFrame.sort
    monkeypatch.setattr(pl.DataFrame, "sort", lambda self, *a, **k: sorts.append(1) or real_sort(self, *a, **k))
    rng = np.random.default_rng(0)
    for _ in range(2000):
        n = int(rng.integers(0, 12))
        ids, ts = rng.choice(["a", "b", "c", "aa"], n).tolist(), rng.integers(0, 4, n).tolist()
        if rng.random() < 0.5:
            rows = sorted(zip(ids, ts))
            ids, ts = [r[0] for r in rows], [r[1] for r in rows]
            if n > 1 and rng.random() < 0.3:
                ts[int(rng.integers(0, n))] = int(rng.integers(0, 4))
        if n and rng.random() < 0.1:
            ts[int(rng.integers(0, n))] = None
        frame = pl.DataFrame({"series_id": ids, "timestamp": pl.Series(ts, dtype=pl.Int64).cast(pl.Datetime("us"))},
                             schema={"series_id": pl.String, "timestamp": pl.Datetime("us")})
        (a, a_prev), (b, b_prev) = (_neighbours(frame, c) for c in key)
        in_order = ((a > a_prev) | ((a == a_prev) & (b >= b_prev))).fill_null(False).all()
        sorts.clear()
        got = _sorted_by(frame, key)
        assert (not sorts) == bool(in_order), frame  # sorted (a copy) exactly when out of order
        assert got.equals(frame if in_order else real_sort(frame, key))
        if n and in_order and not frame["timestamp"].null_count():  # checked in order: the ids carry the mark
            assert got["series_id"].flags["SORTED_ASC"]


def test_validated_rows_carry_the_sorted_mark_and_cleaning_reads_it():
    """In-order input is kept as it is and its ids marked sorted; the next order checks read the mark (a frame
    marked but out of order would be believed: the mark is set only after the check)."""
    from nightcast.tasks.data.clean import by_series

    raw = pl.concat([_raw(30, series_id=["b"] * 30), _raw(30)])  # ids out of order
    out = validate_observations(raw)
    assert out.valid["series_id"].flags["SORTED_ASC"] and out.valid["series_id"].to_list() == ["a"] * 30 + ["b"] * 30
    ordered = validate_observations(_raw(30)).valid
    assert ordered["series_id"].flags["SORTED_ASC"]
    unmarked = pl.DataFrame({"series_id": ["b", "a"], "timestamp": [1, 2]},
                            schema={"series_id": pl.String, "timestamp": pl.Datetime("us")})
    got = by_series(unmarked)
    assert got["series_id"].to_list() == ["a", "b"] and not unmarked["series_id"].flags["SORTED_ASC"]
