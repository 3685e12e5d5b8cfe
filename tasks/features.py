"""Scale targets per series, scale numeric covariates, one-hot categorical ones.

Every statistic is fitted on the training span only and kept as plain JSON
(``FeatureState``), so scoring applies exactly what training fitted.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field

import polars as pl

_EPS = 1e-8


@dataclass
class FeatureState:
    scaler: str
    target_stats: dict[str, list[float]]  # series_id -> [center, scale]
    numeric_stats: dict[str, list[float]]  # covariate -> [center, scale]
    categories: dict[str, list[str]]  # covariate -> categories seen in training
    past_covariates: list[str]
    future_covariates: list[str]
    past_columns: list[str] = field(default_factory=list)  # encoded model inputs, target first
    future_columns: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> FeatureState:
        return cls(**d)


def _stats(col: pl.Expr, scaler: str) -> list[pl.Expr]:
    if scaler == "standard":
        return [col.mean().alias("c"), col.std().alias("s")]
    if scaler == "minmax":
        return [col.min().alias("c"), (col.max() - col.min()).alias("s")]
    return [col.median().alias("c"), (col.quantile(0.75) - col.quantile(0.25)).alias("s")]


def _encoded(name: str, state: FeatureState) -> list[str]:
    if name in state.categories:
        return [f"cat__{name}={v}" for v in state.categories[name]]
    return [f"num__{name}"]


def fit_features(clean: pl.DataFrame, train_end: dt.datetime, scaler: str,
                 numeric: list[str], categorical: list[str],
                 past_covariates: list[str] | None, future_covariates: list[str]) -> FeatureState:
    """Fit scalers and encoders on rows up to ``train_end`` (observed values only)."""
    known = set(numeric) | set(categorical)
    past = list(past_covariates) if past_covariates is not None else sorted(known - set(future_covariates))
    unknown = [c for c in [*past, *future_covariates] if c not in known]
    if unknown:
        raise ValueError(f"covariate(s) {unknown} are not columns of the input; columns: {sorted(known)}")
    train = clean.filter((pl.col("timestamp") <= train_end) & pl.col("observed"))
    t = train.group_by("series_id").agg(_stats(pl.col("target"), scaler))
    target_stats = {sid: [float(c), float(s) if s and s > _EPS else 1.0] for sid, c, s in t.iter_rows()}
    used = [*past, *future_covariates]
    numeric_stats = {}
    for c in (c for c in used if c in numeric):
        center, scale = train.select(_stats(pl.col(c), scaler)).row(0)
        numeric_stats[c] = [float(center or 0.0), float(scale) if scale and scale > _EPS else 1.0]
    categories = {c: sorted(train[c].drop_nulls().unique().to_list()) for c in used if c in categorical}
    state = FeatureState(scaler, target_stats, numeric_stats, categories, past, list(future_covariates))
    state.past_columns = ["y"] + [e for c in [*past, *future_covariates] for e in _encoded(c, state)]
    state.future_columns = [e for c in future_covariates for e in _encoded(c, state)]
    return state


def transform_features(clean: pl.DataFrame, state: FeatureState) -> tuple[pl.DataFrame, list[str]]:
    """Add the encoded model inputs (``y`` = scaled target). Unknown series are dropped and returned."""
    unknown = sorted(set(clean["series_id"].unique().to_list()) - set(state.target_stats))
    frame = clean.filter(~pl.col("series_id").is_in(unknown)) if unknown else clean
    stats = pl.DataFrame({"series_id": list(state.target_stats),
                          "_c": [v[0] for v in state.target_stats.values()],
                          "_s": [v[1] for v in state.target_stats.values()]})
    frame = frame.join(stats, on="series_id", how="left", maintain_order="left")
    exprs = [((pl.col("target") - pl.col("_c")) / pl.col("_s")).cast(pl.Float32).alias("y")]
    for name in [*state.past_covariates, *state.future_covariates]:
        if name in state.categories:
            exprs += [(pl.col(name) == v).fill_null(False).cast(pl.Float32).alias(f"cat__{name}={v}")
                      for v in state.categories[name]]
        else:
            c, s = state.numeric_stats[name]
            exprs.append(((pl.col(name) - c) / s).fill_null(0.0).cast(pl.Float32).alias(f"num__{name}"))
    return frame.with_columns(exprs).drop("_c", "_s"), unknown


def inverse_scale(values, series_ids: list[str], state: FeatureState):  # noqa: ANN001 - numpy arrays
    """Undo the target scaling for rows of ``values`` belonging to ``series_ids``."""
    import numpy as np

    c = np.array([state.target_stats[s][0] for s in series_ids])[:, None]
    s = np.array([state.target_stats[s][1] for s in series_ids])[:, None]
    return values * s + c
