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
    splits: dict[str, np.ndarray]  # split name -> window starts (int64)
    short_series: list[str]

    def origin(self, starts: np.ndarray) -> np.ndarray:
        """Index of the last input step of each window."""
        return starts + self.lookback - 1

    def series_of(self, starts: np.ndarray) -> list[str]:
        """The series id of each window."""
        return [self.series_ids[c] for c in self.series[self.origin(starts)]]

    def target_index(self, starts: np.ndarray) -> np.ndarray:
        """(n, H) indices of each window's target steps."""
        return starts[:, None] + self.lookback + np.arange(self.horizon)


def split_times(clean: pl.DataFrame, val_fraction: float, test_fraction: float,
                horizon: int) -> tuple[dt.datetime, dt.datetime]:
    """Global cut points: train ≤ train_end < validation ≤ val_end < test."""
    stamps = clean["timestamp"].unique().sort()
    n = stamps.len()
    n_test, n_val = max(int(n * test_fraction), horizon), max(int(n * val_fraction), horizon)
    if n - n_test - n_val < horizon + 1:
        raise WindowError(f"only {n} time steps: too few for train/validation/test spans of at least "
                          f"horizon={horizon} steps each")
    return stamps[n - n_test - n_val - 1], stamps[n - n_test - 1]


def make_windows(frame: pl.DataFrame, past_columns: list[str], future_columns: list[str],
                 lookback: int, horizon: int, train_end: dt.datetime | None = None,
                 val_end: dt.datetime | None = None, stride: int = 1) -> WindowIndex:
    """Index every valid window and assign it to train / val / test by its target times.

    A window is valid when none of its steps lies in a long gap. Train windows
    end by ``train_end``; validation targets lie in (train_end, val_end];
    test targets after ``val_end``. Without cut points everything is "all".
    """
    frame = frame.sort("series_id", "timestamp")
    ids, counts = np.unique(frame["series_id"].to_numpy(), return_counts=True)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    ts = frame["timestamp"].to_numpy()
    gap = frame["in_long_gap"].to_numpy() if "in_long_gap" in frame.columns else np.zeros(frame.height, bool)
    gap_cum = np.concatenate([[0], np.cumsum(gap)])
    span = lookback + horizon
    starts_all, short = [], []
    for i, sid in enumerate(ids):
        a, b = offsets[i], offsets[i + 1]
        if b - a < span:
            short.append(str(sid))
            continue
        s = np.arange(a, b - span + 1)
        starts_all.append(s[gap_cum[s + span] - gap_cum[s] == 0])
    starts = np.concatenate(starts_all) if starts_all else np.empty(0, np.int64)
    splits: dict[str, np.ndarray]
    if train_end is None:
        splits = {"all": starts}
    else:
        first_t, last_t = ts[starts + lookback], ts[starts + span - 1]
        te, ve = np.datetime64(train_end, "us"), np.datetime64(val_end, "us")
        train = starts[last_t <= te]
        train = train[(train - offsets[np.searchsorted(offsets, train, "right") - 1]) % stride == 0]
        splits = {"train": train,
                  "val": starts[(first_t > te) & (last_t <= ve)],
                  "test": starts[first_t > ve]}
    codes = np.repeat(np.arange(len(ids), dtype=np.int32), counts)
    return WindowIndex(
        past=np.require(frame.select(past_columns).to_numpy(), np.float32, ["C", "W"]),
        future=np.require(frame.select(future_columns).to_numpy(), np.float32, ["C", "W"])
        if future_columns else np.zeros((frame.height, 0), np.float32),
        target=frame["target"].to_numpy().astype(np.float64),
        observed=frame["observed"].to_numpy() if "observed" in frame.columns else np.ones(frame.height, bool),
        series=codes, timestamps=ts, series_ids=[str(s) for s in ids], offsets=offsets,
        lookback=lookback, horizon=horizon, splits=splits, short_series=short,
    )


class WindowDataset(Dataset):
    """Batches gathered straight from the stacked arrays (no per-window copies kept)."""

    def __init__(self, index: WindowIndex, starts: np.ndarray) -> None:
        self.past = torch.from_numpy(index.past)
        self.future = torch.from_numpy(index.future)
        self.y = torch.from_numpy(index.past[:, 0].copy())  # scaled target
        self.starts = torch.from_numpy(np.asarray(starts, dtype=np.int64))
        self.lookback, self.horizon = index.lookback, index.horizon

    def __len__(self) -> int:
        return len(self.starts)

    def __getitems__(self, items: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = self.starts[items]
        inp = s[:, None] + torch.arange(self.lookback)  # (B, L)
        out = s[:, None] + self.lookback + torch.arange(self.horizon)  # (B, H)
        return self.past[inp], self.future[out], self.y[out]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        past, future, y = self.__getitems__([i])
        return past[0], future[0], y[0]


def collate_batch(batch):  # noqa: ANN001, ANN201 - __getitems__ already returns a batch
    return batch
