"""Diagnostics as PNG bytes for the model bundle: learning curves and forecast-vs-actual."""

from __future__ import annotations

import io

import numpy as np
import polars as pl

from nightcast.tasks.data.features import FeatureState, inverse_scale
from nightcast.tasks.forecast.intervals import bounds
from nightcast.tasks.data.window import WindowIndex


def _png(fig) -> bytes:  # noqa: ANN001 - a matplotlib Figure
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display, ever
    import matplotlib.pyplot as plt

    return plt


def learning_curve_png(history: pl.DataFrame) -> bytes:
    """Training and validation loss per epoch."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for col, label in (("train_loss", "training"), ("val_loss", "validation")):
        if col in history.columns:
            ax.plot(history["epoch"], history[col], marker="o", label=label)
    best = history["val_loss"].arg_min() if "val_loss" in history.columns else None
    if best is not None:
        ax.axvline(history["epoch"][best], color="grey", linestyle=":", label="best epoch (kept)")
    ax.set(xlabel="epoch", ylabel="loss (scaled target)", title="Learning curve")
    ax.legend()
    return _png(fig)


def forecast_vs_actual_png(index: WindowIndex, state: FeatureState, scaled_preds: np.ndarray, starts: np.ndarray,
                           half_widths: list[float] | None = None, n_series: int = 4) -> bytes:
    """The last test window of up to ``n_series`` series: history, actuals, forecast and interval."""
    plt = _pyplot()
    codes = index.series[index.origin(starts)]
    # windows are in time order within a series: the last window of the first n_series series
    uniq, rev_first = np.unique(codes[::-1], return_index=True)
    last = {int(c): len(codes) - 1 - int(i) for c, i in zip(uniq[:n_series], rev_first[:n_series])}
    chosen = sorted(last)
    fig, axes = plt.subplots(len(chosen), 1, figsize=(8, 2.6 * len(chosen)), squeeze=False)
    for ax, code in zip(axes[:, 0], chosen):
        i = last[code]
        sid = index.series_ids[code]
        s = starts[i]
        hist = np.arange(max(s, index.offsets[code]), s + index.lookback)  # padded windows: real steps only
        fut = index.target_index(np.array([s]))[0]
        pred = inverse_scale(scaled_preds[i : i + 1].astype(np.float64), [sid], state)[0]
        ax.plot(index.timestamps[hist], index.target[hist], color="black", label="history")
        ax.plot(index.timestamps[fut], index.target[fut], color="black", linestyle="--", label="actual")
        ax.plot(index.timestamps[fut], pred, color="tab:blue", label="forecast")
        if half_widths:
            lo, hi = bounds(scaled_preds[i : i + 1], half_widths, [sid], state)
            ax.fill_between(index.timestamps[fut], lo[0], hi[0], color="tab:blue", alpha=0.2, label="interval")
        ax.set_title(sid, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7, loc="upper left")
    return _png(fig)
