"""The forecasting network: an RNN encoder and a direct multi-step head.

Two options make a global network hold its own against seasonal naive on real
data (Hewamalage et al. 2021; Smyl's ES-RNN; FORECASTING.md):

- ``norm="window"``: every input window is normalised by its own location and
  scale (masked mean and mean absolute deviation of the target channels) and
  the output is mapped back, so trends and level shifts never push inputs out
  of the range seen in training.
- ``skip="seasonal"``: the head predicts a *correction* to the seasonal-naive
  forecast read off the (normalised) window; ``"last"`` to the last value. The
  head's last layer starts at zero, so an untrained network *is* the baseline.

With ``mask=True`` the last input channel is 1 for real steps and 0 for left
padding: short series keep their windows (padded) instead of being dropped.
The defaults reproduce the first-generation network so old bundles load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

_SCALE_FLOOR = 1e-2  # in per-series standardised units: a flat window is not blown up


class LSTMForecaster(nn.Module):
    """Encode L past steps, then emit all H future values at once (direct strategy)."""

    def __init__(self, n_past: int, n_future: int, horizon: int, hidden_size: int = 64,
                 num_layers: int = 2, dropout: float = 0.1, bidirectional: bool = False,
                 cell: str = "lstm", init: str = "xavier", pooling: str = "last", level: str = "none",
                 norm: str = "none", skip: str = "none", season: int = 1, mask: bool = False,
                 target_channels: list[int] | None = None) -> None:
        super().__init__()
        for name, value, allowed in (("pooling", pooling, ("last", "attention")), ("level", level, ("none", "last")),
                                     ("norm", norm, ("none", "window")), ("skip", skip, ("none", "seasonal", "last"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, not {value!r}")
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.encoder = rnn(n_past, hidden_size, num_layers=num_layers, batch_first=True,
                           dropout=dropout if num_layers > 1 else 0.0, bidirectional=bidirectional)
        enc = hidden_size * (2 if bidirectional else 1)
        self.pooling, self.level, self.norm, self.skip = pooling, level, norm, skip
        self.season, self.mask = max(1, int(season)), mask
        self.target_channels = list(target_channels or [0])  # the target and its lags: normalised together
        # additive attention over the encoder's outputs: score_t = v·tanh(W·h_t)
        self.attention = (nn.Sequential(nn.Linear(enc, hidden_size), nn.Tanh(), nn.Linear(hidden_size, 1, bias=False))
                          if pooling == "attention" else None)
        self.horizon, self.n_future = horizon, n_future
        self.head = nn.Sequential(
            nn.Linear(enc + horizon * n_future, hidden_size), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden_size, horizon),
        )
        self._init_weights(init)
        if skip != "none":  # start exactly at the baseline
            nn.init.zeros_(self.head[-1].weight)

    def _init_weights(self, init: str) -> None:
        fn = {"xavier": nn.init.xavier_uniform_, "orthogonal": nn.init.orthogonal_,
              "kaiming": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu")}[init]
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                fn(p)
            elif "bias" in name:
                nn.init.zeros_(p)

    def _window_stats(self, y: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # y, real: (B, L) -> loc, scale: (B, 1) over the real steps only
        n = real.sum(1, keepdim=True).clamp_min(1.0)
        loc = (y * real).sum(1, keepdim=True) / n
        scale = ((y - loc).abs() * real).sum(1, keepdim=True) / n
        return loc, scale.clamp_min(_SCALE_FLOOR)

    def _baseline(self, y: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        # y, real: (B, L) normalised target -> (B, H) seasonal-naive (or last-value) forecast
        last = y[:, -1:].expand(-1, self.horizon)
        if self.skip == "last" or self.season <= 1:
            return last
        L = y.shape[1]
        h = torch.arange(1, self.horizon + 1, device=y.device)
        pos = (L - 1) + h - self.season * torch.ceil(h / self.season).long()  # (H,) position of y[t+h-m·k]
        ok = pos >= 0
        pos = pos.clamp_min(0)
        seasonal = y[:, pos]
        usable = ok[None, :] & (real[:, pos] > 0)
        return torch.where(usable, seasonal, last)

    def forward(self, past: torch.Tensor, future: torch.Tensor, return_scale: bool = False):  # noqa: ANN201
        # past: (B, L, F_past [+ mask]); future: (B, H, F_future) -> (B, H) in per-series scaled units
        real = past[:, :, -1] if self.mask else torch.ones_like(past[:, :, 0])
        loc = torch.zeros_like(past[:, :1, 0])
        scale = torch.ones_like(loc)
        if self.norm == "window":
            loc, scale = self._window_stats(past[:, :, 0], real)
            tc = self.target_channels
            normed = (past[:, :, tc] - loc[:, :, None]) / scale[:, :, None] * real[:, :, None]
            past = past.clone()
            past[:, :, tc] = normed
        out, _ = self.encoder(past)  # (B, L, enc)
        if self.attention is None:
            z = out[:, -1]  # last step's state (both directions when bidirectional)
        else:
            score = self.attention(out)  # (B, L, 1)
            if self.mask:
                score = score.masked_fill(real[:, :, None] == 0, -1e4)
            z = (torch.softmax(score, dim=1) * out).sum(dim=1)
        if self.n_future:
            z = torch.cat([z, future.flatten(1)], dim=1)  # (B, enc + H·F_future)
        pred = self.head(z)
        if self.skip != "none":
            pred = pred + self._baseline(past[:, :, 0], real)
        if self.level == "last":  # a skip connection: trends and level shifts need not be learned as values
            pred = pred + past[:, -1, :1]
        pred = pred * scale + loc
        return (pred, scale) if return_scale else pred
