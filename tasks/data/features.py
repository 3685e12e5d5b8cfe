"""Scale targets per series, scale numeric covariates, one-hot categorical ones; derived features.

Derived features, all switchable from ``FeatureConfig``:

- calendar: hour, day of week, month, day of year as sin/cos pairs from the
  timestamp, read in a configurable time zone (``FeatureConfig.timezone``: the
  local clock a daily and weekly cycle follows, DST included; the data's
  timestamps stay UTC). Known for any future step, so they are known-future inputs.
- seasonal lags: the scaled target ``L`` steps back, per series, as extra
  input channels (they reach past the lookback, e.g. a week back for hourly data).
- PCA: the scaled numeric past covariates compressed to ``k`` components.

Every statistic is fitted on the training span only and kept as plain JSON
(``FeatureState``), so scoring applies exactly what training fitted.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import math
from dataclasses import dataclass, field, fields

import numpy as np
import polars as pl

from nightcast.tasks.data.clean import by_series
from nightcast.tasks.data.pages import on_small_pages

_EPS = 1e-8


@dataclass
class FeatureState:
    scaler: str
    target_stats: dict[str, list[float]]  # series_id -> [center, scale]; replaced, never changed in place (stats_frame)
    numeric_stats: dict[str, list[float]]  # covariate -> [center, scale]
    categories: dict[str, list[str]]  # covariate -> categories seen in training
    past_covariates: list[str]
    future_covariates: list[str]
    past_columns: list[str] = field(default_factory=list)  # encoded model inputs, target first
    future_columns: list[str] = field(default_factory=list)
    calendar: list[str] = field(default_factory=list)  # hour / dow / month / doy
    lags: list[int] = field(default_factory=list)  # seasonal lags of the scaled target, in steps
    pca: dict | None = None  # {"inputs": [num__...], "mean": [...], "components": [[...], ...]}
    timezone: str = "UTC"  # IANA zone the calendar parts are read in
    # ``target_stats`` as a frame (``stats_frame``), built once per dict: not part of the state, never saved
    _stats: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def to_json(self) -> dict:
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.init}

    def stats_frame(self) -> pl.DataFrame:
        """``target_stats`` as (series_id, center, scale), one row per series: what row lookups join on (a join of
        a frame of ids costs a hash per id; a dict lookup per id, or ``np.unique`` of text ids, cost ~0.1 s per
        call at 100,000 series, and scoring made several). Built on the first call for this dict, then reused: a
        new dict (``dataclasses.replace``, as ``with_new_series`` does) gets a new frame; a dict changed in place
        keeps the old one unless its length changed, so ``target_stats`` is never changed in place."""
        d = self.target_stats
        if self._stats is None or self._stats[0] is not d or self._stats[1] != len(d):
            values = np.array(list(d.values()), dtype=np.float64).reshape(-1, 2)
            frame = pl.DataFrame({"series_id": pl.Series(list(d), dtype=pl.String), "center": values[:, 0],
                                  "scale": values[:, 1]})
            self._stats = (d, len(d), frame)
        return self._stats[2]

    def scaled(self, column: str = "series_id") -> pl.Expr:
        """Whether each row's id in ``column`` has a target scaler: the one test every filter on it uses."""
        return pl.col(column).is_in(self.stats_frame()["series_id"].implode())

    def has_scaler(self, series_ids) -> np.ndarray:  # noqa: ANN001 - ids: a Series, array or list
        """Whether each of ``series_ids`` has a target scaler (bool array, in order)."""
        return _ids(series_ids).to_frame("series_id").select(self.scaled()).to_series().to_numpy()

    @classmethod
    def from_json(cls, d: dict) -> FeatureState:
        return cls(**d)


def _stats(col: pl.Expr, scaler: str) -> list[pl.Expr]:
    if scaler == "standard":
        return [col.mean().alias("c"), col.std().alias("s")]
    if scaler == "minmax":
        return [col.min().alias("c"), (col.max() - col.min()).alias("s")]
    return [col.median().alias("c"), (col.quantile(0.75) - col.quantile(0.25)).alias("s")]


