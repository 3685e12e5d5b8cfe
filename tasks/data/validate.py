"""Type the raw observations and validate them against ``RawObservations``.

Rows that break a rule are quarantined with the rule(s) they broke and the
run goes on; when too many rows fail, or a whole column is wrong, the run
stops with an error that names the column, the rule and sample rows.
"""

from __future__ import annotations

import datetime as dt

import copy
import functools
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from pandera.api.polars.container import DataFrameSchema
from pandera.errors import SchemaErrors

from nightcast.schemas.frames import RawObservations
from nightcast.tasks.data.clean import flag_sorted, in_series_order

CORE = ("series_id", "timestamp", "target")
_LISTED = 20  # series named in a note; the count covers all of them
_ROW = "_row"
# Frame-level checks, reported against the column(s) they are about (uniqueness: see _duplicates).
_FRAME_RULE_COLUMN = {
    "timestamp_parseable": "timestamp",
    "target_numeric": "target",
}


class DataValidationError(ValueError):
    """Too much of the input is wrong to go on; the message says what and where."""


@dataclass(frozen=True)
class ValidationResult:
    valid: pl.DataFrame  # series_id, timestamp, target, covariates; sorted (a sharded retrain's: empty)
    quarantine: pl.DataFrame  # the offending rows as read, plus _row and _rules
    n_rows: int
    exact_duplicates: int
    categorical: list[str]
    numeric: list[str]
    # what was read other than as written, and series that lost every row (see validate_observations)
    notes: dict = field(default_factory=dict)
    # a sharded retrain (``nightcast.tasks.data.sharded``): the rows stayed on the workers (``valid`` and
    # ``quarantine`` are empty; the shards' tasks wrote the quarantined rows); this counts the whole catalogue
    # (rows, series, quarantined, start, end, quarantine: the files written, cleaned_by, sample)
    catalogue: dict | None = None

    @property
    def n_quarantined(self) -> int:
        return self.catalogue["quarantined"] if self.catalogue is not None else self.quarantine.height


def merge_notes(parts: list[dict]) -> dict:
    """One set of validation notes from parts of the input validated apart (shards): counts add up, a flag is
    the last part's, listed examples are joined up to 20 (the counts stay exact)."""
    notes: dict = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, bool) or key not in notes:
                notes[key] = value if not isinstance(value, list) else list(value)
            elif isinstance(value, (int, float)):
                notes[key] += value
            elif isinstance(value, list):
                notes[key] = (notes[key] + value)[:_LISTED]
    return notes


# What software writes for a missing number (numpy/pandas "nan", R "NA", SQL/JSON "null", Python
# "None", pandas "<NA>", Excel "#N/A"; pandas' read_csv defaults): a gap, as a blank cell is, not a
# bad row. Text a person types ("n/a", "-", "?") stays a bad value: quarantined and shown.
MISSING_MARKERS = ("NA", "NaN", "nan", "-NaN", "-nan", "NULL", "null", "None", "<NA>", "#N/A", "#N/A N/A",
                   "#NA", "-1.#IND", "-1.#QNAN", "1.#IND", "1.#QNAN")
# A UTC offset (or Z) after a time of day: "…T01:00:00+01:00", "…00:00Z", "…00:00:00.5 -0500".
_OFFSET = r"\d:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[zZ]|[+-]\d{2}(?::?\d{2})?)$"


