"""The LightningModule: loss, optimiser, schedule and logging around the network."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from nightcast.models.network import LSTMForecaster

_LOSSES = {"mse": nn.MSELoss, "mae": nn.L1Loss, "huber": nn.HuberLoss}


class ForecastModule(L.LightningModule):
    def __init__(self, n_past: int, n_future: int, horizon: int, network: dict, train: dict) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = LSTMForecaster(n_past, n_future, horizon, **network)
        self.loss_fn = _LOSSES[train["loss"]]()
        self.cfg = train
        self._train_sum, self._train_n = torch.zeros(()), 0  # the epoch's loss, logged once at its end

    def forward(self, past: torch.Tensor, future: torch.Tensor) -> torch.Tensor:
        return self.net(past, future)

    def _loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        past, future, y = batch
        pred, scale = self.net(past, future, return_scale=True)
        # errors in the units the network sees: per window when it normalises windows, so
        # every series and level weighs the same (a scaled MAE, close to what MASE measures)
        return self.loss_fn(pred / scale, y / scale)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        # summed here and logged once per epoch: self.log on every step cost ~1 ms of a ~19 ms step
        self._train_sum = self._train_sum.to(loss.device) + loss.detach()
        self._train_n += 1
        if self.cfg["l1"] > 0:
            loss = loss + self.cfg["l1"] * sum(p.abs().sum() for n, p in self.named_parameters() if "weight" in n)
        return loss

    def on_train_epoch_end(self) -> None:
        if self._train_n:
            # mean over ranks under DDP (every rank takes the same number of steps); no-op on one device
            self.log("train_loss", self._train_sum / self._train_n, prog_bar=True, sync_dist=True)
        self._train_sum, self._train_n = torch.zeros(()), 0

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        # sync_dist: Lightning sums loss x batch size and the batch sizes over ranks before dividing,
        # so under DDP every rank (early stopping, checkpoint, LR plateau) sees the global mean
        self.log("val_loss", self._loss(batch), prog_bar=True, on_epoch=True, on_step=False,
                 batch_size=len(batch[2]), sync_dist=True)

    def configure_optimizers(self):  # noqa: ANN201 - Lightning's own union type
        opt_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[self.cfg["optimizer"]]
        opt = opt_cls(self.parameters(), lr=self.cfg["learning_rate"], weight_decay=self.cfg["weight_decay"])
        if self.cfg["lr_schedule"] == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=max(1, self.cfg["patience"] // 2))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss"}}
        if self.cfg["lr_schedule"] == "cosine":
            t_max = max(1, self.trainer.max_epochs) if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 50
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, t_max)}
        return opt