def _target_stats(frame: pl.DataFrame, scaler: str, keep: pl.Expr | None = None) -> dict[str, list[float]]:
    """Each series' [centre, scale] of its target over the rows of ``frame`` where ``keep`` holds (all rows
    without it); a series with no such row gets none, a flat series scale 1. No row is copied: the target
    is masked to null outside ``keep`` (the statistics skip nulls), and rows already grouped by series
    (the clean frame) are grouped as slices (polars' sorted fast path) instead of hashing every row's id."""
    y = pl.col("target") if keep is None else pl.when(keep).then(pl.col("target"))
    ids = pl.col("series_id").set_sorted() if frame["series_id"].is_sorted() else pl.col("series_id")
    # lazily: polars' eager group-by on a sorted id column of many chunks (a clean frame keeps its input's)
    # took ~940 MiB and 1.2 s at 19 M rows, the same plan collected at once ~6 MiB and 0.4 s
    t = (frame.lazy().select(ids, y.alias("target"))
         .group_by("series_id").agg(*_stats(pl.col("target"), scaler), pl.col("target").count().alias("_n"))
         .filter(pl.col("_n") > 0).drop("_n").collect())
    scale = t["s"].fill_null(0.0).fill_nan(0.0)  # no spread (or one value): scale 1
    scale = pl.select(pl.when(scale > _EPS).then(scale).otherwise(1.0)).to_series()
    return dict(zip(t["series_id"].to_list(), np.column_stack([t["c"].cast(pl.Float64).to_numpy(),
                                                               scale.cast(pl.Float64).to_numpy()]).tolist()))


def with_new_series(state: FeatureState, clean: pl.DataFrame) -> FeatureState:
    """``state`` plus target scalers for the series of ``clean`` it has never seen, fitted by the same rule on
    their observed values in ``clean`` (at scoring: the recent history each series keeps, up to the origin): a series that
    appeared after training, or one outside the sample a catalogue-scale retrain trained on, is forecast by
    the global network too. Known series keep their fitted scalers; nothing is refit."""
    new = clean.filter(pl.col("observed") & ~state.scaled())
    if new.height == 0:
        return state
    return dataclasses.replace(state, target_stats={**state.target_stats, **_target_stats(new, state.scaler)})


def _encoded(name: str, state: FeatureState) -> list[str]:
    if name in state.categories:
        return [f"cat__{name}={v}" for v in state.categories[name]]
    return [f"num__{name}"]


_PERIODS = {"hour": (lambda t: t.dt.hour(), 24), "dow": (lambda t: t.dt.weekday() - 1, 7),
            "month": (lambda t: t.dt.month() - 1, 12), "doy": (lambda t: t.dt.ordinal_day() - 1, 366)}


_US_WEEKS = 10**6 * 7 * 86_400_000_000  # a million weeks in µs: stamps from year -17,000 on count up from 0


def _utc_steps(t: pl.Series, unit_us: int, period: int, shift: int = 0, chunk: int = 1 << 20) -> pl.Series:
    """(whole ``unit_us`` units since 1970 + ``shift``) mod ``period`` of naive UTC stamps, in numpy on their
    integer µs: polars' hour and weekday without building a date per row (4x faster). A chunk of rows at a
    time, so the only row-sized array is the small-integer result."""
    us = t.dt.cast_time_unit("us").to_physical().to_numpy()
    out = np.empty(len(us), np.int16)
    for lo in range(0, len(us), chunk):  # chunks of a million rows: temporaries of 8 MB
        a = us[lo: lo + chunk] + _US_WEEKS
        a //= unit_us
        a += shift
        a %= period
        out[lo: lo + chunk] = a
    return pl.Series(out)


# hour and weekday of naive UTC stamps by integer arithmetic (1970-01-01 was a Thursday: Monday = 0 is 3 back)
_UTC_PERIODS = {"hour": (lambda t: _utc_steps(t, 3_600_000_000, 24), 24),
                "dow": (lambda t: _utc_steps(t, 86_400_000_000, 7, 3), 7)}


