"""The evaluation-window cap holds whatever the catalogue size (``nightcast.tasks.data.window.thin_windows``)."""

import numpy as np
import pytest

from nightcast.tasks.data.window import WindowIndex, thin_windows


def _index(n_series: int, length: int, lookback: int = 4, horizon: int = 3) -> tuple[WindowIndex, np.ndarray]:
    """A stacked index of equal-length series and every window start of each, sorted by series then time."""
    n = n_series * length
    offsets = np.arange(n_series + 1, dtype=np.int64) * length
    index = WindowIndex(past=np.zeros((n, 1), np.float32), future=np.zeros((n, 0), np.float32),
                        target=np.zeros(n), observed=np.ones(n, bool),
                        series=np.repeat(np.arange(n_series, dtype=np.int32), length),
                        timestamps=np.zeros(n, "datetime64[us]"), series_ids=[f"s{i}" for i in range(n_series)],
                        offsets=offsets, lookback=lookback, horizon=horizon, splits={}, short_series=[])
    per = np.arange(length - lookback - horizon + 1)
    return index, (offsets[:-1, None] + per[None, :]).ravel()


@pytest.mark.parametrize(("n_series", "length"), [(50, 2_000), (200, 500), (5_000, 40)])
def test_the_cap_holds_at_ten_times_the_cap_and_every_series_keeps_its_newest_window(n_series, length):
    index, starts = _index(n_series, length)
    cap = len(starts) // 10
    kept = thin_windows(index, starts, cap)
    assert len(kept) <= cap
    assert set(kept) <= set(starts) and np.all(np.diff(kept) > 0)  # a subset, order kept
    newest = starts.reshape(n_series, -1)[:, -1]
    assert set(newest) <= set(kept)
    assert len(kept) >= cap // 4  # thinned to the cap, not far below it


def test_more_series_than_the_cap_keeps_one_window_of_series_spread_over_the_catalogue():
    index, starts = _index(3_000, 30)
    kept = thin_windows(index, starts, 1_000)
    series = index.series[index.origin(kept)]
    assert len(kept) <= 1_000 and len(np.unique(series)) == len(kept)  # one window each
    assert series.min() < 10 and series.max() > 2_990  # from the start to the end of the catalogue
    newest = starts.reshape(3_000, -1)[:, -1]
    assert set(kept) <= set(newest)


def test_under_the_cap_nothing_is_dropped():
    index, starts = _index(10, 50)
    assert np.array_equal(thin_windows(index, starts, len(starts)), starts)
