"""Typed parameters: settings from the environment and every flow's inputs.

Flow parameters are pydantic models so the Prefect UI renders them as a form
and rejects bad values before a run starts.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


SAMPLE_DATA = "sample://"
"""The bundled sample panel (``nightcast.tasks.data.sample.make_sample``): the input when none is configured."""

_MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class Settings(BaseSettings):
    """Runtime settings, read from ``NIGHTCAST_*`` variables when a flow starts.

    Credentials are never settings: boto3 and polars read the standard
    ``AWS_*`` variables (``AWS_ENDPOINT_URL`` included) themselves.
    """

    model_config = SettingsConfigDict(env_prefix="NIGHTCAST_", extra="ignore")

    store: str = Field("./nightcast-store", description="Local directory or s3://bucket/prefix")
    data: str = Field(SAMPLE_DATA, description="Input used when a run names none (deployments, schedules)")
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads (1 is fastest for small LSTMs on few cores)")
    train_workers: int = Field(
        0, ge=0, description="processes that train a retrain's network seeds side by side (identical weights); "
                             "0: every seed at once when there are cores and work enough for it, 1: in the flow's "
                             "process (nightcast.tasks.forecast.seeds)")
    classical_jobs: int = Field(
        0, ge=0, description="processes that fit the classical candidate when a call has a few seconds of fits "
                             "(statsforecast's n_jobs); 0: one per usable core, except on a Dask worker (1)")
    inference_threads: int = Field(
        0, ge=0, description="threads that run batches of network inference side by side (scoring, backtests); "
                             "0: one per usable core, except on a Dask worker or with torch_threads above 1 (1)")
    dask_address: str | None = Field(
        None, description="run flow tasks (score shards) on Dask: a scheduler address (tcp://host:8786), or "
                          "'local' for a LocalCluster started for the run; empty: Prefect's thread pool")
    dask_local_workers: int = Field(2, ge=1, description="worker processes of the 'local' Dask cluster")
    shard_task_series: int = Field(
        25_000, ge=0, description="series a sharded scoring task holds at most (a bigger shard is a task of its "
                                  "own), in runs of consecutive shards; every worker thread gets a task while there "
                                  "are shards, never more than one task per shard "
                                  "(nightcast.tasks.serving.shard.task_groups); 0: one task per shard")
    progress: bool = Field(True, description="Show a training progress bar")
    optuna_storage: SecretStr = Field(SecretStr("sqlite:///nightcast-optuna.db"),
                                      description="Optuna study storage (any SQLAlchemy URL; PostgreSQL for many "
                                                  "workers); a secret: its password never prints with the settings")
    allowed_roots: list[str] = Field(
        default_factory=list,
        description="JSON list of local directories or s3://bucket/prefix that runs started from a deployment "
                    "(schedule, UI, API) may name as store or data, besides the configured store and data")

    def check_location(self, url: str, what: str) -> None:
        """Refuse a ``store`` / ``data`` location outside the configured ones (runs from the Prefect API).

        Anyone who can reach the API can start a deployment run with any parameters; without this a run
        could make a worker read or write any path its credentials reach. Allowed: the configured store,
        the configured data's folder, the bundled sample and ``allowed_roots``; local paths are compared
        after resolving ``..`` and symbolic links.
        """
        if url == SAMPLE_DATA:
            return
        roots = [self.store, *self.allowed_roots]
        if self.data != SAMPLE_DATA:
            roots.append(self.data if _is_dir_like(self.data) else self.data.rsplit("/", 1)[0])
        if not any(_within(url, root) for root in roots):
            raise PermissionError(
                f"{what} {url!r} is outside the locations this worker may use ({', '.join(map(repr, roots))}); "
                "add it to NIGHTCAST_ALLOWED_ROOTS (a JSON list) on the worker to allow it")


def _is_dir_like(url: str) -> bool:
    import os

    return url.endswith("/") or (not url.startswith("s3://") and os.path.isdir(url))


def _within(url: str, root: str) -> bool:
    """``url`` is ``root`` or below it (no ``..`` escapes): S3 by key prefix, local paths resolved."""
    import os

    if url.startswith("s3://") or root.startswith("s3://"):
        if not (url.startswith("s3://") and root.startswith("s3://")) or "/../" in f"{url}/" or "/./" in f"{url}/":
            return False
        base = root.rstrip("/")
        return url == base or url.startswith(base + "/")
    if "://" in url.removeprefix("file://") or "://" in root.removeprefix("file://"):
        return False
    path = os.path.realpath(os.path.expanduser(url.removeprefix("file://")))
    base = os.path.realpath(os.path.expanduser(root.removeprefix("file://")))
    return path == base or path.startswith(base.rstrip(os.sep) + os.sep)


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnMap(_Config):
    """Which input columns hold the series id, timestamp and target."""

    series_col: str = Field("series_id", description="input column holding the series id")
    timestamp_col: str = Field("timestamp", description="input column holding the timestamp")
    target_col: str = Field("target", description="input column holding the value to forecast")
    timestamp_format: str | None = Field(None, description="strftime format of the timestamps; inferred when empty")


class CleanConfig(_Config):
    """How observations become regular, finite, scaled series."""

    frequency: str | None = Field(None, description="polars duration such as 1h, 1d, 1mo; inferred when empty")
    calendar: Literal["auto", "regular", "business"] = Field(
        "auto", description="business: weekdays only, days missing from every series are holidays"
    )
    max_gap: int = Field(3, ge=0, description="gaps up to this many steps are filled; longer ones are flagged")
    fill: Literal["interpolate", "ffill"] = "interpolate"
    outliers: Literal["hampel", "iqr", "none"] = "hampel"
    outlier_action: Literal["clip", "drop"] = "clip"
    outlier_window: int | None = Field(None, ge=3, description="Hampel trailing window; the season length when empty")
    outlier_threshold: float = Field(4.0, gt=0, description="Hampel: MADs; IQR: multiples of the IQR")
    scaler: Literal["standard", "minmax", "robust"] = "standard"
    season_length: int | None = Field(None, ge=1, description="inferred from the frequency when empty")
    max_bad_share: float = Field(0.05, ge=0, le=1, description="stop when a larger share of rows fails validation")


class WindowConfig(_Config):
    """Lookback, horizon and the time-ordered train / validation / test split."""

    lookback: int | None = Field(
        None, ge=1, description="input steps; empty: from the season and horizon (2 horizons, up to 3 seasons)")
    horizon: int = Field(12, ge=1)
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)
    stride: int = Field(1, ge=1, description="step between training window origins")
    max_eval_windows: int = Field(
        20_000, ge=100, description="validation / test windows kept per split: every k-th origin per series, newest kept; "
                                "past one window per series, every m-th series")
    past_covariates: list[str] | None = Field(None, description="None: every extra column")
    future_covariates: list[str] = Field(default_factory=list, description="known in advance for the horizon")

    @property
    def train_share(self) -> float:
        """The share of time steps before the validation and test spans."""
        return 1 - self.val_fraction - self.test_fraction


class FeatureConfig(_Config):
    """Derived features, each fitted on the training span (see ``nightcast.tasks.data.features``)."""

    calendar: list[Literal["hour", "dow", "month", "doy"]] | None = Field(
        None, description="cyclical sin/cos of these timestamp parts, as known-future inputs; empty: from the "
                          "frequency (sub-daily: hour and dow; daily and coarser: none); []: none")
    timezone: str = Field(
        "UTC", description="IANA time zone the calendar parts are read in (e.g. Europe/Berlin: the local hour and "
                           "weekday a demand cycle follows, DST included); timestamps themselves stay UTC")
    seasonal_lags: list[int] = Field(
        default_factory=list, description="the target this many steps back (e.g. [24, 168] for hourly data)")
    pca_components: int | None = Field(
        None, ge=1, description="compress the numeric past covariates to this many principal components")

    @model_validator(mode="after")
    def _known_zone(self) -> "FeatureConfig":
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {self.timezone!r} (an IANA name such as 'Europe/Berlin')") from exc
        return self

    @model_validator(mode="after")
    def _positive_lags(self) -> "FeatureConfig":
        if any(n < 1 for n in self.seasonal_lags):
            raise ValueError(f"seasonal_lags must be >= 1 step, got {self.seasonal_lags}")
        return self


class ModelConfig(_Config):
    """The network: an RNN encoder and a direct multi-step head."""

    cell: Literal["lstm", "gru"] = "lstm"
    hidden_size: int = Field(64, ge=1)
    num_layers: int = Field(1, ge=1, description="1 layer trains ~4x faster than 2 on a CPU at equal accuracy (bench)")
    dropout: float = Field(0.1, ge=0, lt=1)
    bidirectional: bool = False
    init: Literal["xavier", "orthogonal", "kaiming"] = Field("xavier", description="kaiming is He initialisation")
    pooling: Literal["last", "attention"] = Field(
        "last", description="summarise the encoder by its last state, or by attention over all steps")
    level: Literal["none", "last"] = Field(
        "none", description="last: add the last scaled value to the output (first-generation skip; prefer skip)")
    norm: Literal["window", "none"] = Field(
        "window", description="window: normalise each input window by its own level and spread (survives trends)")
    skip: Literal["none", "auto", "seasonal", "last"] = Field(
        "none", description="seasonal / last: predict a correction to seasonal naive / the last value (untrained = "
                            "that baseline); auto: whichever is better on the training windows; none: no skip "
                            "(the benchmark's best on 7 of 10 datasets; served baselines are the safety net)")


class TrainConfig(_Config):
    """Loss, optimiser and the training loop."""

    loss: Literal["mse", "mae", "huber"] = Field("mae", description="mae fits MASE/sMAPE; in window-scaled units")
    optimizer: Literal["adam", "adamw"] = "adamw"
    learning_rate: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    l1: float = Field(0.0, ge=0)
    batch_size: int = Field(128, ge=1)
    max_steps: int | None = Field(
        None, ge=1, description="optimiser steps over windows sampled across series; empty: sized to the data")
    steps_per_epoch: int = Field(50, ge=1, description="steps between validation checks (one sampled 'epoch')")
    max_epochs: int = Field(1000, ge=1, description="cap on sampled epochs (max_steps usually stops first)")
    val_windows: int = Field(4096, ge=16, description="validation windows checked each epoch (a fixed sample)")
    patience: int = Field(6, ge=1, description="early stopping: epochs without a better validation loss")
    early_stopping: bool = Field(
        False, description="stop on the validation loss and keep its best epoch; false (default): train the whole "
                           "budget and keep the last weights, so the validation span judges the network without "
                           "the bias of having picked its epoch, and the refit trains the same budget")
    gradient_clip: float = Field(1.0, ge=0)
    lr_schedule: Literal["plateau", "cosine", "none"] = "plateau"
    seed: int = 42
    devices: int = Field(
        1, ge=1, description="processes (CPU) or GPUs trained at once with DDP; each takes batch_size per step")
    strategy: Literal["auto", "ddp_spawn", "ddp_fork", "ddp"] = Field(
        "auto", description="Lightning strategy when devices > 1; auto: ddp_spawn (works from inside a flow)")


class IntervalConfig(_Config):
    """Prediction intervals around every forecast."""

    method: Literal["conformal", "none"] = Field(
        "conformal", description="split-conformal from the validation windows' residuals, per horizon step")
    level: float = Field(0.8, gt=0, lt=1, description="target coverage, e.g. 0.8 for a P10-P90 band")


class WarmStartConfig(_Config):
    """Fine-tune from the champion's weights instead of training from scratch."""

    policy: Literal["never", "always", "periodic"] = Field(
        "never", description="periodic: warm start, but train from scratch every full_retrain_days")
    full_retrain_days: int = Field(7, ge=1)


