"""Lookback/horizon windows as indices into contiguous per-series arrays.

All series are stacked into one array per feature group; a window is just
the index of its first input step. Memory is O(steps + windows), never
O(windows × lookback).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
from torch.utils.data import Dataset

from nightcast.tasks.data.clean import by_series
from nightcast.tasks.data.features import FeatureEncoder, calendar_columns, calendar_table
from nightcast.tasks.data.pages import long_lived_arrays, short_lived_arrays


class WindowError(ValueError):
    """The data cannot give the windows the configuration asks for."""


@dataclass
class WindowIndex:
    past: np.ndarray  # (N, F_past) float32: scaled target first, then encoded covariates
    future: np.ndarray  # (N, F_future) float32: known-future covariates
    target: np.ndarray  # (N,) float64: the clean target, unscaled
    observed: np.ndarray  # (N,) bool: a real observation (not filled)
    series: np.ndarray  # (N,) int32 code into series_ids
    timestamps: np.ndarray  # (N,) datetime64[us]
    series_ids: list[str]
    offsets: np.ndarray  # (S + 1,) where each series starts and ends
    lookback: int
    horizon: int
    splits: dict[str, np.ndarray]  # split name -> window starts (int64; before a series' start when padded)
    short_series: list[str]
    pad: bool = False  # windows may start before their series: the dataset masks the padding
    min_input: int | None = None  # real steps a window needs (lookback when not padded)
    season: int = 1  # seasonal period in steps (the network's seasonal skip)
    past_columns: list[str] | None = None  # names of the past channels (target first)
    truth: np.ndarray | None = None  # (N,) float64: the raw observed value, NaN where none (filled steps)
    static: np.ndarray | None = None  # (S, F_static) float32: past channels that hold one value per series
    static_at: list[int] | None = None  # their positions among the past channels; ``past`` holds the others
    codes: np.ndarray | None = None  # (N, parts) int16: each calendar part's value (hour, weekday, ...) per row
    code_tables: list[np.ndarray] | None = None  # per part, (period, 2) float32: its sine and cosine by value
    code_past_at: list[int] | None = None  # per part, where its (sine, cosine) pair sits among the past channels
    code_future_at: list[int] | None = None  # ... and among the known-future channels
    unscaled: list[str] | None = None  # series held for their rows only (no scaler: no window), in ``series_ids``

    def __post_init__(self) -> None:
        if self.min_input is None:
            self.min_input = self.lookback
        if self.truth is None:
            self.truth = np.where(self.observed, self.target, np.nan)

    @property
    def n_past(self) -> int:
        """Past channels a window has (``past``'s, the per-series ``static`` ones and the coded calendar's)."""
        return self.past.shape[1] + len(self.static_at or []) + 2 * len(self.code_past_at or [])

    @property
    def n_future(self) -> int:
        """Known-future channels a window has (``future``'s and the coded calendar's)."""
        return self.future.shape[1] + 2 * len(self.code_future_at or [])

    def origin(self, starts: np.ndarray) -> np.ndarray:
        """Index of the last input step of each window."""
        return starts + self.lookback - 1

    def series_of(self, starts: np.ndarray) -> np.ndarray:
        """The series id of each window (an array of str)."""
        return np.asarray(self.series_ids, dtype=str)[self.series[self.origin(starts)]]

    def target_index(self, starts: np.ndarray) -> np.ndarray:
        """(n, H) indices of each window's target steps."""
        return starts[:, None] + self.lookback + np.arange(self.horizon)


def trailing_ends(n: int, sizes: list[int]) -> list[int]:
    """Positions (into ``n`` sorted time steps) of the last step before each of the trailing blocks of
    ``sizes`` steps (oldest block first), then of the newest step: the one rule every split and every
    rolling-origin fold is cut by."""
    left = np.cumsum([0, *sizes[::-1]])[::-1]  # steps from each block's start to the end
    return [int(n - 1 - k) for k in left]


