"""Type the raw observations and validate them against ``RawObservations``.

Rows that break a rule are quarantined with the rule(s) they broke and the
run goes on; when too many rows fail, or a whole column is wrong, the run
stops with an error that names the column, the rule and sample rows.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import polars as pl
from pandera.api.polars.container import DataFrameSchema
from pandera.errors import SchemaErrors

from schemas.frames import RawObservations

CORE = ("series_id", "timestamp", "target")
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
    valid: pl.DataFrame  # series_id, timestamp, target, covariates; sorted
    quarantine: pl.DataFrame  # the offending rows as read, plus _row and _rules
    n_rows: int
    exact_duplicates: int
    categorical: list[str]
    numeric: list[str]

    @property
    def n_quarantined(self) -> int:
        return self.quarantine.height


def _to_utc_naive(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
        expr = expr.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return expr.cast(pl.Datetime("us"))


def coerce_observations(raw: pl.DataFrame, timestamp_format: str | None = None) -> pl.DataFrame:
    """Give the core columns their types, keeping the text of what failed to parse.

    Text timestamps and targets keep their text in ``_timestamp_raw`` / ``_target_raw``
    (typed columns have nothing to keep, and get no such column). String covariates that
    are numbers in every row become Float64; the rest stay categorical (String).
    """
    exprs: list[pl.Expr] = [pl.col("series_id").cast(pl.String)]
    ts_dtype = raw.schema["timestamp"]
    if ts_dtype == pl.String:
        text = pl.col("timestamp").str.strip_chars()
        text = pl.when(text == "").then(None).otherwise(text)
        parsed = text.str.to_datetime(format=timestamp_format, strict=False, time_unit="us")
        # the type (with a time zone or not) follows from the format, inferred from the first value given:
        # parse that one row to learn it, not the whole column twice
        first = raw.select(text.is_not_null().arg_max()).item()
        probe = raw.slice(first or 0, 1).select(parsed.alias("t")).schema["t"]
        exprs += [_to_utc_naive(parsed, probe).alias("timestamp"), text.alias("_timestamp_raw")]
    elif ts_dtype == pl.Date or isinstance(ts_dtype, pl.Datetime):
        exprs.append(_to_utc_naive(pl.col("timestamp"), ts_dtype))
    else:
        raise DataValidationError(
            f"column 'timestamp' has type {ts_dtype}, rule timestamp_parseable: expected dates, "
            f"datetimes or text; first values {_first_values(raw, 'timestamp')}"
        )
    if raw.schema["target"] == pl.String:
        text = pl.col("target").str.strip_chars()
        text = pl.when(text == "").then(None).otherwise(text)
        exprs += [text.cast(pl.Float64, strict=False).alias("target"), text.alias("_target_raw")]
    elif raw.schema["target"].is_numeric():
        exprs.append(pl.col("target").cast(pl.Float64))
    else:
        raise DataValidationError(
            f"column 'target' has type {raw.schema['target']}, rule target_numeric: expected numbers; "
            f"first values {_first_values(raw, 'target')}"
        )
    for name in raw.columns:
        if name in CORE:
            continue
        as_num = _as_numbers(raw[name])
        exprs.append(pl.col(name) if as_num is None else pl.lit(as_num).alias(name))
    return raw.select(exprs)


def _first_values(raw: pl.DataFrame, name: str, n: int = 3) -> list:
    """The column's first values over distinct rows (exact duplicate rows are not data)."""
    return raw.unique(keep="first", maintain_order=True)[name].head(n).to_list()


def _as_numbers(col: pl.Series, probe: int = 1000) -> pl.Series | None:
    """A text column as Float64 when every non-null value is a number (and one is there), else None.

    A text column usually fails in its first rows: those are tried before the whole column.
    """
    if col.dtype != pl.String or col.len() == col.null_count():
        return None
    for part in (col.head(probe), col):
        as_num = part.str.strip_chars().cast(pl.Float64, strict=False)
        if as_num.null_count() != part.null_count():
            return None
    return as_num


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
    """The frame sorted by ``key``; as it is (no copy) when it already is, as most exports are."""
    (a, a_prev), (b, b_prev) = (_neighbours(frame, c) for c in key)
    in_order = ((a > a_prev) | ((a == a_prev) & (b >= b_prev))).fill_null(False).all()  # nulls: sort
    return frame if in_order else frame.sort(key)


def _duplicates(typed: pl.DataFrame, raw: pl.DataFrame, key: list[str]) -> tuple[pl.DataFrame, int, pl.DataFrame]:
    """Drop exact duplicate rows (keep the first); failure cases for keys that still repeat.

    ``typed`` is sorted by ``key`` and carries ``_ROW``. Rows whose key repeats (nulls equal,
    as pandera has it) are neighbours; only those few rows are compared in full, as read.
    """
    (a, a_prev), (b, b_prev) = (_neighbours(typed, c) for c in key)
    same = a.eq_missing(a_prev) & b.eq_missing(b_prev)  # row i + 1 has row i's key
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
                          timestamp_format: str | None = None) -> ValidationResult:
    """Split the raw frame into valid rows and quarantined rows (with the rules they broke).

    Exact duplicate rows are dropped (the first is kept); rows whose series and timestamp
    still repeat are quarantined, all of them. Everything runs on columns of the whole
    frame; only the failing rows are ever gathered or turned into text.
    """
    if raw.height == 0:
        raise DataValidationError("the input has a header but no rows")
    schema, key = _row_rules()
    # _row is the row's position in the input (0-based, header excluded).
    typed = _sorted_by(coerce_observations(raw, timestamp_format).with_row_index(_ROW), key)
    typed, exact_duplicates, clashes = _duplicates(typed, raw, key)
    cases = pl.concat([clashes, _rule_failures(typed, schema)])
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
            f"more than max_bad_share={max_bad_share:.0%}:\n" + _failure_report(cases, raw)
        )
    bad = by_row["index"].cast(pl.UInt32).alias(_ROW)
    quarantine = (raw.select(pl.all().gather(bad).cast(pl.String))
                  .insert_column(0, bad).with_columns(by_row["_rules"]))
    valid = typed.filter(~pl.col(_ROW).is_in(bad.implode())) if bad.len() else typed
    valid = valid.drop(_ROW, "_timestamp_raw", "_target_raw", strict=False)
    if valid.height == 0:
        raise DataValidationError("no valid rows left after validation")
    valid, categorical, numeric = _typed_covariates(valid)
    return ValidationResult(valid, quarantine, raw.height, exact_duplicates, categorical, numeric)


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