def calendar_columns(parts: list[str]) -> list[str]:
    return [f"cal__{p}_{f}" for p in parts for f in ("sin", "cos")]


def calendar_table(part: str) -> np.ndarray:
    """(period, 2) float32: a calendar part's sine and cosine for each of its values (0 .. period-1)."""
    period = _PERIODS[part][1]
    angle = np.arange(period, dtype=np.float64) * (2 * math.pi / period)
    return np.stack([np.sin(angle), np.cos(angle)], axis=1).astype(np.float32)


@on_small_pages
def fit_features(clean: pl.DataFrame, train_end: dt.datetime, scaler: str,
                 numeric: list[str], categorical: list[str],
                 past_covariates: list[str] | None, future_covariates: list[str],
                 calendar: list[str] | None = None, lags: list[int] | None = None,
                 pca_components: int | None = None, timezone: str = "UTC") -> FeatureState:
    """Fit scalers, encoders (and PCA) on rows up to ``train_end`` (observed values only)."""
    known = set(numeric) | set(categorical)
    past = list(past_covariates) if past_covariates is not None else sorted(known - set(future_covariates))
    unknown = [c for c in [*past, *future_covariates] if c not in known]
    if unknown:
        raise ValueError(f"covariate(s) {unknown} are not columns of the input; columns: {sorted(known)}")
    used = [*past, *future_covariates]
    # each statistic filters its own column to the training span: no copy of the training rows
    keep = (pl.col("timestamp") <= train_end) & pl.col("observed")
    target_stats = _target_stats(clean, scaler, keep)
    numeric_stats = {}
    for c in (c for c in used if c in numeric):
        center, scale = clean.select(_stats(pl.col(c).filter(keep), scaler)).row(0)
        numeric_stats[c] = [float(center or 0.0), float(scale) if scale and scale > _EPS else 1.0]
    categories = {c: sorted(clean.select(pl.col(c).filter(keep).drop_nulls().unique())[c].to_list())
                  for c in used if c in categorical}
    state = FeatureState(scaler, target_stats, numeric_stats, categories, past, list(future_covariates),
                         calendar=list(calendar or []), lags=sorted(set(lags or [])), timezone=timezone)
    cal = calendar_columns(state.calendar)
    encoded_past = [e for c in [*past, *future_covariates] for e in _encoded(c, state)]
    numeric_past = [f"num__{c}" for c in past if c in numeric_stats]
    if pca_components and len(numeric_past) > pca_components:
        from sklearn.decomposition import PCA

        columns = list(dict.fromkeys(["series_id", "timestamp", "target", "observed", *used]))
        scaled, _ = transform_features(clean.select(columns).filter(keep), state)  # no PCA yet: the scaled inputs
        fit = PCA(n_components=pca_components, random_state=0).fit(scaled.select(numeric_past).to_numpy())
        state.pca = {"inputs": numeric_past, "mean": fit.mean_.tolist(), "components": fit.components_.tolist(),
                     "explained_variance_ratio": fit.explained_variance_ratio_.tolist()}
        encoded_past = [e for e in encoded_past if e not in numeric_past] + [f"pca__{i}" for i in range(pca_components)]
    state.past_columns = ["y"] + encoded_past + [f"lag__{n}" for n in state.lags] + cal
    state.future_columns = [e for c in future_covariates for e in _encoded(c, state)] + cal
    return state


_MAX_SLICES = 4096


def _without(frame: pl.DataFrame, series: list[str]) -> pl.DataFrame:
    """``frame`` without the rows of ``series``, rows in order: the runs of rows kept, as zero-copy slices of
    ``frame`` (a filter would copy every column of the catalogue to drop a few late-starting series)."""
    keep = (~frame["series_id"].is_in(pl.Series(series, dtype=pl.String).implode())).to_numpy()
    edges = np.flatnonzero(np.diff(np.r_[False, keep, False].astype(np.int8)))  # run starts, run ends, ...
    if len(edges) // 2 > _MAX_SLICES:  # ids scattered (rows not grouped by series): a filter is cheaper
        return frame.filter(pl.Series(keep))
    return pl.concat([frame.slice(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2])], rechunk=False,
                     how="vertical") if len(edges) else frame.clear()


