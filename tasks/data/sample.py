"""A small seeded sample panel that exercises every cleaning rule.

Hourly demand for a few sites: trend, daily and weekly seasonality, noise,
a numeric covariate (temperature), a categorical one (promo), short and long
gaps, outliers, one non-finite value and one duplicated key.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl


def make_sample(n_series: int = 5, days: int = 42, seed: int = 7,
                start: dt.datetime = dt.datetime(2026, 9, 1)) -> pl.DataFrame:
    """Return the raw long-format sample (text timestamps, as a CSV would hold them)."""
    rng = np.random.default_rng(seed)
    n = days * 24
    t = np.arange(n)
    stamps = [start + dt.timedelta(hours=int(i)) for i in t]
    hour, dow = t % 24, (t // 24) % 7
    frames = []
    for s in range(n_series):
        level = 50 + 20 * s
        temp = 12 + 6 * np.sin(2 * np.pi * (hour - 9) / 24) + rng.normal(0, 1.0, n)
        promo = np.zeros(n, dtype=bool)
        for begin in rng.choice(n - 48, size=6, replace=False):
            promo[begin : begin + 24] = True
        y = (
            level
            + 0.01 * (1 + s) * t  # trend
            + 0.25 * level * np.sin(2 * np.pi * (hour - 6) / 24)  # daily
            + 0.10 * level * (dow >= 5)  # weekend
            + 0.3 * temp
            + 0.15 * level * promo
            + rng.normal(0, 0.04 * level, n)
        )
        y = np.round(y, 3).astype(object)
        spikes = rng.choice(np.arange(48, n), size=4, replace=False)
        y[spikes] = np.round(y[spikes].astype(float) * rng.choice([3.0, -1.0], size=4), 3)
        keep = np.ones(n, dtype=bool)
        keep[rng.choice(np.arange(48, n - 48), size=6, replace=False)] = False  # short gaps
        if s == 1:
            keep[300:320] = False  # one long outage
        frames.append(pl.DataFrame({
            "series_id": f"site-{s + 1}",
            "timestamp": [x.strftime("%Y-%m-%d %H:%M:%S") for x in stamps],
            "target": [str(v) for v in y],
            "temperature": np.round(temp, 2).astype(str),
            "promo": np.where(promo, "on", "off"),
        }).filter(pl.Series(keep)))
    raw = pl.concat(frames)
    # Defects the validator must quarantine: a non-finite value and a duplicated key.
    raw = raw.with_columns(pl.when(pl.int_range(pl.len()) == 100).then(pl.lit("inf"))
                           .otherwise(pl.col("target")).alias("target"))
    dup = raw.slice(200, 1).with_columns(pl.lit("999.0").alias("target"))
    return pl.concat([raw, dup]).sample(fraction=1.0, shuffle=True, seed=seed)  # unsorted, as files are
