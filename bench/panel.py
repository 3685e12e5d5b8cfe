"""A seeded, ragged hourly panel: what a real catalogue looks like, at any size.

    python bench/panel.py N T OUT.parquet [--seed S]     # or OUT.csv

``N`` series × up to ``T`` hourly steps in long format (``series_id``, ``timestamp``,
``target``, ``segment``): level, trend, daily and weekly seasonality, noise, and the
defects a catalogue has (shares are of series unless said otherwise; each is drawn
independently, so a series can have several):

- ~2 % of targets blank (null), ~0.1 % outliers (×3 to ×6 the value);
- ~2 % of series start with a run of blanks (1 to 48 steps);
- ~10 % start late (up to T/2 steps in), ~5 % end early (up to T/4 steps before the end);
- ~1 % sit off the hourly phase (every timestamp at :30);
- ~2 % are short: only their last 200 to 500 steps exist (new products);
- ``segment``: one categorical covariate (a, b or c, fixed per series).

Everything is vectorised numpy over blocks of series (temporaries are O(block × T), not
O(N × T)); the same seed and size give the same frame.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import polars as pl

START = np.datetime64("2024-01-01T00:00", "us")
SEGMENTS = ("a", "b", "c")
_BLOCK = 500  # series generated at a time


def _series_params(n: int, t: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-series shape and defects, drawn once for the whole panel."""
    first = np.zeros(n, np.int64)  # first existing step
    stop = np.full(n, t, np.int64)  # one past the last existing step
    late = rng.random(n) < 0.10
    first[late] = rng.integers(1, max(2, t // 2), late.sum())
    early = rng.random(n) < 0.05
    stop[early] = t - rng.integers(1, max(2, t // 4), early.sum())
    short = rng.random(n) < 0.02
    first[short] = np.maximum(0, t - rng.integers(200, 501, short.sum()))
    stop[short] = t
    first = np.minimum(first, t - 1)
    stop = np.maximum(stop, first + 1)  # every series keeps at least one row
    lead = np.where(rng.random(n) < 0.02, rng.integers(1, 49, n), 0)  # leading blank steps
    return {
        "level": rng.uniform(50, 500, n), "amp_d": rng.uniform(0.05, 0.3, n), "amp_w": rng.uniform(0.0, 0.2, n),
        "phase": rng.uniform(0, 2 * np.pi, n), "trend": rng.normal(0, 0.002, n), "noise": rng.uniform(0.02, 0.08, n),
        "first": first, "stop": stop, "lead": np.minimum(lead, stop - first),
        "off_phase": rng.random(n) < 0.01, "segment": rng.integers(0, len(SEGMENTS), n),
    }


def _block(p: dict[str, np.ndarray], lo: int, hi: int, t: int, rng: np.random.Generator) -> pl.DataFrame:
    """Series ``lo:hi`` as long rows (only the steps that exist)."""
    sl = slice(lo, hi)
    k = np.arange(t, dtype=np.float64)[None, :]
    level = p["level"][sl, None]
    y = (level * (1 + p["trend"][sl, None] * k / 24
                  + p["amp_d"][sl, None] * np.sin(2 * np.pi * k / 24 + p["phase"][sl, None])
                  + p["amp_w"][sl, None] * np.sin(2 * np.pi * k / 168))
         + rng.standard_normal((hi - lo, t)) * (p["noise"][sl, None] * level))
    spikes = rng.random((hi - lo, t)) < 0.001
    y[spikes] *= rng.uniform(3, 6, spikes.sum())
    y[rng.random((hi - lo, t)) < 0.02] = np.nan
    pos = k.astype(np.int64)
    first, stop = p["first"][sl, None], p["stop"][sl, None]
    y[pos < first + p["lead"][sl, None]] = np.nan  # leading blanks: the rows exist, the values do not
    exists = (pos >= first) & (pos < stop)
    counts = exists.sum(axis=1)
    step = np.arange(t).astype("timedelta64[h]").astype("timedelta64[us]")
    shift = np.where(p["off_phase"][sl], np.timedelta64(30, "m"), np.timedelta64(0, "m")).astype("timedelta64[us]")
    ts = START + step[None, :] + shift[:, None]
    ids = np.array([f"s{i:06d}" for i in range(lo, hi)])
    return pl.DataFrame({
        "series_id": np.repeat(ids, counts),
        "timestamp": ts[exists],
        "target": y[exists],
        "segment": np.repeat(np.array(SEGMENTS)[p["segment"][sl]], counts),
    }).with_columns(pl.col("target").fill_nan(None))


def make_panel(n_series: int, n_steps: int, seed: int = 0) -> pl.DataFrame:
    """The ragged hourly panel: ``series_id`` (str), ``timestamp`` (datetime[us]), ``target`` (f64), ``segment``."""
    if n_series < 1 or n_steps < 1:
        raise ValueError(f"need at least one series and one step, got {n_series} x {n_steps}")
    params = _series_params(n_series, n_steps, np.random.default_rng(seed))
    blocks = [_block(params, lo, min(lo + _BLOCK, n_series), n_steps, np.random.default_rng([seed, lo // _BLOCK]))
              for lo in range(0, n_series, _BLOCK)]
    return pl.concat(blocks, rechunk=False)  # one copy of the frame, not two


def stream_panel(n_series: int, n_steps: int, out: str | Path, seed: int = 0) -> int:
    """``make_panel`` written to Parquet a block of series at a time (memory: one block, whatever ``n_series``);
    the file's rows equal ``make_panel``'s. Returns the rows written."""
    import pyarrow.parquet as pq

    if n_series < 1 or n_steps < 1:
        raise ValueError(f"need at least one series and one step, got {n_series} x {n_steps}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    params = _series_params(n_series, n_steps, np.random.default_rng(seed))
    writer, rows = None, 0
    try:
        for lo in range(0, n_series, _BLOCK):
            table = _block(params, lo, min(lo + _BLOCK, n_series), n_steps,
                           np.random.default_rng([seed, lo // _BLOCK])).to_arrow()
            writer = writer or pq.ParquetWriter(out, table.schema, compression="zstd")
            writer.write_table(table)
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    return rows


def write_panel(frame: pl.DataFrame, out: str | Path) -> None:
    """Parquet, or CSV when the name ends in .csv."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        frame.write_csv(out)
    else:
        frame.write_parquet(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("series", type=int, help="number of series (N)")
    ap.add_argument("steps", type=int, help="hourly steps of the longest series (T)")
    ap.add_argument("out", help="output file: .parquet or .csv")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stream", action="store_true", help="Parquet only: write a block of series at a time "
                                                          "(memory of one block, for millions of series)")
    args = ap.parse_args(argv)
    if args.stream:
        print(f"{stream_panel(args.series, args.steps, args.out, args.seed)} rows, {args.series} series -> {args.out}")
        return 0
    frame = make_panel(args.series, args.steps, args.seed)
    write_panel(frame, args.out)
    print(f"{frame.height} rows, {frame['series_id'].n_unique()} series -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