def coerce_observations(raw: pl.DataFrame, timestamp_format: str | None = None,
                        notes: dict | None = None, kinds: dict[str, str] | None = None) -> pl.DataFrame:
    """Give the core columns their types, keeping the text of what failed to parse.

    Text timestamps and targets keep their text in ``_timestamp_raw`` / ``_target_raw``
    (typed columns have nothing to keep, and get no such column). A missing-value marker or a
    NaN target is a gap (null). String covariates that are numbers in every row become
    Float64; the rest stay categorical (String). ``kinds`` (covariate -> "numeric" or
    "categorical", what a trained model reads them as) overrides that guess, so that a day or a
    shard whose promo codes happen to be all digits, or whose numeric covariate is all blank, is
    read as the model was trained. What was read differently from the text is counted in ``notes``.
    """
    notes = {} if notes is None else notes
    cols: list[pl.Series] = [raw["series_id"].cast(pl.String)]
    ts_dtype = raw.schema["timestamp"]
    if ts_dtype == pl.String:
        text = _blank_to_null(raw["timestamp"])
        cols += [parse_timestamps(text, timestamp_format, notes).alias("timestamp"), text.alias("_timestamp_raw")]
    elif ts_dtype == pl.Date or isinstance(ts_dtype, pl.Datetime):
        cols.append(_to_utc_naive(raw["timestamp"]))
    else:
        raise DataValidationError(
            f"column 'timestamp' has type {ts_dtype}, rule timestamp_parseable: expected dates, "
            f"datetimes or text; first values {_first_values(raw, 'timestamp')}"
        )
    target_cols, missing = _typed_target(raw)
    cols += target_cols
    notes["targets_missing_marker"] = missing
    cols += [_typed_covariate(raw, name, (kinds or {}).get(name)) for name in raw.columns if name not in CORE]
    return pl.DataFrame(cols)


def _typed_target(raw: pl.DataFrame) -> tuple[list[pl.Series], int]:
    """The target as Float64 (missing-value markers and NaN are gaps), its text when it was text, and how many
    gaps the markers made."""
    if raw.schema["target"] == pl.String:
        text = _blank_to_null(raw["target"])
        target = text.cast(pl.Float64, strict=False)
        gap = target.is_nan().fill_null(False)  # "NaN", "nan", "+nan"
        failed = text.is_not_null() & target.is_null()
        if failed.any():  # other markers fail the cast: look for them among the rows that did
            gap |= failed & text.is_in(MISSING_MARKERS)
        missing = int(gap.sum())
        if missing:
            text, target = text.set(gap, None), target.set(gap, None)
        return [target, text.alias("_target_raw")], missing
    elif raw.schema["target"].is_numeric():
        target = raw["target"].cast(pl.Float64)
        missing = int(target.is_nan().sum())
        return [target.fill_nan(None)], missing
    else:
        raise DataValidationError(
            f"column 'target' has type {raw.schema['target']}, rule target_numeric: expected numbers; "
            f"first values {_first_values(raw, 'target')}"
        )


def _typed_covariate(raw: pl.DataFrame, name: str, kind: str | None) -> pl.Series:
    """A covariate as the model reads it (``kind``), else Float64 when every row is a number, else text."""
    if kind == "categorical":
        return raw[name]
    if kind == "numeric":
        return _trained_numeric(raw, name)
    as_num = _as_numbers(raw[name])
    return raw[name] if as_num is None else as_num.alias(name)


def _trained_numeric(raw: pl.DataFrame, name: str) -> pl.Series:
    """A covariate the model was trained on as numbers: Float64 (blank and missing markers null), or a
    clear error naming the text that is not a number."""
    col = raw[name]
    if col.dtype.is_numeric():
        return col.cast(pl.Float64).fill_nan(None)
    if col.dtype != pl.String:
        return col  # _typed_covariates names unsupported types
    text = _blank_to_null(col)
    text = text.set(text.is_in(MISSING_MARKERS), None)
    as_num = text.cast(pl.Float64, strict=False)
    bad = text.is_not_null() & as_num.is_null()
    if bad.any():
        rows = bad.arg_true().head(3).to_list()
        raise DataValidationError(
            f"column {name!r}, rule numeric_as_trained: the model reads {name!r} as numbers, but "
            f"{int(bad.sum())} row(s) hold text, e.g. rows {rows}: {col.gather(rows).to_list()}")
    return as_num.fill_nan(None).alias(name)