class ServeConfig(_Config):
    """How the served forecast is decided on backtest windows and built at the origin (``nightcast.tasks.forecast.combine``)."""

    refit: bool = Field(True, description="refit the network on all history up to the origin (scalers too) for "
                                          "the backtest's best step count, and serve that; false: serve the "
                                          "backtest model")
    seeds: int = Field(3, ge=1, le=32, description="network seeds trained; the network candidate is their median")
    combine: Literal["weighted", "mean", "median", "switch"] = Field(
        "weighted", description="weighted: candidate weights from backtest errors, shrunk toward the panel's; "
                                "mean / median: equal shares; switch: each series' single best candidate")
    classical: Literal["auto", "theta", "optimized_theta", "autotheta", "autoets", "none"] = Field(
        "auto", description="classical candidate(s) (statsforecast), fitted at every origin; auto: AutoETS and "
                            "AutoTheta while their estimated backtest cost fits classical_budget_s, else Theta "
                            "(30-100x cheaper: catalogues of thousands of series)")
    classical_budget_s: float = Field(120.0, ge=0, description="seconds on one core 'auto' may spend fitting "
                                                                "classical models on the backtest and test windows")
    naive: bool = Field(True, description="include the last value (naive) as a candidate")
    prior: float = Field(4.0, ge=0, description="horizons of panel evidence each series' own backtest is shrunk toward")
    power: float = Field(2.0, gt=0, description="weights ∝ (MAE relative to seasonal naive) ** -power")
    trim: float | None = Field(
        1.5, ge=1, description="a candidate whose shrunk relative MAE is more than this many times the best "
                               "candidate's gets no weight (weighted mode); empty: every candidate keeps one")
    truth: Literal["raw", "clean"] = Field(
        "raw", description="what backtests are judged on: the raw observations (clean: the clipped and filled "
                           "values, only to measure what judging on them costs)")