class FeatureEncoder:
    """The encoded model inputs of ``clean`` under ``state``, a block of rows at a time.

    ``frame`` is ``clean`` without the series ``state`` has no scaler for (``unknown``), sorted by series
    then time (itself when it already is; with ``in_series_order=False`` and no lags, in its own order).
    With ``drop_unknown=False`` those series' rows stay in ``frame`` (their scaled target reads 0) and
    whoever reads the rows leaves them out: ``make_windows`` gives them no window. ``frame`` is
    then ``clean`` itself, so the window index reads its columns in place instead of copying every one of
    them to drop a few late-born series.
    ``block(lo, hi)`` gives the encoded columns of rows lo..hi-1 (all of ``columns``: the scaled target
    ``y``, encoded covariates, calendar parts, PCA components), each row's own; seasonal lags read other
    rows and are ``lag_columns``, filled from ``y`` by whoever holds it (``transform_features`` as frame
    columns, ``make_windows`` in its stacked array). One rule for both: a block of every row is the whole
    transform. Memory: a per-series table and a row's run number, never a copy of the frame.
    """

    def __init__(self, clean: pl.DataFrame, state: FeatureState, in_series_order: bool = True,
                 drop_unknown: bool = True) -> None:
        self.state = state
        runs = clean["series_id"].rle()  # one run per series when the rows are grouped by series
        seen = runs.struct.field("value").cast(pl.String).to_frame("series_id")
        self.unknown = sorted(seen.filter(~state.scaled())["series_id"].unique().to_list())
        self.kept_unknown = bool(self.unknown) and not drop_unknown  # rows of ``unknown`` series still in ``frame``
        frame = _without(clean, self.unknown) if self.unknown and drop_unknown else clean
        self.in_series_order = bool(in_series_order or state.lags)  # lags read back within a series
        self.frame = by_series(frame) if self.in_series_order else frame
        if frame is not clean or self.frame is not frame:
            runs = self.frame["series_id"].rle()
        # each row's centre and scale: a join of one row per run of equal ids, gathered by each row's run
        # number (a join of the whole frame would gather every column, a join of the id column hash every row)
        per_run = _scalers_of(runs.struct.field("value"), state)
        self._centre, self._scale = per_run["center"], per_run["scale"]
        lengths = runs.struct.field("len").to_numpy()
        self.runs = runs  # the rle of ``frame``'s ids (value, len): the window index reads it instead of its own
        self._run = np.repeat(np.arange(len(lengths), dtype=np.uint32), lengths)  # each row's run number
        self._firsts = np.cumsum(lengths) - lengths  # each run's first row (a series' when in series order)
        self._utc = state.timezone == "UTC" and not self.frame["timestamp"].null_count()
        self.columns = ["y", *[e for c in [*state.past_covariates, *state.future_covariates]
                               for e in _encoded(c, state)], *calendar_columns(state.calendar)]
        if state.pca:
            self.columns += [f"pca__{i}" for i in range(len(state.pca["components"]))]
        self.lag_columns = {f"lag__{n}": n for n in state.lags}

    @property
    def height(self) -> int:
        return self.frame.height

    def block(self, lo: int, hi: int, only: list[str] | None = None) -> pl.DataFrame:
        """The encoded columns (``columns``, or those of ``only`` in their order) of rows lo..hi-1 of ``frame``."""
        return self._encode(self.frame.slice(lo, hi - lo), pl.Series(self._run[lo:hi]), only)

    def static_columns(self) -> list[str]:
        """The encoded columns that hold one value per series: those of a past-only covariate (not a PCA input)
        whose value never changes within any series (a null counts as a value). ``make_windows`` keeps these
        once per series instead of once per row: a store's region one-hot over 2,000 hourly rows is 2,000
        copies of one value. Needs the rows in series order. Reads each candidate column once."""
        state = self.state
        pca_inputs = set((state.pca or {}).get("inputs", []))
        candidates = [c for c in state.past_covariates if c not in state.future_covariates
                      and not {f"num__{c}"} & pca_inputs]
        if not self.in_series_order or not candidates or self.frame.height < 2:
            return []
        out = []
        for name in candidates:  # a handful of covariates, never rows
            col = self.frame[name]  # each row against the one before: two zero-copy slices, no shifted copy
            changes = np.flatnonzero(col.slice(1).ne_missing(col.slice(0, col.len() - 1)).to_numpy()) + 1
            if (self._run[changes] != self._run[changes - 1]).all():  # a change only where a new series starts
                out += _encoded(name, state)
        return out

    def static_block(self, columns: list[str]) -> np.ndarray:
        """(series, len(columns)) float32: the ``static_columns`` of each series (its first row), in
        ``frame``'s series order, encoded by the same rule as every row."""
        firsts = pl.Series(self._firsts.astype(np.int64))
        sub = self.frame[firsts]
        out = self._encode(sub, pl.Series(self._run[self._firsts]), columns)
        return out.to_numpy().astype(np.float32, copy=False).reshape(sub.height, len(columns))

    def _encode(self, sub: pl.DataFrame, run: pl.Series, only: list[str] | None = None) -> pl.DataFrame:
        state = self.state
        want = None if only is None else set(only)
        y = ((pl.col("target") - self._centre.gather(run)) / self._scale.gather(run)).cast(pl.Float32)
        if self.kept_unknown:  # a series without a scaler reads 0, as padding does, not NaN: no window reads
            y = y.fill_null(0.0)  # its rows, but they sit in the stacked arrays beside other series' rows
        exprs = [y.alias("y")]
        for name in [*state.past_covariates, *state.future_covariates]:
            if name in state.categories:
                exprs += [(pl.col(name) == v).fill_null(False).cast(pl.Float32).alias(f"cat__{name}={v}")
                          for v in state.categories[name]]
            else:
                c, s = state.numeric_stats[name]
                exprs.append(((pl.col(name) - c) / s).fill_null(0.0).cast(pl.Float32).alias(f"num__{name}"))
        pca = bool(state.pca) and (want is None or any(c.startswith("pca__") for c in want))
        if want is not None:  # only what was asked for (and PCA's inputs when it was asked for)
            keep = want | (set(state.pca["inputs"]) if pca else set())
            exprs = [e for e in exprs if e.meta.output_name() in keep]
        local = self._local()
        for part in state.calendar:  # a part takes `period` values: look its sine and cosine up, one per row
            if want is not None and not {f"cal__{part}_sin", f"cal__{part}_cos"} & want:
                continue
            at, table = self._part_codes(sub, part, local), calendar_table(part)
            exprs += [pl.lit(pl.Series(table[:, 0])).gather(at).alias(f"cal__{part}_sin"),
                      pl.lit(pl.Series(table[:, 1])).gather(at).alias(f"cal__{part}_cos")]
        out = sub.select(exprs)
        if pca:
            x = out.select(state.pca["inputs"]).to_numpy().astype(np.float64) - np.asarray(state.pca["mean"])
            z = x @ np.asarray(state.pca["components"]).T
            out = out.with_columns(pl.Series(f"pca__{i}", z[:, i], dtype=pl.Float32) for i in range(z.shape[1]))
        return out if only is None else out.select(only)

    def calendar_codes(self, lo: int, hi: int) -> list[pl.Series]:
        """Each calendar part's value (hour, weekday, month, day of year: 0 .. period-1) on rows lo..hi-1, the
        codes ``calendar_table`` turns into the part's sine and cosine: ``make_windows`` keeps these
        (2 bytes a row a part) instead of the two float32 channels."""
        sub, local = self.frame.slice(lo, hi - lo), self._local()
        return [self._part_codes(sub, part, local) for part in self.state.calendar]

    def _local(self) -> pl.Expr:
        local = pl.col("timestamp")
        if self.state.calendar and self.state.timezone != "UTC":  # naive UTC stamps, read on the local clock (DST)
            local = local.dt.replace_time_zone("UTC").dt.convert_time_zone(self.state.timezone)
        return local

    def _part_codes(self, sub: pl.DataFrame, part: str, local: pl.Expr) -> pl.Series:
        if self._utc and part in _UTC_PERIODS:
            return _UTC_PERIODS[part][0](sub["timestamp"])  # integer arithmetic on the µs
        return sub.select(_PERIODS[part][0](local).cast(pl.Int16)).to_series()

    def lag(self, y: np.ndarray, n: int, lo: int, hi: int) -> np.ndarray:
        """Rows lo..hi-1 of the seasonal lag ``n`` of the scaled target ``y`` (all rows): the value ``n`` rows
        back in the same series (on the regular grid, ``n`` steps back), 0 before the series' first row."""
        src = np.arange(lo - n, hi - n)
        v = np.where(src >= self._firsts[self._run[lo:hi]], y[np.maximum(src, 0)], 0.0).astype(np.float32)
        v[np.isnan(v)] = 0.0  # a missing target reads as 0 in its lags, as before its series starts
        return v