def split_times(clean: pl.DataFrame, val_fraction: float, test_fraction: float,
                horizon: int) -> tuple[dt.datetime, dt.datetime]:
    """Global cut points: train ≤ train_end < validation ≤ val_end < test."""
    stamps = clean["timestamp"].unique().sort()
    n = stamps.len()
    n_test, n_val = max(int(n * test_fraction), horizon), max(int(n * val_fraction), horizon)
    if n - n_test - n_val < horizon + 1:
        raise WindowError(f"only {n} time steps: too few for train/validation/test spans of at least "
                          f"horizon={horizon} steps each")
    train_end, val_end, _ = trailing_ends(n, [n_val, n_test])
    return stamps[train_end], stamps[val_end]


def auto_lookback(season: int, horizon: int) -> int:
    """Default lookback: two horizons and at least one season (the seasonal skip reads it); three
    seasons when that stays within 48 steps (monthly: 36). An LSTM step costs the same whatever
    it reads, so long seasons (weekly data: 52) get one season; seasonal lags reach further back.
    """
    return int(max(2 * horizon, season, min(3 * season, 48)))


def min_history(lookback: int, season: int) -> int:
    """Real input steps a padded window needs: one season (a seasonal-naive base), at least 2."""
    return int(min(lookback, max(2, season)))


def make_windows(frame: pl.DataFrame | FeatureEncoder, past_columns: list[str], future_columns: list[str],
                 lookback: int, horizon: int, train_end: dt.datetime | None = None,
                 val_end: dt.datetime | None = None, stride: int = 1,
                 min_input: int | None = None, season: int = 1, compact: bool = True) -> WindowIndex:
    """Index every valid window and assign it to train / val / test by its target times.

    A window is identified by its start ``origin − lookback + 1``; with ``min_input`` below
    ``lookback`` a series needs only ``min_input`` real steps before the origin and the rest
    of the window is left padding (``WindowIndex.pad``: the dataset masks it). A window is
    valid when none of its real steps lies in a long gap. Train windows end by
    ``train_end``; validation targets lie in (train_end, val_end]; test targets after
    ``val_end``. Without cut points everything is "all". Vectorised over all series.

    ``frame`` holds the input columns, or is a ``FeatureEncoder`` over the clean frame: its encoded
    columns are then written straight into the stacked arrays a block of rows at a time, never held
    as frame columns too. When the future columns are the past columns' last ones (the calendar
    parts alone, the default), ``future`` is a view of those columns of ``past``. With an encoder, two
    kinds of channel are not stored per row: those that hold one value per series
    (``FeatureEncoder.static_columns``: a static covariate, one-hot or scaled) are kept once per series
    (``WindowIndex.static``), and each calendar part's sine and cosine as the part's value, 2 bytes a
    row (``WindowIndex.codes``, looked up in ``code_tables``). ``WindowDataset`` puts both in their
    place in every window it gathers: the same inputs, without their row-sized float copies
    (``compact=False`` keeps every channel per row).
    """
    with short_lived_arrays():  # the index's temporaries on reused heap; the stacked arrays their own mappings
        encoder = frame if isinstance(frame, FeatureEncoder) else None
        if encoder is not None and not encoder.in_series_order:
            raise ValueError("make_windows needs a FeatureEncoder whose rows are in series order "
                             "(built with in_series_order=True)")
        frame = encoder.frame if encoder is not None else by_series(frame)
        skip = encoder.unknown if encoder is not None and encoder.kept_unknown else None
        index = _index(frame, lookback, horizon, train_end, val_end, stride, min_input, skip,
                       encoder.runs if encoder is not None else None)
        compact = compact and encoder is not None
        fixed = set(encoder.static_columns()) & set(past_columns) if compact else set()
        static_at = [j for j, c in enumerate(past_columns) if c in fixed]
        parts = [p for p in encoder.state.calendar if calendar_columns([p])[0] in past_columns] if compact else []
        coded = set(calendar_columns(parts))
        per_row = [c for c in past_columns if c not in fixed | coded]
        fut_row = [c for c in future_columns if c not in coded]
        k = len(fut_row)
        shared = per_row[len(per_row) - k:] == fut_row
        lists = [per_row] if shared else [per_row, fut_row]
        with long_lived_arrays():  # only the arrays that outlive the call: their fill's temporaries stay on the heap
            arrays = [np.empty((frame.height, len(c)), np.float32) for c in lists]
            per_series = encoder.static_block([past_columns[j] for j in static_at]) if static_at else None
            codes = np.empty((frame.height, len(parts)), np.int16) if parts else None
        _fill_arrays(arrays, frame, lists, encoder)
        if parts:
            _fill_codes(codes, encoder)
        past = arrays[0]
        future = past[:, len(per_row) - k:] if shared else arrays[1]  # the same values: a view, not a copy
        at = {c: j for j, c in enumerate(future_columns)}
    return WindowIndex(past=past, future=future, lookback=lookback, horizon=horizon, season=season,
                       past_columns=list(past_columns), static=per_series, static_at=static_at or None, codes=codes,
                       code_tables=[calendar_table(p) for p in parts] or None,
                       code_past_at=[past_columns.index(calendar_columns([p])[0]) for p in parts] or None,
                       code_future_at=[at.get(calendar_columns([p])[0], -1) for p in parts] or None,
                       unscaled=list(skip) if skip else None, **index)


