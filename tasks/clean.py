"""Put every series on a regular grid, treat outliers and fill short gaps.

Order matters: grid first (so missing steps become visible), then outliers
(a dropped outlier becomes a gap), then gap filling. Nothing here is fitted
on data after the training span: the Hampel rule only looks backwards and
IQR bounds are fitted on the training span.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass, field

import numpy as np
import polars as pl

from schemas.params import CleanConfig

_US = {"s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}
_DAY_US = _US["d"]


@dataclass(frozen=True)
class Calendar:
    """Which timestamps exist: a step and, for trading-day data, the weekdays only."""

    frequency: str  # polars duration: 1h, 30m, 1d, 1w, 1mo, ...
    kind: str = "regular"  # regular | business
    holidays: tuple[str, ...] = ()  # ISO dates missing from every series (business only)

    def to_json(self) -> dict:
        return {"frequency": self.frequency, "kind": self.kind, "holidays": list(self.holidays)}

    @classmethod
    def from_json(cls, d: dict) -> Calendar:
        return cls(d["frequency"], d["kind"], tuple(d.get("holidays", ())))


@dataclass
class CleanReport:
    """What cleaning did, for logs and the run summary."""

    series: int = 0
    rows_on_grid: int = 0
    off_grid_rows_dropped: int = 0
    short_gaps_filled: int = 0
    long_gap_steps: int = 0
    outliers: int = 0
    outlier_action: str = "clip"
    holidays: int = 0
    by_series: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def _duration_us(frequency: str) -> int | None:
    m = re.fullmatch(r"(\d+)(s|m|h|d|w)", frequency)
    if not m:
        return None  # calendar units (mo, q, y) have no fixed length
    n, unit = int(m.group(1)), m.group(2)
    return n * (7 * _DAY_US if unit == "w" else _US[unit])


def infer_frequency(frame: pl.DataFrame) -> str:
    """The most common step between consecutive observations, as a polars duration."""
    steps = (
        frame.sort("series_id", "timestamp")
        .select(pl.col("timestamp").diff().over("series_id").dt.total_microseconds().alias("d"))
        .drop_nulls()
        .filter(pl.col("d") > 0)
    )
    if steps.height == 0:
        raise ValueError("cannot infer the frequency: no series has two observations; pass --frequency")
    us = int(steps["d"].mode().min())
    days = us / _DAY_US
    for lo, hi, freq in ((28, 31, "1mo"), (89, 92, "3mo"), (365, 366, "1y")):
        if lo <= days <= hi:
            return freq
    if us % (7 * _DAY_US) == 0:
        return f"{us // (7 * _DAY_US)}w"
    for unit in ("d", "h", "m", "s"):
        if us % _US[unit] == 0:
            return f"{us // _US[unit]}{unit}"
    raise ValueError(f"cannot express a step of {us} microseconds as a frequency; pass --frequency")


def season_length_for(calendar: Calendar) -> int:
    """The natural seasonal period of a frequency (daily for sub-daily data, weekly for days...)."""
    fixed = {"1mo": 12, "3mo": 4, "1y": 1}
    if calendar.frequency in fixed:
        return fixed[calendar.frequency]
    us = _duration_us(calendar.frequency)
    if us is None:
        return 1
    if us < _DAY_US and _DAY_US % us == 0:
        return _DAY_US // us
    if us == _DAY_US:
        return 5 if calendar.kind == "business" else 7
    if us == 7 * _DAY_US:
        return 52
    return 1


def decide_calendar(frame: pl.DataFrame, cfg: CleanConfig) -> Calendar:
    """Frequency and calendar kind, from the config or the data."""
    frequency = cfg.frequency or infer_frequency(frame)
    kind = cfg.calendar
    if kind == "auto":
        weekend = frame.select((pl.col("timestamp").dt.weekday() >= 6).any()).item()
        kind = "business" if frequency == "1d" and not weekend else "regular"
    if kind == "business" and frequency != "1d":
        raise ValueError(f"calendar 'business' needs daily data, got frequency {frequency}")
    holidays: tuple[str, ...] = ()
    if kind == "business" and frame["series_id"].n_unique() > 1:
        seen = set(frame["timestamp"].dt.date().unique().to_list())
        start, end = frame["timestamp"].min().date(), frame["timestamp"].max().date()
        days = pl.date_range(start, end, "1d", eager=True)
        holidays = tuple(d.isoformat() for d in days.to_list() if d.weekday() < 5 and d not in seen)
    return Calendar(frequency, kind, holidays)


def make_grid(start: dt.datetime, end: dt.datetime, calendar: Calendar) -> pl.Series:
    """Every timestamp the calendar has between start and end, inclusive."""
    grid = pl.datetime_range(start, end, calendar.frequency, eager=True, time_unit="us")
    if calendar.kind == "business":
        holidays = [dt.date.fromisoformat(d) for d in calendar.holidays]
        grid = grid.filter((grid.dt.weekday() <= 5) & ~grid.dt.date().is_in(holidays))
    return grid.alias("timestamp")


def next_steps(last: dt.datetime, calendar: Calendar, n: int) -> list[dt.datetime]:
    """The n timestamps after ``last`` (future holidays are unknown: weekdays only)."""
    m = re.fullmatch(r"(\d+)(\w+)", calendar.frequency)
    assert m, calendar.frequency
    k, unit = int(m.group(1)), m.group(2)
    out: list[dt.datetime] = []
    step = 1
    base = pl.Series([last])
    while len(out) < n:
        ts = base.dt.offset_by(f"{k * step}{unit}").item()
        if calendar.kind != "business" or ts.weekday() < 5:
            out.append(ts)
        step += 1
    return out


def regularize(frame: pl.DataFrame, calendar: Calendar) -> tuple[pl.DataFrame, int]:
    """Place each series on the calendar from its first to its last observation.

    Returns the frame (missing steps have a null target, ``observed`` says
    which were real) and the number of observations that fell off the grid.
    """
    spans = frame.group_by("series_id").agg(pl.col("timestamp").min().alias("a"),
                                            pl.col("timestamp").max().alias("b"))
    grids = []
    full = make_grid(spans["a"].min(), spans["b"].max(), calendar)
    for sid, a, b in spans.sort("series_id").iter_rows():
        g = full.filter((full >= a) & (full <= b))
        grids.append(pl.DataFrame({"series_id": pl.Series([sid] * g.len(), dtype=pl.String), "timestamp": g}))
    grid = pl.concat(grids)
    placed = grid.join(frame, on=["series_id", "timestamp"], how="left", maintain_order="left")
    placed = placed.with_columns(pl.col("target").is_not_null().alias("observed"))
    off_grid = frame.height - placed["observed"].sum()
    covs = [c for c in frame.columns if c not in ("series_id", "timestamp", "target")]
    if covs:  # covariates carry forward (then back) within a series
        placed = placed.with_columns(pl.col(covs).forward_fill().backward_fill().over("series_id"))
    return placed, int(off_grid)


def _hampel(y: np.ndarray, window: int, k: float) -> tuple[np.ndarray, np.ndarray]:
    """Trailing Hampel rule: compare each value with the median of the ``window`` before it."""
    padded = np.concatenate([np.full(window, np.nan), y])
    past = np.lib.stride_tricks.sliding_window_view(padded[:-1], window)  # (n, window), a view
    enough = np.sum(~np.isnan(past), axis=1) >= 3
    med = np.full(len(y), np.nan)
    mad = np.full(len(y), np.nan)
    if enough.any():
        p = past[enough]
        med[enough] = np.nanmedian(p, axis=1)
        mad[enough] = 1.4826 * np.nanmedian(np.abs(p - med[enough][:, None]), axis=1)
    mad = np.maximum(mad, 1e-9 + 1e-6 * np.abs(med))
    lo, hi = med - k * mad, med + k * mad
    with np.errstate(invalid="ignore"):
        flag = ~np.isnan(y) & enough & ((y < lo) | (y > hi))
    return flag, np.clip(y, lo, hi)


def fit_iqr_bounds(frame: pl.DataFrame, train_end: dt.datetime, k: float) -> dict[str, list[float]]:
    """Per-series [low, high] = [Q1 - k·IQR, Q3 + k·IQR] over the training span."""
    q = (frame.filter(pl.col("timestamp") <= train_end).group_by("series_id")
         .agg(pl.col("target").quantile(0.25).alias("q1"), pl.col("target").quantile(0.75).alias("q3")))
    return {sid: [q1 - k * (q3 - q1), q3 + k * (q3 - q1)] for sid, q1, q3 in q.iter_rows()}


def treat_outliers(frame: pl.DataFrame, cfg: CleanConfig, season_length: int,
                   iqr_bounds: dict[str, list[float]] | None = None) -> pl.DataFrame:
    """Flag outliers (``is_outlier``) and clip them, or drop them to a gap."""
    if cfg.outliers == "none":
        return frame.with_columns(pl.lit(False).alias("is_outlier"))
    flags, clipped = [], []
    window = cfg.outlier_window or max(season_length, 7)
    for sid, part in frame.partition_by("series_id", maintain_order=True, as_dict=True).items():
        y = part["target"].to_numpy().astype(float)
        if cfg.outliers == "hampel":
            flag, clip = _hampel(y, window, cfg.outlier_threshold)
        else:
            lo, hi = (iqr_bounds or {}).get(sid[0], [-np.inf, np.inf])
            with np.errstate(invalid="ignore"):
                flag = ~np.isnan(y) & ((y < lo) | (y > hi))
            clip = np.clip(y, lo, hi)
        flags.append(flag)
        clipped.append(np.where(flag, clip if cfg.outlier_action == "clip" else np.nan, y))
    return frame.with_columns(
        pl.Series("target", np.concatenate(clipped)).fill_nan(None),
        pl.Series("is_outlier", np.concatenate(flags)),
    )


def fill_gaps(frame: pl.DataFrame, max_gap: int, method: str) -> pl.DataFrame:
    """Fill gaps of up to ``max_gap`` steps; flag longer ones (``in_long_gap``).

    Long gaps are forward-filled only to keep arrays contiguous: windows that
    touch them are never used for training or evaluation.
    """
    missing = pl.col("target").is_null()
    run = pl.col("target").is_null().rle_id().over("series_id")
    frame = frame.with_columns(run.alias("_run"))
    frame = frame.with_columns(pl.len().over("series_id", "_run").alias("_len"))
    filled = (pl.col("target").interpolate() if method == "interpolate" else pl.col("target").forward_fill())
    short = missing & (pl.col("_len") <= max_gap)
    return (
        frame.with_columns(
            pl.when(short).then(filled.over("series_id")).otherwise(pl.col("target")).alias("target"),
            (missing & ~short).alias("in_long_gap"),
        )
        .with_columns(pl.col("target").forward_fill().over("series_id"))
        .drop("_run", "_len")
    )


def clean_observations(valid: pl.DataFrame, cfg: CleanConfig, calendar: Calendar,
                       train_end: dt.datetime | None = None,
                       iqr_bounds: dict[str, list[float]] | None = None,
                       ) -> tuple[pl.DataFrame, CleanReport, dict[str, list[float]] | None]:
    """Grid → outliers → gaps. Returns the clean frame, a report, and the IQR bounds used."""
    season = cfg.season_length or season_length_for(calendar)
    placed, off_grid = regularize(valid, calendar)
    if cfg.outliers == "iqr" and iqr_bounds is None:
        if train_end is None:
            raise ValueError("IQR bounds must be fitted on a training span or given")
        iqr_bounds = fit_iqr_bounds(placed, train_end, cfg.outlier_threshold)
    treated = treat_outliers(placed, cfg, season, iqr_bounds)
    clean = fill_gaps(treated, cfg.max_gap, cfg.fill)
    per = (clean.group_by("series_id", maintain_order=True).agg(
        (~pl.col("observed") & ~pl.col("in_long_gap")).sum().alias("filled"),
        pl.col("in_long_gap").sum().alias("long_gap_steps"),
        pl.col("is_outlier").sum().alias("outliers"),
    ))
    report = CleanReport(
        series=clean["series_id"].n_unique(), rows_on_grid=clean.height, off_grid_rows_dropped=off_grid,
        short_gaps_filled=int(per["filled"].sum()), long_gap_steps=int(per["long_gap_steps"].sum()),
        outliers=int(per["outliers"].sum()), outlier_action=cfg.outlier_action, holidays=len(calendar.holidays),
        by_series={r["series_id"]: {k: int(v) for k, v in r.items() if k != "series_id"}
                   for r in per.iter_rows(named=True)},
    )
    return clean, report, iqr_bounds