class PromotionRule(_Config):
    """When a newly trained model replaces the champion."""

    metric: Literal["mase", "rmse", "mae", "smape"] = "mase"
    beat_champion: bool = True
    beat_seasonal_naive: bool = True
    min_improvement: float = Field(0.0, ge=0, description="relative, e.g. 0.02 = 2% better")


_DATA_HELP = "CSV/Parquet file, glob or directory; local or s3://; empty: $NIGHTCAST_DATA (the bundled sample)"


class RetrainParams(_Config):
    """Everything ``retrain_flow`` needs besides the settings."""

    data: str | None = Field(None, description=_DATA_HELP)
    model_name: str = Field("lstm", pattern=_MODEL_NAME, description="registry name; forecasts go under model=<name>")
    columns: ColumnMap = ColumnMap()
    clean: CleanConfig = CleanConfig()
    window: WindowConfig = WindowConfig()
    features: FeatureConfig = FeatureConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    promotion: PromotionRule = PromotionRule()
    serve: ServeConfig = ServeConfig()
    intervals: IntervalConfig = IntervalConfig()
    warm_start: WarmStartConfig = WarmStartConfig()
    use_tuned: bool = Field(True, description="apply this model's best tuned configuration when tuning saved one")
    sample: float = Field(
        1.0, gt=0, le=1,
        description="train and backtest on this share of the series, picked by the stable hash the shard layout "
                    "uses (on the layout: whole shards, only their files read); scoring still forecasts every "
                    "series, those outside the sample with scalers from their own history and the pooled "
                    "combination. For catalogues too big for one process; 1: every series")
    shards: int = Field(
        1, ge=1, le=4096,
        description="validate and clean the catalogue in this many shards (stable hash of the id; on the layout "
                    "`nightcast partition` wrote, its folders) as parallel tasks on the run's workers, so the "
                    "flow's process never holds the whole catalogue: it trains, backtests and refits on the "
                    "`sample` of every shard's series the tasks send back; 1: one process reads everything")

    @model_validator(mode="after")
    def _sharded_cleaning(self) -> RetrainParams:
        if self.shards > 1 and self.clean.outliers == "iqr":
            raise ValueError("shards > 1 cleans every shard before the training span is known; IQR outlier bounds "
                             "are fitted on that span: use outliers 'hampel' (the default) or 'none', or shards 1")
        return self


