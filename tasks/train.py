"""Train the network with Lightning and predict with it."""

from __future__ import annotations

import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch.utils.data import DataLoader

from models.module import ForecastModule
from models.network import LSTMForecaster
from schemas.params import ModelConfig, TrainConfig
from tasks.window import WindowDataset, WindowError, WindowIndex, collate_batch


@dataclass
class TrainResult:
    net: LSTMForecaster
    network_args: dict  # what LSTMForecaster(**network_args) needs to rebuild the net
    history: pl.DataFrame  # epoch, train_loss, val_loss
    best_val_loss: float
    epochs: int


def _loader(index: WindowIndex, split: str, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    return DataLoader(WindowDataset(index, index.splits[split]), batch_size=batch_size, shuffle=shuffle,
                      collate_fn=collate_batch, generator=torch.Generator().manual_seed(seed))


def network_args_for(index: WindowIndex, model_cfg: ModelConfig) -> dict:
    """What ``LSTMForecaster(**network_args)`` needs for these windows and this config."""
    return {"n_past": index.past.shape[1], "n_future": index.future.shape[1], "horizon": index.horizon,
            **model_cfg.model_dump()}


def train_model(index: WindowIndex, model_cfg: ModelConfig, train_cfg: TrainConfig,
                progress: bool = True, accelerator: str = "auto", callbacks: list | None = None,
                init_state: dict | None = None) -> TrainResult:
    """Fit on the train windows, early-stop on validation loss, keep the best epoch's weights.

    ``callbacks`` are extra Lightning callbacks (for example Optuna's pruning callback);
    ``init_state`` is a state dict to start from (warm start) instead of a fresh initialisation.
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    for split in ("train", "val"):
        if len(index.splits[split]) == 0:
            raise WindowError(f"no {split} windows: series are too short for lookback={index.lookback} + "
                              f"horizon={index.horizon} in the {split} span")
    L.seed_everything(train_cfg.seed, workers=True, verbose=False)
    network_args = network_args_for(index, model_cfg)
    module = ForecastModule(network_args["n_past"], network_args["n_future"], index.horizon,
                            network=model_cfg.model_dump(), train=train_cfg.model_dump())
    if init_state is not None:
        module.net.load_state_dict(init_state)
    with tempfile.TemporaryDirectory(prefix="nightcast-train-") as tmp:
        ckpt = ModelCheckpoint(dirpath=Path(tmp) / "ckpt", monitor="val_loss", mode="min", save_top_k=1, filename="best")
        for name in ("lightning.pytorch", "lightning.fabric"):  # no GPU/TPU banners or tips
            logging.getLogger(name).setLevel(logging.WARNING)
        trainer = L.Trainer(
            max_epochs=train_cfg.max_epochs, accelerator=accelerator, devices=1, deterministic=True,
            gradient_clip_val=train_cfg.gradient_clip or None, logger=CSVLogger(tmp, name="log"),
            callbacks=[EarlyStopping("val_loss", patience=train_cfg.patience, mode="min"), ckpt, *(callbacks or [])],
            enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            warnings.filterwarnings("ignore", ".*number of training batches.*")
            warnings.filterwarnings("ignore", ".*LeafSpec.*")
            trainer.fit(module, _loader(index, "train", train_cfg.batch_size, True, train_cfg.seed),
                        _loader(index, "val", train_cfg.batch_size, False, train_cfg.seed))
        state = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        metrics = pl.read_csv(Path(trainer.logger.log_dir) / "metrics.csv")
    module.load_state_dict(state)
    history = (metrics.group_by("epoch").agg(pl.col("train_loss").drop_nulls().first(),
                                             pl.col("val_loss").drop_nulls().first()).sort("epoch"))
    net = module.net.cpu().eval()
    return TrainResult(net, network_args, history, float(ckpt.best_model_score), int(trainer.current_epoch))


@torch.no_grad()
def predict_scaled(net: LSTMForecaster, index: WindowIndex, starts: np.ndarray,
                   batch_size: int = 1024) -> np.ndarray:
    """Scaled (n, H) predictions for windows starting at ``starts``."""
    net.eval()
    ds = WindowDataset(index, starts)
    out = [net(*ds.__getitems__(list(range(i, min(i + batch_size, len(ds)))))[:2]).numpy()
           for i in range(0, len(ds), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, index.horizon), np.float32)
