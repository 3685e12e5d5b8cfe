import datetime as dt

import polars as pl
import pytest

from nightcast.schemas.params import ColumnMap
from nightcast.tasks.data.ingest import IngestError, load_observations


def _frame() -> pl.DataFrame:
    return pl.DataFrame({"id": ["a", "b"], "ts": ["2024-01-01", "2024-01-01"], "y": [1.0, 2.0], "x": [0.5, 0.1]})


def test_csv_with_mapped_columns(tmp_path):
    _frame().write_csv(tmp_path / "o.csv")
    out = load_observations(str(tmp_path / "o.csv"), ColumnMap(series_col="id", timestamp_col="ts", target_col="y"))
    assert out.columns == ["series_id", "timestamp", "target", "x"]
    assert out.height == 2


def test_parquet_glob_and_partitioned_directory(tmp_path):
    cols = ColumnMap(series_col="id", timestamp_col="ts", target_col="y")
    for i in range(2):
        d = tmp_path / "ds" / f"part={i}"
        d.mkdir(parents=True)
        _frame().write_parquet(d / "data.parquet")
    assert load_observations(str(tmp_path / "ds"), cols).height == 4
    assert load_observations(str(tmp_path / "ds" / "*" / "*.parquet"), cols).height == 4


def test_missing_path(tmp_path):
    with pytest.raises(IngestError, match="input not found"):
        load_observations(str(tmp_path / "nope.csv"))


def test_empty_file(tmp_path):
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(IngestError, match="empty|cannot read"):
        load_observations(str(tmp_path / "e.csv"))


def test_unreadable_file(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"this is not parquet at all")
    with pytest.raises(IngestError, match="cannot read .*bad.parquet as parquet"):
        load_observations(str(tmp_path / "bad.parquet"))


def test_missing_column_names_it_and_what_was_found(tmp_path):
    _frame().write_csv(tmp_path / "o.csv")
    with pytest.raises(IngestError, match=r"missing column\(s\) \['series_id', 'timestamp', 'target'\].*found \['id'"):
        load_observations(str(tmp_path / "o.csv"))


def test_reads_s3_csv_through_moto(s3_env):
    import boto3, os

    body = _frame().write_csv().encode()
    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).put_object(Bucket=s3_env, Key="in/o.csv", Body=body)
    out = load_observations(f"s3://{s3_env}/in/o.csv", ColumnMap(series_col="id", timestamp_col="ts", target_col="y"))
    assert out["target"].to_list() == ["1.0", "2.0"]  # CSV is read as text; validation types it


def test_sample_uri_is_the_bundled_sample():
    from nightcast.schemas.params import SAMPLE_DATA, Settings

    frame = load_observations(SAMPLE_DATA)
    assert Settings().data == SAMPLE_DATA  # the embedded default input
    assert {"series_id", "timestamp", "target"} <= set(frame.columns)
    assert frame["series_id"].n_unique() == 5 and frame.height > 4000


def test_csv_with_a_repeated_header_column_is_rejected_naming_it(tmp_path):
    (tmp_path / "o.csv").write_text("series_id,timestamp,target,target\na,2024-01-01,1.0,2.0\n")
    with pytest.raises(IngestError, match=r"\['target'\] appear more than once in the header .*'target' 2 times"):
        load_observations(str(tmp_path / "o.csv"))


def test_csv_column_named_like_a_polars_rename_is_not_a_repeat(tmp_path):
    frame = _frame().with_columns(pl.col("x").alias("x_duplicated_0"))
    frame.write_csv(tmp_path / "o.csv")
    out = load_observations(str(tmp_path / "o.csv"), ColumnMap(series_col="id", timestamp_col="ts", target_col="y"))
    assert out.columns == ["series_id", "timestamp", "target", "x", "x_duplicated_0"]


def test_reading_one_shard_filters_in_the_scan(tmp_path):
    from nightcast.tasks.data.ingest import load_observations

    frame = pl.DataFrame({"sid": ["a", "a", "b", "c"], "timestamp": ["2026-01-01"] * 4, "target": [1.0, 2, 3, 4]})
    frame.write_parquet(tmp_path / "x.parquet")
    frame.write_csv(tmp_path / "x.csv")
    cols = ColumnMap(series_col="sid")
    for name in ("x.parquet", "x.csv"):
        got = load_observations(str(tmp_path / name), cols, series=["a", "c"])
        assert got["series_id"].to_list() == ["a", "a", "c"]
    ints = frame.with_columns(pl.Series("sid", [1, 1, 2, 3]))
    ints.write_parquet(tmp_path / "i.parquet")
    assert load_observations(str(tmp_path / "i.parquet"), cols, series=["2"])["target"].to_list() == [3.0]
    # the predicate sits inside the Parquet scan (row groups are skipped on their statistics)
    plan = pl.scan_parquet(tmp_path / "x.parquet").filter(pl.col("sid").is_in(["a"])).explain()
    assert plan.startswith("Parquet SCAN") and "SELECTION: col(\"sid\").is_in" in plan and "FILTER" not in plan