class RunOnData(_Config):
    """What every run over the input shares: where the data is, which model, which columns."""

    data: str | None = Field(None, description=_DATA_HELP)
    model_name: str = Field("lstm", pattern=_MODEL_NAME, description="registry name; forecasts go under model=<name>")
    columns: ColumnMap = ColumnMap()


class ScoreParams(RunOnData):
    """Everything ``score_flow`` needs besides the settings."""

    as_of: dt.date | None = Field(
        None, description="forecast from the data up to and including this date; empty: the newest date in the data")
    shards: int = Field(1, ge=1, le=4096, description="split the series into this many shards (stable hash of the "
                                                    "id), scored as parallel tasks; 1: one task")
    adapt_widths: bool = Field(
        True, description="scale the bundle's interval widths per horizon step by how the monitor's recent actuals "
                          "were covered (only actuals known before as_of; no monitoring: the bundle's widths)")


class BackfillParams(_Config):
    """Everything ``backfill_flow`` needs: one forecast partition per date in ``[start, end]``."""

    start: dt.date = Field(..., description="first as_of date")
    end: dt.date = Field(..., description="last as_of date (inclusive)")
    data: str | None = Field(None, description=_DATA_HELP)
    model_name: str = Field("lstm", pattern=_MODEL_NAME)
    model: str | None = Field(
        None, pattern=r"^[A-Za-z0-9._-]{1,128}$",
        description="bundle version to score every date with; empty: the champion of each date "
                    "when the registry knows it, else the current champion")
    overwrite: bool = Field(False, description="re-score dates whose partition already exists")
    allow_look_ahead: bool = Field(
        False, description="score dates that come before the end of the chosen champion's training data anyway "
                           "(refused by default: that model has seen those dates' future); a named model is "
                           "always used as given")
    max_parallel: int = Field(2, ge=1, le=32, description="dates scored at the same time")
    columns: ColumnMap = ColumnMap()
    shards: int = Field(1, ge=1, le=4096, description="read the data once in this many shards (stable hash of the "
                                                    "id) and score every date shard by shard; 1: one task per date")

    @model_validator(mode="after")
    def _ordered(self) -> "BackfillParams":
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        if (self.end - self.start).days >= MAX_BACKFILL_DAYS:
            raise ValueError(f"{(self.end - self.start).days + 1} dates requested; at most {MAX_BACKFILL_DAYS} "
                             "per backfill (split the range)")
        return self

    def dates(self) -> list[dt.date]:
        return [self.start + dt.timedelta(days=i) for i in range((self.end - self.start).days + 1)]


