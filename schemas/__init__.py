"""Every data contract of nightcast: pandera frames and pydantic parameters."""

from nightcast.schemas.frames import CleanSeries, Forecasts, RawObservations
from nightcast.schemas.params import (
    CleanConfig,
    ColumnMap,
    ModelConfig,
    PromotionRule,
    RetrainParams,
    ScoreParams,
    Settings,
    TrainConfig,
    WindowConfig,
)

__all__ = [
    "CleanConfig",
    "CleanSeries",
    "ColumnMap",
    "Forecasts",
    "ModelConfig",
    "PromotionRule",
    "RawObservations",
    "RetrainParams",
    "ScoreParams",
    "Settings",
    "TrainConfig",
    "WindowConfig",
]