def _blank_to_null(text: pl.Series) -> pl.Series:
    text = text.str.strip_chars()
    return text.set(text == "", None)


def _to_utc_naive(col: pl.Series) -> pl.Series:
    """Zoned datetimes as naive UTC, except date-level data: when every value is local midnight in its
    own zone, the local dates are kept (a business day stamped 2024-01-02T00:00+01:00 is 2 January,
    not 23:00 on the 1st, which would read as a daily calendar with weekends)."""
    if isinstance(col.dtype, pl.Datetime) and col.dtype.time_zone is not None:
        local = col.dt.replace_time_zone(None)
        if bool((local.dt.time() == dt.time(0)).all()):
            return local.cast(pl.Datetime("us"))
        col = col.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return col.cast(pl.Datetime("us"))


# A date at local midnight with an offset: "2024-01-02T00:00:00+01:00", "2024-01-02 00:00-0500".
_LOCAL_MIDNIGHT = r"^(\d{4}-\d{2}-\d{2})[T ]00:00(?::00(?:[.,]0+)?)?\s*(?:[zZ]|[+-]\d{2}(?::?\d{2})?)$"


def _local_dates(text: pl.Series, notes: dict) -> pl.Series | None:
    """Date-level text stamped at local midnight with a UTC offset, read as its local dates; None when
    some value is not of that form (then offsets are converted to UTC as for any time of day)."""
    given = text.drop_nulls()
    if given.len() == 0 or not bool(given.str.contains(_LOCAL_MIDNIGHT).all()):
        return None
    notes["timestamps_local_midnight_read_as_dates"] = given.len()
    return text.str.extract(_LOCAL_MIDNIGHT, 1).str.to_datetime("%Y-%m-%d", strict=False, time_unit="us")


def parse_timestamps(text: pl.Series, timestamp_format: str | None = None, notes: dict | None = None) -> pl.Series:
    """Text timestamps as naive UTC datetimes (null where a value does not parse).

    Values with a UTC offset are converted to UTC; values without one are taken as UTC, and a
    column that mixes the two is counted in ``notes``: polars reads offsets only in a column
    whose first value has one, so the two kinds are parsed apart. Without a format, each kind
    is read with one format: the one that parses the most of its rows (see ``_most_parsed``).
    Only when the first parse leaves rows unparsed is any of this extra work done.
    """
    notes = {} if notes is None else notes
    if timestamp_format:
        return _to_utc_naive(text.str.to_datetime(timestamp_format, strict=False, time_unit="us"))
    if (dates := _local_dates(text, notes)) is not None:
        return dates
    first = _inferred(text)
    if first.null_count() == text.null_count():
        return first
    zoned = text.str.contains(_OFFSET).fill_null(False)
    n_zoned, n_given = int(zoned.sum()), text.len() - text.null_count()
    if n_zoned in (0, n_given):
        return _most_parsed(text, first, notes)
    notes["timestamps_with_offset"] = n_zoned
    notes["timestamps_without_offset_read_as_utc"] = n_given - n_zoned
    kinds = [text.set(zoned, None), text.set(~zoned, None)]
    plain, offset = (_most_parsed(t, _inferred(t), notes) for t in kinds)
    return plain.zip_with(~zoned, offset)


def _inferred(text: pl.Series) -> pl.Series:
    """Parsed in the format polars infers from the first value it recognises; all null if none."""
    try:
        return _to_utc_naive(text.str.to_datetime(strict=False, time_unit="us"))
    except pl.exceptions.ComputeError:  # "could not find an appropriate format"
        return pl.Series(text.name, [], pl.Datetime("us")).extend_constant(None, text.len())