MAX_BACKFILL_DAYS = 3660



class Dimension(_Config):
    """One hyper-parameter: a list of ``choices``, or a numeric range ``low``..``high``.

    Numeric ranges are sampled uniformly (``log``: log-uniformly), as integers when
    ``integer``. The grid sampler uses the choices, or ``grid`` values when given,
    else low, middle and high.
    """

    choices: list[bool | int | float | str | list | None] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    grid: list[int | float] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> "Dimension":
        if self.choices is not None:
            if not self.choices or self.low is not None or self.high is not None:
                raise ValueError("give either non-empty choices or low/high, not both")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError("a numeric dimension needs low < high")
        elif self.log and self.low <= 0:
            raise ValueError("a log-scaled dimension needs low > 0")
        return self

    def grid_values(self) -> list:
        if self.choices is not None:
            return list(self.choices)
        if self.grid:
            return list(self.grid)
        lo, hi = float(self.low), float(self.high)  # type: ignore[arg-type]
        mid = (lo * hi) ** 0.5 if self.log else (lo + hi) / 2
        vals = [lo, mid, hi]
        return sorted({int(round(v)) for v in vals}) if self.integer else vals


def default_search_space() -> dict[str, Dimension]:
    """Layers, units, dropout, learning rate, batch size, L2, L1, cell, direction, pooling, skip.

    The lookback is derived from the season and horizon (add ``window.lookback`` to search it).
    """
    return {
        "model.num_layers": Dimension(choices=[1, 2, 3]),
        "model.hidden_size": Dimension(choices=[16, 32, 64, 128]),
        "model.dropout": Dimension(low=0.0, high=0.4, grid=[0.0, 0.2]),
        "model.cell": Dimension(choices=["lstm", "gru"]),
        "model.bidirectional": Dimension(choices=[False, True]),
        "model.pooling": Dimension(choices=["last", "attention"]),
        "model.skip": Dimension(choices=["none", "auto", "seasonal", "last"]),
        "train.learning_rate": Dimension(low=3e-4, high=1e-2, log=True),
        "train.batch_size": Dimension(choices=[32, 64, 128]),
        "train.weight_decay": Dimension(low=1e-6, high=1e-2, log=True),
        "train.l1": Dimension(choices=[0.0, 1e-5, 1e-4]),
    }


