"""Inputs that used to crash a run or lose rows without a word: time zone offsets, mixed timestamp
formats, missing-value markers, series that lose every row, repeated columns, blanks at the ends."""

import datetime as dt

import numpy as np
import polars as pl
import pytest

from nightcast.schemas.params import CleanConfig
from nightcast.tasks.data.clean import Calendar, clean_observations
from nightcast.tasks.data.ingest import IngestError, load_observations
from nightcast.tasks.data.validate import DataValidationError, validate_observations

T0 = dt.datetime(2024, 1, 1)


def _text(sid: str, stamps: list[str], values: list[str | None]) -> pl.DataFrame:
    return pl.DataFrame({"series_id": sid, "timestamp": stamps, "target": values},
                        schema={"series_id": pl.String, "timestamp": pl.String, "target": pl.String})


def _hours(n: int, fmt: str = "%Y-%m-%d %H:%M:%S", start: dt.datetime = T0) -> list[str]:
    return [(start + dt.timedelta(hours=i)).strftime(fmt) for i in range(n)]


def _values(n: int) -> list[str]:
    return [f"{10 + np.sin(i / 4):.3f}" for i in range(n)]


# --- timestamps -----------------------------------------------------------------------------------

def test_timestamps_with_utc_offsets_are_converted_to_utc():
    # polars parses offsets only when it knows up front that the column has them: every row of an
    # ISO-8601 column with offsets used to come back null, and the run stopped ("every row failed")
    stamps = ["2024-01-01T00:00:00+00:00", "2024-01-01T02:00:00+01:00", "2024-01-01T07:30:00+05:30",
              "2024-01-01T03:00:00Z", "2024-01-01T04:00:00.000Z"]
    out = validate_observations(_text("a", stamps, ["1", "2", "3", "4", "5"]))
    assert out.n_quarantined == 0
    assert out.valid["timestamp"].to_list() == [T0, T0 + dt.timedelta(hours=1), T0 + dt.timedelta(hours=2),
                                                 T0 + dt.timedelta(hours=3), T0 + dt.timedelta(hours=4)]


def test_a_column_mixing_offsets_and_no_offsets_reads_the_plain_ones_as_utc_and_says_so():
    raw = pl.concat([_text("plain", _hours(24), _values(24)),
                     _text("zoned", _hours(24, "%Y-%m-%dT%H:%M:%S+01:00", T0 + dt.timedelta(hours=1)), _values(24))])
    out = validate_observations(raw)
    assert out.n_quarantined == 0 and out.valid.height == 48
    zoned = out.valid.filter(pl.col("series_id") == "zoned")["timestamp"]
    assert zoned.min() == T0 and zoned.max() == T0 + dt.timedelta(hours=23)
    assert out.notes["timestamps_with_offset"] == 24 and out.notes["timestamps_without_offset_read_as_utc"] == 24


def test_the_timestamp_format_is_the_one_most_rows_use_not_the_first_rows():
    # the format was inferred from the first value: a small series in another format sorted first
    # made every other row unparseable and stopped the whole catalogue
    odd = _text("aaa_odd", _hours(5, "%d.%m.%Y %H:%M"), _values(5))
    rest = pl.concat([_text(f"s{i}", _hours(100), _values(100)) for i in range(3)])
    out = validate_observations(pl.concat([odd, rest]))
    assert out.valid.height == 300 and out.n_quarantined == 5
    assert set(out.quarantine["_rules"]) == {"timestamp:timestamp_parseable"}
    assert out.notes["series_every_row_quarantined"] == ["aaa_odd"]


def test_an_unparseable_timestamp_breaks_one_rule_not_three():
    raw = _text("a", _hours(60), _values(60)).with_columns(
        pl.when(pl.int_range(pl.len()).is_in([3, 20])).then(pl.lit("never")).otherwise("timestamp").alias("timestamp"))
    out = validate_observations(raw)
    assert dict(zip(out.quarantine["_row"], out.quarantine["_rules"])) == {
        3: "timestamp:timestamp_parseable", 20: "timestamp:timestamp_parseable"}


def test_too_many_unparseable_timestamps_stop_naming_the_rule_first_and_the_format():
    raw = pl.concat([_text("a", _hours(30), _values(30)), _text("b", _hours(30, "%Y/%m/%d %Hh"), _values(30))])
    with pytest.raises(DataValidationError) as err:
        validate_observations(raw)
    msg = str(err.value)
    first = msg.splitlines()[1]
    assert "column 'timestamp', rule timestamp_parseable: 30 failure(s)" in first and "'2024/01/01 00h'" in first
    assert "multiple_fields_uniqueness" not in msg and "not_nullable" not in msg
    assert "--timestamp-format" in msg
    with pytest.raises(DataValidationError, match="rule timestamp_parseable: 2 failure"):  # no format recognised at all
        validate_observations(_text("a", ["never", "x"], ["1", "2"]))


# --- targets --------------------------------------------------------------------------------------

