"""The contract of a model bundle and of the champion pointer, checked on every load.

A bundle is data, never code: these models say what its JSON files may hold,
so a tampered or hand-edited ``config.json`` fails with the file and the field
named instead of deep inside the network (or, worse, being accepted).
Unknown keys are rejected; old bundles stay valid because every field added
since the first generation has the first generation's default.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NetworkArgs(_Strict):
    """Exactly what ``LSTMForecaster(**network_args)`` accepts, with its bounds."""

    n_past: int = Field(ge=1, le=100_000)
    n_future: int = Field(ge=0, le=100_000)
    horizon: int = Field(ge=1, le=100_000)
    hidden_size: int = Field(64, ge=1, le=65_536)
    num_layers: int = Field(2, ge=1, le=64)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    bidirectional: bool = False
    cell: Literal["lstm", "gru"] = "lstm"
    init: Literal["xavier", "orthogonal", "kaiming"] = "xavier"
    pooling: Literal["last", "attention"] = "last"
    level: Literal["none", "last"] = "none"
    norm: Literal["none", "window"] = "none"
    skip: Literal["none", "seasonal", "last"] = "none"
    season: int = Field(1, ge=1, le=1_000_000)
    mask: bool = False
    target_channels: list[int] | None = None


class _Window(BaseModel):
    model_config = ConfigDict(extra="allow")
    lookback: int = Field(ge=1)
    horizon: int = Field(ge=1)


class _Clean(BaseModel):
    model_config = ConfigDict(extra="allow")
    max_bad_share: float = Field(ge=0, le=1)


class _RunParams(BaseModel):
    """The run parameters the bundle was trained with: the fields scoring reads are checked."""

    model_config = ConfigDict(extra="allow")
    window: _Window
    clean: _Clean


class _Calendar(BaseModel):
    model_config = ConfigDict(extra="allow")
    frequency: str = Field(min_length=1)


class BundleConfig(_Strict):
    """``config.json`` of a bundle."""

    params: _RunParams
    network_args: NetworkArgs
    calendar: _Calendar
    season_length: int = Field(ge=1)
    ensemble: int = Field(1, ge=1, le=32)  # network seeds in weights.pt (member<k>. prefixes when more than 1)


class Manifest(BaseModel):
    """``manifest.json``: written last; lists every other file's SHA-256."""

    model_config = ConfigDict(extra="allow")
    format: int = Field(ge=1)
    name: str
    version: str
    files: dict[str, str] = Field(min_length=1)


class ChampionPointer(BaseModel):
    """``champion.json`` and every ``champions/<stamp>.json`` record."""

    model_config = ConfigDict(extra="allow")
    name: str | None = None
    version: str = Field(min_length=1)
    promoted_at: str | None = None
