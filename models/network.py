"""The forecasting network: an RNN encoder and a direct multi-step head."""

from __future__ import annotations

import torch
from torch import nn


class LSTMForecaster(nn.Module):
    """Encode L past steps, then emit all H future values at once (direct strategy)."""

    def __init__(self, n_past: int, n_future: int, horizon: int, hidden_size: int = 64,
                 num_layers: int = 2, dropout: float = 0.1, bidirectional: bool = False,
                 cell: str = "lstm", init: str = "xavier") -> None:
        super().__init__()
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.encoder = rnn(n_past, hidden_size, num_layers=num_layers, batch_first=True,
                           dropout=dropout if num_layers > 1 else 0.0, bidirectional=bidirectional)
        enc = hidden_size * (2 if bidirectional else 1)
        self.horizon, self.n_future = horizon, n_future
        self.head = nn.Sequential(
            nn.Linear(enc + horizon * n_future, hidden_size), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden_size, horizon),
        )
        self._init_weights(init)

    def _init_weights(self, init: str) -> None:
        fn = {"xavier": nn.init.xavier_uniform_, "orthogonal": nn.init.orthogonal_,
              "kaiming": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu")}[init]
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                fn(p)
            elif "bias" in name:
                nn.init.zeros_(p)

    def forward(self, past: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
        # past: (B, L, F_past); future: (B, H, F_future) -> (B, H)
        out, _ = self.encoder(past)  # (B, L, enc)
        z = out[:, -1]  # last step's state (both directions when bidirectional)
        if self.n_future:
            z = torch.cat([z, future.flatten(1)], dim=1)  # (B, enc + H·F_future)
        return self.head(z)