@pytest.mark.parametrize("marker", ["NA", "NaN", "nan", "null", "NULL", "None", "#N/A", "<NA>"])
def test_missing_value_markers_are_gaps_and_counted(marker):
    values = _values(48)
    values[0], values[10] = marker, marker
    out = validate_observations(_text("a", _hours(48), values))
    assert out.n_quarantined == 0 and out.valid.height == 48
    assert out.valid["target"].null_count() == 2 and out.valid["target"].is_nan().sum() == 0
    assert out.notes["targets_missing_marker"] == 2


def test_a_nan_in_typed_input_is_a_gap_like_null():
    raw = pl.DataFrame({"series_id": "a", "timestamp": pl.datetime_range(T0, T0 + dt.timedelta(hours=9), "1h",
                                                                          eager=True),
                        "target": [1.0, float("nan"), None, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]})
    out = validate_observations(raw)
    assert out.n_quarantined == 0 and out.valid["target"].null_count() == 2
    assert out.notes["targets_missing_marker"] == 1


def test_infinite_and_hand_typed_targets_are_still_quarantined():
    values = _values(48)
    values[5], values[9] = "inf", "n/a"
    out = validate_observations(_text("a", _hours(48), values), max_bad_share=0.1)
    assert out.quarantine["_rules"].to_list() == ["target:finite", "target:target_numeric"]


def test_a_series_whose_every_target_is_text_is_named_not_lost_silently():
    raw = pl.concat([_text("good", _hours(400), _values(400)), _text("words", _hours(10), ["abc"] * 10)])
    out = validate_observations(raw)
    assert out.n_quarantined == 10 and "words" not in out.valid["series_id"]
    assert out.notes["series_every_row_quarantined"] == ["words"]
    assert out.notes["series_every_row_quarantined_count"] == 1


# --- repeated columns -----------------------------------------------------------------------------

def test_a_repeated_header_in_a_later_csv_file_is_rejected_naming_that_file(tmp_path):
    # the first file has a genuine column named like polars' rename of a repeat, so the rename in the
    # second file lined up with it and the copy of `target` became a covariate
    (tmp_path / "a.csv").write_text("series_id,timestamp,target,target_duplicated_0\na,2024-01-01,1,5\n")
    (tmp_path / "b.csv").write_text("series_id,timestamp,target,target\nb,2024-01-01,1,2\n")
    with pytest.raises(IngestError, match=r"\['target'\] appear more than once in the header of .*b\.csv"):
        load_observations(str(tmp_path / "*.csv"))


def test_parquet_with_a_repeated_column_names_the_column_and_the_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "ds").mkdir()
    pl.DataFrame({"series_id": ["a"], "timestamp": ["2024-01-01"], "target": [1.0]}).write_parquet(
        tmp_path / "ds" / "0.parquet")
    table = pa.table([pa.array(["b"]), pa.array(["2024-01-01"]), pa.array([1.0]), pa.array([2.0])],
                     names=["series_id", "timestamp", "target", "target"])
    pq.write_table(table, tmp_path / "ds" / "1.parquet")
    with pytest.raises(IngestError, match=r"'target'.*more than once.*1\.parquet"):
        load_observations(str(tmp_path / "ds"))


# --- blanks at the ends: which series -------------------------------------------------------------

def test_leading_and_trailing_blanks_name_their_series():
    def typed(sid, values):
        return pl.DataFrame({"series_id": sid, "timestamp": pl.datetime_range(
            T0, T0 + dt.timedelta(hours=len(values) - 1), "1h", eager=True), "target": values},
            schema_overrides={"target": pl.Float64})
    wave = [10 + np.sin(i / 4) for i in range(30)]
    frame = pl.concat([typed("lead", [None] * 4 + wave[4:]), typed("trail", wave[:-2] + [None] * 2),
                       typed("both", [None] + wave[1:-1] + [None]), typed("ok", wave)])
    _, report, _ = clean_observations(frame, CleanConfig(outliers="none"), Calendar("1h"))
    assert report.leading_blank_series == {"lead": 4, "both": 1}
    assert report.trailing_blank_series == {"trail": 2, "both": 1}
    assert report.to_json()["leading_blank_series"] == {"lead": 4, "both": 1}


def test_prepare_carries_what_validation_did_into_the_cleaning_report(sample_raw):
    from nightcast.schemas.params import RetrainParams, WindowConfig
    from nightcast.tasks.data.prepare import prepare_training

    raw = sample_raw.with_columns(pl.when(pl.int_range(pl.len()) == 50).then(pl.lit("NaN"))
                                  .otherwise("target").alias("target"))
    checked = validate_observations(raw)
    prepared = prepare_training(checked, RetrainParams(data="x", window=WindowConfig(lookback=24, horizon=6)))
    assert prepared.report.validation["targets_missing_marker"] == 1
    assert prepared.report.to_json()["validation"]["targets_missing_marker"] == 1
