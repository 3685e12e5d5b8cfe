"""Typed parameters: settings from the environment and every flow's inputs.

Flow parameters are pydantic models so the Prefect UI renders them as a form
and rejects bad values before a run starts.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


SAMPLE_DATA = "sample://"
"""The bundled sample panel (``tasks.sample.make_sample``): the input when none is configured."""

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
    progress: bool = Field(True, description="Show a training progress bar")


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnMap(_Config):
    """Which input columns hold the series id, timestamp and target."""

    series_col: str = "series_id"
    timestamp_col: str = "timestamp"
    target_col: str = "target"
    timestamp_format: str | None = Field(None, description="strftime format; inferred when empty")


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

    lookback: int = Field(48, ge=1)
    horizon: int = Field(12, ge=1)
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)
    stride: int = Field(1, ge=1, description="step between training window origins")
    past_covariates: list[str] | None = Field(None, description="None: every extra column")
    future_covariates: list[str] = Field(default_factory=list, description="known in advance for the horizon")


class ModelConfig(_Config):
    """The network: an RNN encoder and a direct multi-step head."""

    cell: Literal["lstm", "gru"] = "lstm"
    hidden_size: int = Field(64, ge=1)
    num_layers: int = Field(2, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    bidirectional: bool = False
    init: Literal["xavier", "orthogonal", "kaiming"] = "xavier"


class TrainConfig(_Config):
    """Loss, optimiser and the training loop."""

    loss: Literal["mse", "mae", "huber"] = "mse"
    optimizer: Literal["adam", "adamw"] = "adamw"
    learning_rate: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    l1: float = Field(0.0, ge=0)
    batch_size: int = Field(128, ge=1)
    max_epochs: int = Field(20, ge=1)
    patience: int = Field(4, ge=1, description="early stopping on validation loss")
    gradient_clip: float = Field(1.0, ge=0)
    lr_schedule: Literal["plateau", "cosine", "none"] = "plateau"
    seed: int = 42


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
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    promotion: PromotionRule = PromotionRule()


class ScoreParams(_Config):
    """Everything ``score_flow`` needs besides the settings."""

    data: str | None = Field(None, description=_DATA_HELP)
    as_of: dt.date | None = Field(
        None, description="forecast from the data up to and including this date; empty: the newest date in the data")
    model_name: str = Field("lstm", pattern=_MODEL_NAME)
    columns: ColumnMap = ColumnMap()


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
    max_parallel: int = Field(2, ge=1, le=32, description="dates scored at the same time")
    columns: ColumnMap = ColumnMap()

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