class TuneParams(_Config):
    """Everything ``tune_flow`` needs: the base run, the search space, the sampler, the folds."""

    base: RetrainParams = Field(default_factory=RetrainParams,
                                description="data, columns, cleaning and every value the search does not set")
    space: dict[str, Dimension] = Field(default_factory=default_search_space,
                                        description="dotted RetrainParams field -> range or choices")
    sampler: Literal["tpe", "random", "grid"] = Field("tpe", description="tpe: Bayesian; random; grid")
    n_trials: int = Field(20, ge=1, le=10_000, description="trials this run adds to the study")
    parallel: int = Field(1, ge=1, le=32, description="trials at once in this run (more: more workers)")
    folds: int = Field(3, ge=1, le=20, description="rolling-origin folds (expanding window)")
    fold_fraction: float = Field(0.08, gt=0, lt=0.5, description="each fold's evaluation span, share of time steps")
    pruning: bool = Field(True, description="stop weak trials early (median rule on validation loss)")
    storage_secret: str | None = Field(
        None, pattern=r"^[a-z0-9][a-z0-9-]{0,127}$",
        description="name of a Prefect Secret block holding the Optuna RDB URL (its password stays out of "
                    "flow parameters); empty: $NIGHTCAST_OPTUNA_STORAGE (SQLite by default)")
    study_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
                                   description="empty: nightcast-<model>-h<horizon>-<data fingerprint>, one "
                                               "study per model, horizon and data")
    objective: Literal["served", "network"] = Field(
        "served", description="served: the error of the served combination on each fold (weights fitted on the "
                              "fold's validation windows); network: the network alone")
    seed: int = Field(42, description="sampler seed")

    @model_validator(mode="after")
    def _known_fields(self) -> "TuneParams":
        bad = [k for k in self.space if not (k.startswith(("model.", "train.", "window.", "clean.", "features."))
                                             and _is_field_path(RetrainParams, k))]
        if bad:
            raise ValueError(f"unknown search-space field(s) {bad}; use dotted model / train / window / clean "
                             "fields such as 'model.hidden_size', 'train.learning_rate', 'window.lookback'")
        if self.base.shards > 1:
            raise ValueError("tune reads its folds in one process: base.shards must be 1 (tune on a --sample of the "
                             "series; the tuned configuration then applies to a sharded retrain)")
        return self


def _is_field_path(model: type[BaseModel], path: str) -> bool:
    head, _, rest = path.partition(".")
    field = model.model_fields.get(head)
    if field is None:
        return False
    if not rest:
        return True
    sub = field.annotation
    return isinstance(sub, type) and issubclass(sub, BaseModel) and _is_field_path(sub, rest)