def _index(frame: pl.DataFrame, lookback: int, horizon: int, train_end: dt.datetime | None,
           val_end: dt.datetime | None, stride: int, min_input: int | None, skip: list[str] | None = None,
           runs: pl.Series | None = None) -> dict:
    """Everything of a ``WindowIndex`` but the stacked feature arrays (``make_windows``). The series of
    ``skip`` keep their rows (and a place among ``series_ids``) but get no window. ``runs``: the ids' rle when
    the caller has it (a ``FeatureEncoder`` over ``frame``).

    Each series' origins are one run of rows, and so are its windows of each split: a split is the origins
    whose target times lie on one side of a cut, or between the two, and a series' times never go down
    (the frame is in series order: ``make_windows`` sorts it, the encoder requires it). So each split is built
    as one range per series from where the cuts fall in that series (``_first_after``), never as every
    origin with a mask and the target times of every window (three window-sized arrays, before)."""
    if runs is None:
        runs = frame["series_id"].rle()  # sorted: one run per series, in id order (no Python-object sort)
    ids, counts = runs.struct.field("value").to_numpy(), runs.struct.field("len").to_numpy().astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    codes = np.repeat(np.arange(len(ids), dtype=np.int32), counts)
    ts = frame["timestamp"].to_numpy()
    need = lookback if min_input is None else max(1, min(int(min_input), lookback))
    first = offsets[:-1] + need - 1  # each series' first origin: ``need`` steps of it up to there
    last = offsets[1:] - 1 - horizon  # its last: a full horizon after
    if skip:
        last[np.isin(ids, np.asarray(skip, dtype=ids.dtype))] = -1  # no origin at all
    gaps = (np.flatnonzero(frame["in_long_gap"].to_numpy())  # the rows in a long gap: read once for every split
            if "in_long_gap" in frame.columns and frame["in_long_gap"].any() else None)

    def split(lo: np.ndarray, hi: np.ndarray, step: int = 1) -> np.ndarray:
        """The window starts of origins lo, lo + step, ... up to hi in each series; none in a long gap."""
        origins = _ranges(lo, np.where(hi >= lo, (hi - lo) // step + 1, 0), step)
        if gaps is not None:  # no real step of a window in a long gap
            origins = _outside_long_gaps(gaps, codes, offsets, origins, lookback, horizon)
        origins -= lookback - 1  # in place: the origins are not used after
        return origins

    short = [str(s) for s in ids[counts < need + horizon]]
    splits: dict[str, np.ndarray]
    if train_end is None:
        splits = {"all": split(first, last)}
    elif stride <= 1 and len(ts) and train_end == val_end and np.datetime64(train_end, "us") >= ts.max():
        # a refit's cuts at the newest step: every window is a training window
        starts = split(first, last)
        splits = {"train": starts, "val": starts[:0], "test": starts[:0]}
    else:
        # each series' first row after each cut (its rows at or before a cut come first: its times never go down)
        after_te = _first_after(ts, offsets, np.datetime64(train_end, "us"))
        # every target at or before train_end (every stride-th origin of a series, from its first)
        train = split(first, np.minimum(last, after_te - 1 - horizon), max(1, stride))
        if val_end is None:  # no second cut: no window is after it, none between the two
            splits = {"train": train, "val": train[:0], "test": train[:0]}
        else:
            after_ve = _first_after(ts, offsets, np.datetime64(val_end, "us"))
            splits = {
                "train": train,
                # the first target after train_end, the last at or before val_end
                "val": split(np.maximum(first, after_te - 1), np.minimum(last, after_ve - 1 - horizon)),
                "test": split(np.maximum(first, after_ve - 1), last),  # the first target after val_end
            }
    return dict(
        target=np.asarray(frame["target"].to_numpy(), dtype=np.float64),  # no copy of a Float64 column
        observed=frame["observed"].to_numpy() if "observed" in frame.columns else np.ones(frame.height, bool),
        series=codes, timestamps=ts, series_ids=[str(s) for s in ids], offsets=offsets,
        splits=splits, short_series=short, pad=min_input is not None, min_input=need,
        truth=(frame["raw"].cast(pl.Float64).to_numpy() if "raw" in frame.columns else None),  # NaN: none (no copy)
    )


def _first_after(ts: np.ndarray, offsets: np.ndarray, cut: np.datetime64) -> np.ndarray:
    """Each series' first row with a time after ``cut`` (one past its last row when none): a binary search in
    every series at once, since a series' times never go down (log2 of the longest series' rows trips over
    arrays of one value per series, never a pass over every row). ``cut`` must be a time (NaT compares
    false: every series' first row)."""
    lo, hi = offsets[:-1].copy(), offsets[1:].copy()  # the answer lies in [lo, hi]
    while (open_ := lo < hi).any():
        mid = (lo + hi) // 2
        right = open_ & (ts[np.minimum(mid, len(ts) - 1)] <= cut)  # row mid is at or before the cut
        lo = np.where(right, mid + 1, lo)
        hi = np.where(open_ & ~right, mid, hi)
    return lo


def _ranges(lo: np.ndarray, n: np.ndarray, step: int = 1) -> np.ndarray:
    """lo[k], lo[k] + step, ..., n[k] values of each, concatenated (int64): one running sum of steps that are
    ``step`` inside a range and jump where the next range starts (memory: the result alone)."""
    has = np.flatnonzero(n > 0)
    lo, n = lo[has], n[has]
    total = int(n.sum())
    out = np.full(total, step, np.int64)
    if total:
        out[(np.cumsum(n) - n)[1:]] = lo[1:] - (lo[:-1] + step * (n[:-1] - 1))
        out[0] = lo[0]
        np.cumsum(out, out=out)
    return out


def _outside_long_gaps(gap_rows: np.ndarray, codes: np.ndarray, offsets: np.ndarray, origins: np.ndarray,
                       lookback: int, horizon: int) -> np.ndarray:
    """The origins (sorted) whose window has no real step in a long gap (``gap_rows``: the rows in one, sorted).

    A window's real steps lie inside its own series, so only the origins of series with a long gap are
    looked at (usually a few: 1 of 10,000 series in the scale bench's panel), found by a binary search
    (a series' origins are one run of the sorted origins), and the gap rows before a step are counted by a
    binary search among the gap rows (no cumulative sum over every row)."""
    hit = np.unique(codes[gap_rows])  # the series with a long gap
    lo, hi = np.searchsorted(origins, offsets[hit]), np.searchsorted(origins, offsets[hit + 1])
    n = hi - lo
    at = np.arange(int(n.sum()), dtype=np.int64)  # those series' origins, as positions into ``origins``
    at += np.repeat(lo - (np.cumsum(n) - n), n)
    o = origins[at]
    real_start = np.maximum(o - lookback + 1, offsets[codes[o]])  # a window's first real step: its series' start at the earliest
    bad = np.searchsorted(gap_rows, o + horizon + 1) != np.searchsorted(gap_rows, real_start)
    if not bad.any():
        return origins
    keep = np.ones(len(origins), bool)
    keep[at[bad]] = False
    return origins[keep]


ENCODE_ROWS = 1 << 18
"""Rows a ``FeatureEncoder`` encodes at a time for ``make_windows`` (13 float32 inputs: 14 MB a block)."""
LAG_ROWS = 1 << 20
"""Rows of a seasonal-lag channel filled at a time (8 MB temporaries)."""


def _stack(frame: pl.DataFrame, columns: list[str], encoder: FeatureEncoder | None = None,
           block_values: int = 1 << 19) -> np.ndarray:
    """(rows, columns) float32, C order: ``_fill_arrays`` into one new array."""
    out = np.empty((frame.height, len(columns)), np.float32)
    _fill_arrays([out], frame, [list(columns)], encoder, block_values)
    return out


def _fill_arrays(arrays: list[np.ndarray], frame: pl.DataFrame, lists: list[list[str]],
                 encoder: FeatureEncoder | None = None, block_values: int = 1 << 19) -> None:
    """Fill each (rows, columns) float32 array with its columns: the frame's own, or with ``encoder`` its
    encoded columns, a block of ``ENCODE_ROWS`` rows encoded once for every array and written at a time,
    then the seasonal lags from the written target. Memory: the arrays and one block."""
    if encoder is None:
        for out, columns in zip(arrays, lists):
            _fill(out, 0, frame, list(range(len(columns))), columns, block_values)
        return
    own = [[j for j, c in enumerate(columns) if c not in encoder.lag_columns] for columns in lists]
    needed = list(dict.fromkeys(columns[j] for columns, js in zip(lists, own) for j in js))  # nothing else encoded
    if any(own):
        for lo in range(0, frame.height, ENCODE_ROWS):  # height / 2^18 trips
            hi = min(lo + ENCODE_ROWS, frame.height)
            block = encoder.block(lo, hi, needed)
            for out, columns, js in zip(arrays, lists, own):
                if js:
                    names = [columns[j] for j in js]
                    _fill(out, lo, block.select(names), js, names, block_values)
    for out, columns in zip(arrays, lists):
        lags = {j: encoder.lag_columns[c] for j, c in enumerate(columns) if c in encoder.lag_columns}
        if not lags:
            continue
        y = out[:, columns.index("y")]
        for lo in range(0, frame.height, LAG_ROWS):  # temporaries of a million rows
            hi = min(lo + LAG_ROWS, frame.height)
            for j, n in lags.items():
                out[lo:hi, j] = encoder.lag(y, n, lo, hi)


def _fill_codes(codes: np.ndarray, encoder: FeatureEncoder) -> None:
    """Each calendar part's value on every row of ``encoder.frame``, ``ENCODE_ROWS`` rows at a time."""
    for lo in range(0, encoder.height, ENCODE_ROWS):  # height / 2^18 trips
        hi = min(lo + ENCODE_ROWS, encoder.height)
        for j, part in enumerate(encoder.calendar_codes(lo, hi)):  # a handful of parts
            codes[lo:hi, j] = part.to_numpy()


def _fill(out: np.ndarray, row0: int, frame: pl.DataFrame, targets: list[int], names: list[str],
          block_values: int = 1 << 19) -> None:
    """Write the columns ``names`` of ``frame`` into ``out[row0:row0 + height, targets]`` as float32.

    Float32 columns of one chunk without nulls (the encoded features) are read in place and written a
    block of rows at a time (a (columns, block) buffer transposed while it is in cache: 2.3x faster than
    writing each column down the strided array); any other column is cast alone. Memory: one block and
    at most one cast column."""
    h = frame.height
    direct = [i for i, name in enumerate(names)  # read in place: one float32 chunk without nulls
              if frame[name].dtype == pl.Float32 and not frame[name].null_count() and frame[name].n_chunks() == 1]
    for i, name in enumerate(names):  # a handful of feature columns, never rows or series
        if i not in direct:
            out[row0:row0 + h, targets[i]] = frame[name].cast(pl.Float32).to_numpy()
    if not direct:
        return
    arrays = [frame[names[i]].to_numpy() for i in direct]  # views of the frame's own buffers
    cols = [targets[i] for i in direct]
    span = slice(cols[0], cols[0] + len(cols)) if cols == list(range(cols[0], cols[0] + len(cols))) else cols
    rows = max(1, block_values // len(direct))
    buf = np.empty((len(direct), min(rows, h)), np.float32)
    for lo in range(0, h, rows):  # blocks of rows: height * columns / 2^19 trips
        hi = min(lo + rows, h)
        for i, a in enumerate(arrays):
            buf[i, : hi - lo] = a[lo:hi]
        out[row0 + lo:row0 + hi, span] = buf[:, : hi - lo].T


def observed_origins(index: WindowIndex, starts: np.ndarray) -> np.ndarray:
    """The windows whose origin is a raw observation: a filled or interpolated step is never the origin
    of an evaluation window (its forecast would start from a value nobody saw)."""
    return starts[np.isfinite(index.truth[index.origin(starts)])] if len(starts) else starts


def space_windows(index: WindowIndex, starts: np.ndarray, k: int) -> np.ndarray:
    """Every ``k``-th window of each series counted back from its newest: the newest origin is kept,
    neighbours that repeat most of each other's targets are not (starts sorted by series, then time)."""
    if k <= 1 or len(starts) == 0:
        return starts
    codes = index.series[index.origin(starts)]
    last = np.r_[np.flatnonzero(np.diff(codes)), len(starts) - 1]  # each series' newest window
    back = np.repeat(last, np.diff(np.r_[-1, last])) - np.arange(len(starts))
    return starts[back % k == 0]


def thin_windows(index: WindowIndex, starts: np.ndarray, cap: int) -> np.ndarray:
    """At most ``cap`` evaluation windows, whatever the catalogue size.

    Every k-th origin of each series counted back from its newest (``space_windows``), with the
    smallest k that fits the cap: overlapping windows repeat most of their targets, and every
    series keeps its newest window. When the series alone outnumber the cap, every m-th series
    (in catalogue order) keeps its newest window, so the sample still spans the catalogue.
    """
    if len(starts) <= cap:
        return starts
    codes = index.series[index.origin(starts)]
    counts = np.bincount(codes)
    counts = counts[counts > 0]
    k = -(-len(starts) // cap)
    while k < counts.max() and int((-(-counts // k)).sum()) > cap:  # at most log2(windows per series) trips
        k *= 2
    kept = space_windows(index, starts, k)  # ceil(count / k) per series: one each once k reaches the longest
    if len(kept) > cap:  # more series than the cap: one window each from every m-th series
        series = index.series[index.origin(kept)]
        rank = np.cumsum(np.r_[True, np.diff(series) != 0]) - 1
        kept = kept[rank % -(-len(kept) // cap) == 0]
    return kept


class WindowDataset(Dataset):
    """Batches gathered straight from the stacked arrays (no per-window copies kept).

    With ``index.pad`` (or ``mask=True``) the inputs get a last channel that is 1 on real
    steps and 0 on left padding; padded steps read as 0. Channels the index keeps per series
    (``static``) or as calendar values (``codes``) are put in their place in each window.
    """

    def __init__(self, index: WindowIndex, starts: np.ndarray, mask: bool | None = None) -> None:
        self.past = torch.from_numpy(index.past)
        self.future = torch.from_numpy(index.future)
        self.y = torch.from_numpy(index.past[:, 0].copy())  # scaled target
        self.starts = torch.from_numpy(np.asarray(starts, dtype=np.int64))
        self.lookback, self.horizon = index.lookback, index.horizon
        self.mask = index.pad if mask is None else mask
        self.series = torch.from_numpy(index.series)
        if self.mask:
            self.first = torch.from_numpy(index.offsets[:-1])
        self.static = None if index.static is None else torch.from_numpy(index.static)
        self.codes = None if index.codes is None else torch.from_numpy(index.codes)
        self.tables = [torch.from_numpy(t) for t in index.code_tables or []]
        self.past_runs = _runs(index.n_past, index.static_at or [], index.code_past_at or [])
        self.future_runs = _runs(index.n_future, [], index.code_future_at or [])
        self.plain = self.static is None and self.codes is None  # every channel per row: a gather

    def __len__(self) -> int:
        return len(self.starts)

    def __getitems__(self, items: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = self.starts[items]
        inp = s[:, None] + torch.arange(self.lookback)  # (B, L)
        out = s[:, None] + self.lookback + torch.arange(self.horizon)  # (B, H)
        future = self._channels(self.future_runs, self.future, out, None)
        if not self.mask:
            return self._channels(self.past_runs, self.past, inp, s), future, self.y[out]
        first = self.first[self.series[s + self.lookback - 1].long()]  # (B,) each window's series start
        real = inp >= first[:, None]  # (B, L)
        # padding reads 0 whatever the rows before the series hold (a where, not a product: inf * 0 is NaN)
        past = torch.where(real[:, :, None], self._channels(self.past_runs, self.past, inp.clamp_min(0), s), 0.0)
        past = torch.cat([past, real[:, :, None].to(past.dtype)], dim=2)  # (B, L, F_past + 1)
        return past, future, self.y[out]

    def _channels(self, runs: list[tuple[str, int, int]], rows: torch.Tensor, at: torch.Tensor,
                  s: torch.Tensor | None) -> torch.Tensor:
        """(B, steps, channels) of the windows at row indices ``at`` (B, steps): the per-row channels gathered,
        the per-series ones put on every step, each calendar part looked up from its value, in channel order
        (with every channel per row, ``plain``: the gather alone)."""
        if self.plain:
            return rows[at]
        got = rows[at] if any(kind == "row" for kind, _, _ in runs) else None
        fixed = codes = None
        pieces = []
        for kind, a, b in runs:  # a handful of runs of channels
            if kind == "row":
                pieces.append(got[:, :, a:b])
            elif kind == "static":
                if fixed is None:
                    fixed = self.static[self.series[s + self.lookback - 1].long()][:, None, :].expand(-1, at.shape[1], -1)
                pieces.append(fixed[:, :, a:b])
            else:  # a calendar part: its (sine, cosine) by its value on each step
                if codes is None:
                    codes = self.codes[at].long()
                pieces.append(self.tables[a][codes[:, :, a]])
        if not pieces:
            return rows[at]
        return torch.cat(pieces, dim=2) if len(pieces) > 1 else pieces[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        past, future, y = self.__getitems__([i])
        return past[0], future[0], y[0]


def _runs(n: int, static_at: list[int], code_at: list[int]) -> list[tuple[str, int, int]]:
    """A window's ``n`` channels in order as runs: ("row", a, b) columns a..b-1 of the per-row array,
    ("static", a, b) of the per-series one, ("code", part, part + 1) a calendar part's (sine, cosine) pair."""
    kind = ["row"] * n
    for j in static_at:
        kind[j] = "static"
    pair = {j: p for p, j in enumerate(code_at) if j >= 0}
    for j in pair:
        kind[j] = kind[j + 1] = "code"
    runs: list[tuple[str, int, int]] = []
    took = {"row": 0, "static": 0}
    j = 0
    while j < n:
        if kind[j] == "code":
            runs.append(("code", pair[j], pair[j] + 1))
            j += 2
            continue
        if runs and runs[-1][0] == kind[j]:
            runs[-1] = (kind[j], runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((kind[j], took[kind[j]], took[kind[j]] + 1))
        took[kind[j]] += 1
        j += 1
    return runs


def collate_batch(batch):  # noqa: ANN001, ANN201 - __getitems__ already returns a batch
    return batch