def _most_parsed(text: pl.Series, parsed: pl.Series, notes: dict) -> pl.Series:
    """``parsed`` (the format polars infers from the first value), or the parse in the format of one of
    the failing values (the first, middle and last) when that reads more rows.

    A catalogue whose first series is in an odd format is then read in the format of the many,
    and the odd rows are reported, not the other way round.
    """
    failed = np.flatnonzero((text.is_not_null() & parsed.is_null()).to_numpy())
    if not len(failed):
        return parsed
    for row in dict.fromkeys(failed[[0, len(failed) // 2, -1]].tolist()):
        led = pl.concat([text.slice(row, 1), text])  # polars infers the format from the first value
        alt = _inferred(led).slice(1)
        if alt.null_count() < parsed.null_count():
            parsed = alt
            notes["timestamp_format_from"] = f"input row {row}: {text[row]!r} (the format most rows parse with)"
    return parsed


def _first_values(raw: pl.DataFrame, name: str, n: int = 3) -> list:
    """The column's first values over distinct rows (exact duplicate rows are not data)."""
    return raw.unique(keep="first", maintain_order=True)[name].head(n).to_list()


def _as_numbers(col: pl.Series, probe: int = 1000) -> pl.Series | None:
    """A text column as Float64 when every value given is a number or a missing-value marker (and one
    is a number), else None. A text column usually fails in its first rows: those are tried first.
    """
    if col.dtype != pl.String or col.len() == col.null_count():
        return None
    for part in (col.head(probe), col):
        text = _blank_to_null(part)
        text = text.set(text.is_in(MISSING_MARKERS), None)
        as_num = text.cast(pl.Float64, strict=False)
        if as_num.null_count() != text.null_count() or as_num.null_count() == as_num.len():
            return None
    return as_num.fill_nan(None)


def _failure_report(cases: pl.DataFrame, raw: pl.DataFrame, limit: int = 3) -> str:
    lines = []
    grouped = (
        cases.group_by("column", "check", maintain_order=True)
        .agg(pl.len().alias("n"), pl.col("index").drop_nulls().sort().head(limit).alias("rows"),
             pl.col("failure_case").head(limit).alias("values"))
        .sort("n", descending=True)
    )
    for row in grouped.iter_rows(named=True):
        sample = ""
        if row["rows"]:
            shown = raw.select(pl.all().gather(row["rows"])).to_dicts()
            sample = f"; e.g. rows {row['rows']}: {shown}"
        else:
            sample = f"; {row['values']}"
        lines.append(f"  column '{row['column']}', rule {row['check']}: {row['n']} failure(s){sample}")
    return "\n".join(lines)


_CASES = {"column": pl.String, "check": pl.String, "index": pl.Int64, "failure_case": pl.String}


@functools.cache
def _row_rules() -> tuple[DataFrameSchema, list[str]]:
    """``RawObservations`` without its uniqueness rule, and the key that rule is about.

    pandera checks uniqueness by hashing every row; on rows sorted by the key a duplicate
    is a neighbour, so ``_duplicates`` checks the same rule in one pass.
    """
    schema = copy.deepcopy(RawObservations.to_schema())
    key = list(schema.unique)
    schema.unique = None
    return schema, key


def _neighbours(frame: pl.DataFrame, name: str) -> tuple[pl.Series, pl.Series]:
    """(rows 1..n-1, rows 0..n-2) of a column: zero-copy slices, compared row against previous row."""
    col = frame[name]
    return col.slice(1), col.slice(0, max(0, col.len() - 1))


def _sorted_by(frame: pl.DataFrame, key: list[str]) -> pl.DataFrame:
    """The frame sorted by ``key`` (an id, then a time; a time may repeat, duplicates are judged later);
    as it is (no copy) when it already is, as most exports are. Without null keys the order is checked by
    ``in_series_order``; with them, row by row (a null sorts)."""
    ids, times = frame[key[0]], frame[key[1]]
    if not ids.null_count() and not times.null_count():
        return flag_sorted(frame, key[0]) if in_series_order(ids, times, repeats=True) else frame.sort(key)
    (a, a_prev), (b, b_prev) = (_neighbours(frame, c) for c in key)
    in_order = ((a > a_prev) | ((a == a_prev) & (b >= b_prev))).fill_null(False).all()  # nulls: sort
    return frame if in_order else frame.sort(key)


def _duplicates(typed: pl.DataFrame, raw: pl.DataFrame, key: list[str]) -> tuple[pl.DataFrame, int, pl.DataFrame]:
    """Drop exact duplicate rows (keep the first); failure cases for keys that still repeat.

    ``typed`` is sorted by ``key`` and carries ``_ROW``. Rows whose key repeats are neighbours;
    only those few rows are compared in full, as read. A key with a null part (a timestamp that
    did not parse) is unknown, not equal to another: that row breaks its own rule, and only it.
    """
    (a, a_prev), (b, b_prev) = (_neighbours(typed, c) for c in key)
    same = b.eq(b_prev).fill_null(False)  # row i + 1 has row i's time (a key repeats only where a time does)
    if same.any():  # then the ids too (all rows: a masked comparison would cost as much)
        same &= a.eq(a_prev).fill_null(False)  # row i + 1 has row i's key
    if not same.any():
        return typed, 0, pl.DataFrame(schema=_CASES)
    no = pl.Series([False])
    repeated = typed.filter(pl.concat([no, same]) | pl.concat([same, no]))
    rows = repeated[_ROW].sort()
    kept = (raw.select(pl.all().gather(rows)).with_columns(rows)
            .unique(subset=raw.columns, keep="first", maintain_order=True)[_ROW])
    dropped = rows.filter(~rows.is_in(kept.implode()))
    if dropped.len():
        typed = typed.filter(~pl.col(_ROW).is_in(dropped.implode()))
    clash = repeated.filter(pl.col(_ROW).is_in(kept.implode())).sort(_ROW)
    clash = clash.filter(clash.select(key).is_duplicated())
    cases = clash.select(
        pl.lit("+".join(key)).alias("column"), pl.lit("multiple_fields_uniqueness").alias("check"),
        pl.col(_ROW).cast(pl.Int64).alias("index"),
        pl.struct(pl.all().exclude(_ROW)).struct.json_encode().alias("failure_case"))
    return typed, dropped.len(), cases


def _rule_failures(typed: pl.DataFrame, schema: DataFrameSchema) -> pl.DataFrame:
    """Every other rule's failures; ``index`` is the input row (``None``: the whole column)."""
    try:
        schema.validate(typed, lazy=True)
    except SchemaErrors as err:
        cases = err.failure_cases
        # pandera's index is the position in `typed` (null index: gathers null); report the input row
        row = typed[_ROW].gather(cases["index"]).cast(pl.Int64)
        return cases.select(
            pl.col("check").replace_strict(_FRAME_RULE_COLUMN, default=pl.col("column")).alias("column"),
            "check", pl.lit(row).alias("index"), pl.col("failure_case").cast(pl.String))
    return pl.DataFrame(schema=_CASES)


def validate_observations(raw: pl.DataFrame, max_bad_share: float = 0.05,
                          timestamp_format: str | None = None,
                          kinds: dict[str, str] | None = None) -> ValidationResult:
    """Split the raw frame into valid rows and quarantined rows (with the rules they broke).

    Exact duplicate rows are dropped (the first is kept); rows whose series and timestamp
    still repeat are quarantined, all of them. Everything runs on columns of the whole
    frame; only the failing rows are ever gathered or turned into text. ``notes`` counts
    missing-value markers read as gaps, how mixed timestamps were read, and names the series
    whose every row was quarantined (they are in no later report). ``kinds``: covariate types a
    trained model fixes (``coerce_observations``); scoring passes the bundle's.
    """
    if raw.height == 0:
        raise DataValidationError("the input has a header but no rows")
    schema, key = _row_rules()
    notes: dict = {}
    # _row is the row's position in the input (0-based, header excluded).
    typed = _sorted_by(coerce_observations(raw, timestamp_format, notes, kinds).with_row_index(_ROW), key)
    typed, exact_duplicates, clashes = _duplicates(typed, raw, key)
    cases = _one_rule_per_cause(pl.concat([clashes, _rule_failures(typed, schema)]))
    whole = cases.filter(pl.col("index").is_null())
    if whole.height:
        raise DataValidationError("the input's columns are wrong:\n" + _failure_report(whole, raw))
    by_row = (cases.group_by("index")
              .agg(pl.concat_str(pl.col("column"), pl.lit(":"), pl.col("check")).unique().sort()
                   .str.join("; ").alias("_rules"))
              .sort("index"))
    bad_share = by_row.height / typed.height
    if by_row.height and (bad_share > max_bad_share or by_row.height == typed.height):
        raise DataValidationError(
            f"{by_row.height} of {typed.height} rows ({bad_share:.1%}) failed validation, "
            f"more than max_bad_share={max_bad_share:.0%}:\n" + _failure_report(cases, raw) + _hint(cases, notes)
        )
    bad = by_row["index"].cast(pl.UInt32).alias(_ROW)
    quarantine = (raw.select(pl.all().gather(bad).cast(pl.String))
                  .insert_column(0, bad).with_columns(by_row["_rules"]))
    valid = typed.filter(~pl.col(_ROW).is_in(bad.implode())) if bad.len() else typed
    valid = valid.drop(_ROW, "_timestamp_raw", "_target_raw", strict=False)
    if valid.height == 0:
        raise DataValidationError("no valid rows left after validation")
    lost = quarantine["series_id"].drop_nulls().unique()
    if lost.len():  # the valid ids are read only when something was quarantined (0.19 s at 19 M rows)
        lost = lost.filter(~lost.is_in(valid["series_id"].unique().implode())).sort()
    notes["series_every_row_quarantined_count"] = lost.len()
    notes["series_every_row_quarantined"] = lost.head(_LISTED).to_list()
    valid, categorical, numeric = _typed_covariates(valid)
    return ValidationResult(valid, quarantine, raw.height, exact_duplicates, categorical, numeric, notes)


def _one_rule_per_cause(cases: pl.DataFrame) -> pl.DataFrame:
    """A timestamp that did not parse is null once typed: report it as unparseable, not also as missing."""
    unparsed = cases.filter(pl.col("check") == "timestamp_parseable")["index"]
    if unparsed.len() == 0:
        return cases
    echo = (pl.col("column") == "timestamp") & (pl.col("check") == "not_nullable")
    return cases.filter(~(echo & pl.col("index").is_in(unparsed.implode())))


def _hint(cases: pl.DataFrame, notes: dict) -> str:
    if not (cases["check"] == "timestamp_parseable").any():
        return ""
    used = notes.get("timestamp_format_from", "the first value")
    return (f"\ntimestamps are read with one format, inferred from {used}; "
            "pass --timestamp-format (a strftime format) to name it")


def _typed_covariates(valid: pl.DataFrame) -> tuple[pl.DataFrame, list[str], list[str]]:
    """Covariates as String (categorical) or Float64 (numeric), and their names; other types stop the run."""
    extra = [c for c in valid.columns if c not in CORE]
    categorical = [c for c in extra if valid.schema[c] in (pl.String, pl.Categorical, pl.Boolean)]
    numeric = [c for c in extra if valid.schema[c].is_numeric()]
    unsupported = [c for c in extra if c not in categorical and c not in numeric]
    if unsupported:
        raise DataValidationError(
            f"covariate column(s) {unsupported} have unsupported types "
            f"{[str(valid.schema[c]) for c in unsupported]}; use numbers or text"
        )
    valid = valid.with_columns([pl.col(c).cast(pl.String) for c in categorical]
                               + [pl.col(c).cast(pl.Float64) for c in numeric])
    return valid, categorical, numeric
