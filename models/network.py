"""The forecasting network: an RNN encoder and a direct multi-step head."""

from __future__ import annotations

import torch
from torch import nn


class LSTMForecaster(nn.Module):
    """Encode L past steps, then emit all H future values at once (direct strategy)."""

    def __init__(self, n_past: int, n_future: int, horizon: int, hidden_size: int = 64,
                 num_layers: int = 2, dropout: float = 0.1, bidirectional: bool = False,
                 cell: str = "lstm", init: str = "xavier", pooling: str = "last", level: str = "none") -> None:
        super().__init__()
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.encoder = rnn(n_past, hidden_size, num_layers=num_layers, batch_first=True,
                           dropout=dropout if num_layers > 1 else 0.0, bidirectional=bidirectional)
        enc = hidden_size * (2 if bidirectional else 1)
        if pooling not in ("last", "attention"):
            raise ValueError(f"pooling must be 'last' or 'attention', not {pooling!r}")
        self.pooling = pooling
        if level not in ("none", "last"):
            raise ValueError(f"level must be 'none' or 'last', not {level!r}")
        self.level = level  # "last": the head predicts the change from the last observed (scaled) value
        # additive attention over the encoder's outputs: score_t = v·tanh(W·h_t)
        self.attention = (nn.Sequential(nn.Linear(enc, hidden_size), nn.Tanh(), nn.Linear(hidden_size, 1, bias=False))
                          if pooling == "attention" else None)
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
        if self.attention is None:
            z = out[:, -1]  # last step's state (both directions when bidirectional)
        else:
            weights = torch.softmax(self.attention(out), dim=1)  # (B, L, 1), sums to 1 over the lookback
            z = (weights * out).sum(dim=1)
        if self.n_future:
            z = torch.cat([z, future.flatten(1)], dim=1)  # (B, enc + H·F_future)
        out = self.head(z)
        if self.level == "last":  # a skip connection: trends and level shifts need not be learned as values
            out = out + past[:, -1, :1]
        return out
