"""Every data contract of nightcast: pandera frames and pydantic parameters."""

from schemas.frames import CleanSeries, Forecasts, RawObservations
from schemas.params import (
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