def test_gzipped_csv_is_read_as_csv_from_a_file_and_a_directory(tmp_path):
    import gzip

    frame = pl.DataFrame({"series_id": ["a", "a"], "timestamp": ["2024-01-01", "2024-01-02"], "target": [1.0, 2.0]})
    (tmp_path / "d").mkdir()
    for path in (tmp_path / "obs.csv.gz", tmp_path / "d" / "part.csv.gz"):
        path.write_bytes(gzip.compress(frame.write_csv().encode()))
    for uri in (str(tmp_path / "obs.csv.gz"), str(tmp_path / "d")):
        got = load_observations(uri)
        assert got["series_id"].to_list() == ["a", "a"] and got["target"].to_list() == ["1.0", "2.0"]


def test_reading_since_a_time_pushes_the_predicate_into_the_parquet_scan(tmp_path):
    """Typed Parquet: the rows from ``since`` on, plus one row per series with its newest older timestamp
    (nothing else); the timestamp predicate is part of the scan. CSV (text) is read whole."""
    import datetime as dt

    from nightcast.tasks.data.ingest import load_observations, rows_since

    stamps = [dt.datetime(2026, 1, 1) + dt.timedelta(hours=h) for h in range(48)]
    frame = pl.DataFrame({"sid": ["a"] * 48 + ["b"] * 10, "ts": stamps + stamps[:10],
                          "target": [float(i) for i in range(58)], "x": ["u"] * 58})
    frame.write_parquet(tmp_path / "x.parquet", row_group_size=8)
    frame.with_columns(pl.col("ts").dt.to_string("%Y-%m-%dT%H:%M:%S")).write_csv(tmp_path / "x.csv")
    cols = ColumnMap(series_col="sid", timestamp_col="ts")
    since = dt.datetime(2026, 1, 2, 12)
    got = load_observations(str(tmp_path / "x.parquet"), cols, since=since).sort("series_id", "timestamp")
    assert got.columns == ["series_id", "timestamp", "target", "x"]
    recent = got.filter(pl.col("timestamp") >= since)
    assert recent.height == 12 and recent["target"].to_list() == [float(i) for i in range(36, 48)]
    older = got.filter(pl.col("timestamp") < since)
    assert older.select("series_id", "timestamp").rows() == [("a", dt.datetime(2026, 1, 2, 11)),
                                                             ("b", dt.datetime(2026, 1, 1, 9))]
    assert older["target"].null_count() == 2 and older["x"].null_count() == 2
    assert load_observations(str(tmp_path / "x.csv"), cols, since=since).height == 58
    scan = pl.scan_parquet(tmp_path / "x.parquet")
    plan = rows_since(scan, scan.collect_schema(), cols, since).explain()
    assert plan.count("Parquet SCAN") == 2 and "FILTER" not in plan, plan  # both predicates in the scans
    assert 'SELECTION: col("ts") >= 2026-01-02 12:00:00' in plan and 'SELECTION: col("ts") < 2026-01-02' in plan, plan
    assert "PROJECT 2/4 COLUMNS" in plan, plan  # the older rows: their id and timestamp, no other column


def test_the_rows_since_a_time_keep_a_sorted_inputs_order(tmp_path):
    """Each series' older-row stub lands right before its own rows: input sorted by series then time comes
    back so (validation then keeps it as it is: no sort of the scoring span); input in another order loses
    and repeats no row (validation sorts it)."""
    import datetime as dt

    from nightcast.tasks.data.ingest import load_observations
    from nightcast.tasks.data.validate import validate_observations

    stamps = [dt.datetime(2026, 1, 1) + dt.timedelta(hours=h) for h in range(48)]
    frame = pl.DataFrame({"series_id": ["a"] * 48 + ["b"] * 10 + ["c"] * 48, "timestamp": stamps + stamps[:10] + stamps,
                          "target": [float(i) for i in range(106)], "x": ["u"] * 106})
    since = dt.datetime(2026, 1, 2, 12)
    frame.write_parquet(tmp_path / "sorted.parquet", row_group_size=8)
    got = load_observations(str(tmp_path / "sorted.parquet"), since=since)
    assert got.select("series_id", "timestamp").equals(got.select("series_id", "timestamp").sort("series_id", "timestamp"))
    assert got.height == 12 + 1 + 1 + 12 + 1  # a: 12 recent + stub; b: stub only; c: 12 recent + stub
    checked = validate_observations(got)
    assert checked.valid.select("series_id", "timestamp").equals(got.select("series_id", "timestamp"))
    frame.sample(fraction=1.0, shuffle=True, seed=3).write_parquet(tmp_path / "shuffled.parquet", row_group_size=8)
    mixed = load_observations(str(tmp_path / "shuffled.parquet"), since=since)
    assert mixed.sort("series_id", "timestamp").equals(got)
    assert validate_observations(mixed).valid.equals(checked.valid)


def test_a_file_of_many_row_groups_reads_as_one_buffer_per_column(tmp_path):
    """Every later step reads the columns in place (numpy views, filters): a Parquet file written as many row
    groups comes back with one chunk per column, not one per row group."""
    from nightcast.tasks.data.ingest import load_observations

    frame = pl.DataFrame({"series_id": ["a"] * 1000, "timestamp": pl.datetime_range(
        dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 1) + dt.timedelta(hours=999), "1h", eager=True),
        "target": [float(i) for i in range(1000)]})
    path = tmp_path / "groups.parquet"
    frame.write_parquet(path, row_group_size=100)
    assert pl.scan_parquet(path).collect()["target"].n_chunks() > 1  # as polars reads it
    got = load_observations(str(path))
    assert {c: got[c].n_chunks() for c in got.columns} == dict.fromkeys(got.columns, 1) and got.equals(frame)
