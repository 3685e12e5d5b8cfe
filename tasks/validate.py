"""Type the raw observations and validate them against ``RawObservations``.

Rows that break a rule are quarantined with the rule(s) they broke and the
run goes on; when too many rows fail, or a whole column is wrong, the run
stops with an error that names the column, the rule and sample rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
from pandera.errors import SchemaErrors

from schemas.frames import RawObservations

CORE = ("series_id", "timestamp", "target")
_ROW = "_row"
# Frame-level checks, reported against the column(s) they are about.
_FRAME_RULE_COLUMN = {
    "multiple_fields_uniqueness": "series_id+timestamp",
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

    String covariates that are numbers in every row become Float64; the rest
    stay categorical (String).
    """
    exprs: list[pl.Expr] = [pl.col("series_id").cast(pl.String)]
    ts_dtype = raw.schema["timestamp"]
    if ts_dtype == pl.String:
        text = pl.col("timestamp").str.strip_chars()
        text = pl.when(text == "").then(None).otherwise(text)
        parsed = text.str.to_datetime(format=timestamp_format, strict=False, time_unit="us")
        probe = raw.select(parsed.alias("t")).schema["t"]
        exprs += [_to_utc_naive(parsed, probe).alias("timestamp"), text.alias("_timestamp_raw")]
    elif ts_dtype == pl.Date or isinstance(ts_dtype, pl.Datetime):
        exprs += [_to_utc_naive(pl.col("timestamp"), ts_dtype), pl.lit(None, pl.String).alias("_timestamp_raw")]
    else:
        raise DataValidationError(
            f"column 'timestamp' has type {ts_dtype}, rule timestamp_parseable: expected dates, "
            f"datetimes or text; first values {raw['timestamp'].head(3).to_list()}"
        )
    if raw.schema["target"] == pl.String:
        text = pl.col("target").str.strip_chars()
        text = pl.when(text == "").then(None).otherwise(text)
        exprs += [text.cast(pl.Float64, strict=False).alias("target"), text.alias("_target_raw")]
    elif raw.schema["target"].is_numeric():
        exprs += [pl.col("target").cast(pl.Float64), pl.lit(None, pl.String).alias("_target_raw")]
    else:
        raise DataValidationError(
            f"column 'target' has type {raw.schema['target']}, rule target_numeric: expected numbers; "
            f"first values {raw['target'].head(3).to_list()}"
        )
    for name in raw.columns:
        if name in CORE:
            continue
        col = raw[name]
        if col.dtype == pl.String:
            as_num = col.str.strip_chars().cast(pl.Float64, strict=False)
            if as_num.null_count() == col.null_count() and col.len() > col.null_count():
                exprs.append(pl.lit(as_num).alias(name))
                continue
        exprs.append(pl.col(name))
    return raw.select(exprs)


def _failure_report(cases: pl.DataFrame, raw: pl.DataFrame, limit: int = 3) -> str:
    lines = []
    grouped = (
        cases.group_by("column", "check", maintain_order=True)
        .agg(pl.len().alias("n"), pl.col("index").drop_nulls().head(limit).alias("rows"),
             pl.col("failure_case").head(limit).alias("values"))
        .sort("n", descending=True)
    )
    for row in grouped.iter_rows(named=True):
        sample = ""
        if row["rows"]:
            shown = raw.filter(pl.col(_ROW).is_in(row["rows"])).drop(_ROW).to_dicts()
            sample = f"; e.g. rows {row['rows']}: {shown}"
        else:
            sample = f"; {row['values']}"
        lines.append(f"  column '{row['column']}', rule {row['check']}: {row['n']} failure(s){sample}")
    return "\n".join(lines)


def validate_observations(raw: pl.DataFrame, max_bad_share: float = 0.05,
                          timestamp_format: str | None = None) -> ValidationResult:
    """Split the raw frame into valid rows and quarantined rows (with the rules they broke)."""
    if raw.height == 0:
        raise DataValidationError("the input has a header but no rows")
    n_rows = raw.height
    # _row is the row's position in the input (0-based, header excluded).
    deduped = raw.with_row_index(_ROW).unique(subset=raw.columns, keep="first", maintain_order=True)
    exact_duplicates = n_rows - deduped.height
    typed = coerce_observations(deduped.drop(_ROW), timestamp_format).with_columns(deduped[_ROW])
    try:
        RawObservations.validate(typed, lazy=True)
        cases = pl.DataFrame(schema={"column": pl.String, "check": pl.String, "index": pl.Int64,
                                     "failure_case": pl.String})
    except SchemaErrors as err:
        cases = err.failure_cases.select(
            pl.col("check").replace_strict(_FRAME_RULE_COLUMN, default=pl.col("column")).alias("column"),
            "check",
            # pandera's index is the position in `typed`; report the input row instead
            pl.col("index").cast(pl.Int64).map_elements(lambda i: int(typed[_ROW][i]), return_dtype=pl.Int64),
            pl.col("failure_case").cast(pl.String),
        )

    whole = cases.filter(pl.col("index").is_null())
    if whole.height:
        raise DataValidationError("the input's columns are wrong:\n" + _failure_report(whole, deduped))
    by_row = (cases.group_by("index")
              .agg(pl.concat_str(pl.col("column"), pl.lit(":"), pl.col("check")).unique().sort()
                   .str.join("; ").alias("_rules")))
    bad_share = by_row.height / max(deduped.height, 1)
    if by_row.height and (bad_share > max_bad_share or by_row.height == deduped.height):
        raise DataValidationError(
            f"{by_row.height} of {deduped.height} rows ({bad_share:.1%}) failed validation, "
            f"more than max_bad_share={max_bad_share:.0%}:\n" + _failure_report(cases, deduped)
        )
    quarantine = (
        deduped.with_columns(pl.all().exclude(_ROW).cast(pl.String))
        .join(by_row.rename({"index": _ROW}).with_columns(pl.col(_ROW).cast(pl.UInt32)), on=_ROW)
        .sort(_ROW)
    )
    valid = (
        typed.join(by_row.select(pl.col("index").cast(pl.UInt32).alias(_ROW)), on=_ROW, how="anti")
        .drop(_ROW, "_timestamp_raw", "_target_raw")
        .sort("series_id", "timestamp")
    )
    if valid.height == 0:
        raise DataValidationError("no valid rows left after validation")
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
    return ValidationResult(valid, quarantine, n_rows, exact_duplicates, categorical, numeric)