@on_small_pages
def transform_features(clean: pl.DataFrame, state: FeatureState) -> tuple[pl.DataFrame, list[str]]:
    """Add the encoded model inputs (``y`` = scaled target) as columns. Unknown series are dropped and
    returned. Rows keep their order (sorted by series then time when there are seasonal lags).
    (``make_windows`` takes a ``FeatureEncoder`` instead and writes the same values straight into its
    stacked arrays.)"""
    enc = FeatureEncoder(clean, state, in_series_order=False)
    frame = enc.frame.with_columns(enc.block(0, enc.height).get_columns())  # replacing same-named columns
    if enc.lag_columns:
        y = frame["y"].to_numpy()
        frame = frame.with_columns(pl.Series(name, enc.lag(y, n, 0, enc.height), dtype=pl.Float32)
                                   for name, n in enc.lag_columns.items())
    return frame, enc.unknown


def _ids(series_ids) -> pl.Series:  # noqa: ANN001 - a Series, array or list of ids
    if isinstance(series_ids, pl.Series):
        return series_ids.cast(pl.String)
    a = np.asarray(series_ids)
    return pl.Series(a.astype(str) if a.size else [], dtype=pl.String)


def _scalers_of(ids: pl.Series, state: FeatureState) -> pl.DataFrame:
    """(series_id, center, scale) for each of ``ids``, in order: one join with the state's ``stats_frame``
    (null where an id has no scaler)."""
    return ids.cast(pl.String).alias("series_id").to_frame().join(state.stats_frame(), on="series_id", how="left",
                                                                   maintain_order="left")


def _row_stats(series_ids, state: FeatureState):  # noqa: ANN001, ANN202 - numpy arrays
    """(center, scale) columns for rows labelled ``series_ids`` (``_scalers_of``). A KeyError names an id with
    no scaler."""
    rows = _scalers_of(_ids(series_ids), state)
    if rows["center"].null_count():
        raise KeyError(rows.filter(pl.col("center").is_null())["series_id"][0])
    return rows["center"].to_numpy()[:, None], rows["scale"].to_numpy()[:, None]


def inverse_scale(values, series_ids, state: FeatureState):  # noqa: ANN001 - numpy arrays
    """Undo the target scaling for rows of ``values`` belonging to ``series_ids``."""
    c, s = _row_stats(series_ids, state)
    return values * s + c


def scale_values(values, series_ids, state: FeatureState):  # noqa: ANN001 - numpy arrays
    """Apply the target scaling (the inverse of ``inverse_scale``) to rows of ``values``."""
    c, s = _row_stats(series_ids, state)
    return (values - c) / s
