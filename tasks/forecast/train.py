"""Train the network with Lightning and predict with it."""

from __future__ import annotations

import logging
import tempfile
import warnings
from typing import Any
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, RandomSampler, Sampler

from nightcast.models.module import ForecastModule
from nightcast.models.network import LSTMForecaster
from nightcast.schemas.params import ModelConfig, RetrainParams, TrainConfig
from nightcast.tasks.data.window import WindowDataset, WindowError, WindowIndex, collate_batch
from nightcast.tasks.data.prepare import Prepared, prepare_refit
from nightcast.tasks.data.validate import ValidationResult


@dataclass
class TrainResult:
    net: LSTMForecaster
    network_args: dict  # what LSTMForecaster(**network_args) needs to rebuild the net
    history: pl.DataFrame  # epoch, train_loss, val_loss
    best_val_loss: float
    epochs: int
    steps: int = 0  # optimiser steps taken
    budget: dict | None = None  # max_steps, steps_per_epoch, batch_size, train/val windows: for the manifest
    # TensorBoard event files of the run, file name -> bytes: they travel in the bundle under tensorboard/
    tensorboard: dict[str, bytes] = field(default_factory=dict)


def auto_steps(n_windows: int, batch_size: int) -> int:
    """Optimiser steps sized to the data: about 20 passes over small data, 300 to 2,000 steps.

    The cost no longer grows with history length: a catalogue of millions of windows
    trains on a sample of 2,000 batches drawn across series.
    """
    return int(np.clip(20 * n_windows / max(1, batch_size), 300, 2000))


def _rank() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group.

    Read when a sampler is iterated, not when it is built: the loaders are built before
    ``ddp_spawn`` starts the ranks and are pickled into each of them.
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class RankBatchSampler(Sampler[int]):
    """Train windows for DDP: per epoch one seeded draw of (steps, world, batch) window indices;
    rank r reads ``[:, r]``, so each step the ranks train on disjoint slots of one global draw
    (with replacement, as the single-process sampler). Same seed and world size: same draws."""

    def __init__(self, n: int, steps: int, batch_size: int, seed: int, world: int) -> None:
        self.n, self.steps, self.batch_size, self.seed, self.world = n, steps, batch_size, seed, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls it at the start of every training epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps * self.batch_size

    def __iter__(self):  # noqa: ANN204
        rank, world = _rank()
        if world != self.world:
            raise RuntimeError(f"sampler built for {self.world} ranks runs in a group of {world}")
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        draws = torch.randint(self.n, (self.steps, self.world, self.batch_size), generator=gen)  # (S, W, B)
        return iter(draws[:, rank].reshape(-1).tolist())


class RankSlice(Sampler[int]):
    """Validation windows for DDP: rank r checks windows r, r + world, ...; no padding, so the
    sum/count reduction of ``val_loss`` across ranks is the exact mean over every window."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        rank, world = _rank()
        return len(range(rank, self.n, world))

    def __iter__(self):  # noqa: ANN204
        rank, world = _rank()
        return iter(range(rank, self.n, world))


def _train_loader(index: WindowIndex, cfg: TrainConfig, steps_per_epoch: int) -> DataLoader:
    """Each 'epoch' is ``steps_per_epoch`` batches drawn with replacement from every train window;
    with ``devices > 1`` every rank draws its own ``batch_size`` windows per step."""
    ds = WindowDataset(index, index.splits["train"])
    if cfg.devices > 1:
        sampler = RankBatchSampler(len(ds), steps_per_epoch, cfg.batch_size, cfg.seed, cfg.devices)
    else:
        gen = torch.Generator().manual_seed(cfg.seed)
        sampler = RandomSampler(ds, replacement=True, num_samples=steps_per_epoch * cfg.batch_size, generator=gen)
    return DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate_batch)


def _val_loader(index: WindowIndex, cfg: TrainConfig) -> DataLoader:
    """A fixed, seeded sample of at most ``val_windows`` validation windows (split across ranks)."""
    val = index.splits["val"]
    if len(val) > cfg.val_windows:
        val = np.sort(np.random.default_rng(cfg.seed).choice(val, cfg.val_windows, replace=False))
    return DataLoader(WindowDataset(index, val), batch_size=max(cfg.batch_size, 512),
                      sampler=RankSlice(len(val)) if cfg.devices > 1 else None, shuffle=False,
                      collate_fn=collate_batch)


def _strategy(cfg: TrainConfig) -> str:
    """``auto`` with several devices is ``ddp_spawn``: plain ``ddp`` re-runs ``sys.argv`` for every
    rank (the whole CLI, or pytest), so it only fits a script started by ``torchrun``; fork-based
    launchers copy a process that holds Prefect's threads and event loop."""
    if cfg.devices == 1:
        return "auto"
    return "ddp_spawn" if cfg.strategy == "auto" else cfg.strategy


class _RunTotals(Callback):
    """Epochs and steps of the run, carried in ``callback_metrics``: with ``ddp_spawn`` the calling
    process's trainer never runs the loop, and callback metrics are what rank 0 sends back."""

    def on_train_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        trainer.callback_metrics.update(nightcast_epochs=torch.tensor(trainer.current_epoch),
                                        nightcast_steps=torch.tensor(trainer.global_step))


def choose_skip(index: WindowIndex, sample: int = 20_000) -> str:
    """``skip="auto"``: correct the baseline that is better on the training windows.

    Seasonal naive when, over (a sample of) the training windows and all H steps, its scaled
    absolute error is below the last value's; otherwise the last value. Training span only.
    """
    from nightcast.models.baselines import naive, seasonal_naive

    starts = index.splits.get("train", index.splits.get("all", np.empty(0, np.int64)))
    if index.season <= 1 or len(starts) == 0:
        return "last"
    starts = starts[:: max(1, len(starts) // sample)]
    y = index.past[:, 0].astype(np.float64)  # per-series scaled: every series weighs the same
    origins, tidx = index.origin(starts), index.target_index(starts)
    seen = index.observed[tidx]
    first = index.offsets[index.series[origins]]
    seasonal = np.abs(seasonal_naive(y, origins, index.horizon, index.season, first) - y[tidx])[seen].mean()
    last = np.abs(naive(y, origins, index.horizon) - y[tidx])[seen].mean()
    return "seasonal" if seasonal < last else "last"


def network_args_for(index: WindowIndex, model_cfg: ModelConfig) -> dict:
    """What ``LSTMForecaster(**network_args)`` needs for these windows and this config (``auto`` resolved)."""
    cols = index.past_columns or ["y"]
    model = model_cfg.model_dump()
    if model["skip"] == "auto":
        model["skip"] = choose_skip(index)
    return {"n_past": index.n_past + int(index.pad), "n_future": index.n_future,
            "horizon": index.horizon, **model, "season": int(index.season), "mask": index.pad,
            "target_channels": [i for i, c in enumerate(cols) if c == "y" or c.startswith("lag__")]}


def planned_steps(index: WindowIndex, train_cfg: TrainConfig) -> int:
    """Optimiser steps a training of ``index`` takes: the configured ones, else sized to its train windows."""
    return train_cfg.max_steps or auto_steps(len(index.splits.get("train", ())), train_cfg.batch_size)


def training_budget(index: WindowIndex, train_cfg: TrainConfig) -> dict:
    """Optimiser steps (the configured ones, else sized to the data), steps per epoch and what they read."""
    n_train = len(index.splits["train"])
    max_steps = planned_steps(index, train_cfg)
    budget = {"max_steps": max_steps, "steps_per_epoch": min(train_cfg.steps_per_epoch, max_steps),
              "batch_size": train_cfg.batch_size, "train_windows": n_train,
              "val_windows": min(len(index.splits["val"]), train_cfg.val_windows),
              "auto": train_cfg.max_steps is None, "early_stopping": train_cfg.early_stopping}
    if train_cfg.devices > 1:  # each optimiser step reads batch_size windows on every device
        budget.update(devices=train_cfg.devices, strategy=_strategy(train_cfg))
    return budget


def _trainer(train_cfg: TrainConfig, tmp: str, accelerator: str, max_steps: int, per_epoch: int, checkpoint: Any,
             callbacks: list, progress: bool):  # noqa: ANN202 - a lightning.Trainer
    """The Lightning trainer: deterministic, the step budget, early stopping when asked, CSV and TensorBoard logs."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    for name in ("lightning.pytorch", "lightning.fabric"):  # no GPU/TPU banners or tips
        logging.getLogger(name).setLevel(logging.WARNING)
    return L.Trainer(
        max_epochs=min(train_cfg.max_epochs, -(-max_steps // per_epoch)), max_steps=max_steps,
        accelerator=accelerator, devices=train_cfg.devices, strategy=_strategy(train_cfg),
        deterministic=True,
        use_distributed_sampler=False,  # the loaders shard by rank themselves
        gradient_clip_val=train_cfg.gradient_clip or None,
        # fixed versions: with ddp_spawn this process reads the directories rank 0 wrote
        logger=[CSVLogger(tmp, name="log", version=0),
                TensorBoardLogger(tmp, name="tb", version="", default_hp_metric=False)],
        callbacks=[*([EarlyStopping("val_loss", patience=train_cfg.patience, mode="min")]
                     if train_cfg.early_stopping else []), checkpoint, _RunTotals(), *callbacks],
        enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
    )


def train_model(index: WindowIndex, model_cfg: ModelConfig, train_cfg: TrainConfig,
                progress: bool = True, accelerator: str = "auto", callbacks: list | None = None,
                init_state: dict | None = None) -> TrainResult:
    """Fit on the train windows, early-stop on validation loss, keep the best epoch's weights.

    ``callbacks`` are extra Lightning callbacks (for example Optuna's pruning callback);
    ``init_state`` is a state dict to start from (warm start) instead of a fresh initialisation.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    for split in ("train", "val"):
        if len(index.splits[split]) == 0:
            raise WindowError(f"no {split} windows: series are too short for lookback={index.lookback} + "
                              f"horizon={index.horizon} in the {split} span")
    import lightning as L

    L.seed_everything(train_cfg.seed, workers=True, verbose=False)
    budget = training_budget(index, train_cfg)
    max_steps, per_epoch = budget["max_steps"], budget["steps_per_epoch"]
    network_args = network_args_for(index, model_cfg)
    extra = {k: v for k, v in network_args.items() if k not in ("n_past", "n_future", "horizon")}
    module = ForecastModule(network_args["n_past"], network_args["n_future"], index.horizon,
                            network=extra, train=train_cfg.model_dump())
    if init_state is not None:
        module.net.load_state_dict(init_state)
    with tempfile.TemporaryDirectory(prefix="nightcast-train-") as tmp:
        ckpt = ModelCheckpoint(dirpath=Path(tmp) / "ckpt", monitor="val_loss", mode="min", save_top_k=1, filename="best")
        trainer = _trainer(train_cfg, tmp, accelerator, max_steps, per_epoch, ckpt, callbacks or [], progress)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            warnings.filterwarnings("ignore", ".*number of training batches.*")
            warnings.filterwarnings("ignore", ".*LeafSpec.*")
            trainer.fit(module, _train_loader(index, train_cfg, per_epoch), _val_loader(index, train_cfg))
        # the best validation epoch's weights; without early stopping the last ones, so that the validation
        # span stays unbiased evidence for what is decided on it (combination weights, interval widths)
        state = (torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
                 if train_cfg.early_stopping else None)
        metrics = pl.read_csv(Path(trainer.loggers[0].log_dir) / "metrics.csv")
        if train_cfg.devices == 1:  # rank 0 closed its own; here it would open a second, empty file
            trainer.loggers[1].finalize("success")  # flushes and closes the event file
        events = _event_files(Path(trainer.loggers[1].log_dir))
    if state is not None:
        module.load_state_dict(state)
    history = (metrics.group_by("epoch").agg(pl.col("train_loss").drop_nulls().first(),
                                             pl.col("val_loss").drop_nulls().first()).sort("epoch"))
    net = module.net.cpu().eval()
    best = ckpt.best_model_score if ckpt.best_model_score is not None else history["val_loss"].min()
    totals = trainer.callback_metrics
    return TrainResult(net, network_args, history, float(best), int(totals["nightcast_epochs"]),
                       int(totals["nightcast_steps"]), budget, events)


def best_steps(trained: TrainResult) -> int:
    """Optimiser steps up to the epoch early stopping kept: what a refit on all history trains for."""
    per_epoch = int((trained.budget or {}).get("steps_per_epoch") or 1)
    hist = trained.history.drop_nulls("val_loss")
    if hist.height == 0 or not (trained.budget or {}).get("early_stopping", True):
        return max(1, trained.steps)
    best_epoch = int(hist.sort("val_loss")["epoch"][0])
    return int(max(1, min(trained.steps or 10**9, (best_epoch + 1) * per_epoch)))


def refit_model(index: WindowIndex, network_args: dict, train_cfg: TrainConfig, steps: int,
                progress: bool = True, accelerator: str = "auto", init_state: dict | None = None) -> TrainResult:
    """Train a fresh network on every window of ``index`` for exactly ``steps`` optimiser steps.

    The refit that is served: no validation span, so no early stopping and no checkpoint choice (the
    step count comes from the backtest, ``best_steps``); a validation-driven plateau schedule becomes
    a cosine decay over the same budget. Same seed, same architecture as the backtest model; a warm
    start (``init_state``) starts from the same weights the backtest model started from.
    """
    import lightning as L

    starts = index.splits.get("train", index.splits.get("all"))
    if starts is None or len(starts) == 0:
        raise WindowError("no windows to refit on")
    index.splits = {**index.splits, "train": starts}
    L.seed_everything(train_cfg.seed, workers=True, verbose=False)
    per_epoch = min(train_cfg.steps_per_epoch, steps)
    cfg = train_cfg.model_copy(update={"lr_schedule": "cosine" if train_cfg.lr_schedule == "plateau"
                                       else train_cfg.lr_schedule, "devices": 1})
    extra = {k: v for k, v in network_args.items() if k not in ("n_past", "n_future", "horizon")}
    module = ForecastModule(network_args["n_past"], network_args["n_future"], network_args["horizon"],
                            network=extra, train=cfg.model_dump())
    if init_state is not None:
        module.net.load_state_dict(init_state)
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    trainer = L.Trainer(max_epochs=-(-steps // per_epoch), max_steps=steps, accelerator=accelerator, devices=1,
                        deterministic=True, gradient_clip_val=cfg.gradient_clip or None, logger=False,
                        enable_checkpointing=False, limit_val_batches=0, enable_progress_bar=progress,
                        enable_model_summary=False, num_sanity_val_steps=0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*number of training batches.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        warnings.filterwarnings("ignore", ".*validation_step.*no `val_dataloader`.*")  # no validation: by design
        trainer.fit(module, _train_loader(index, cfg, per_epoch))
    budget = {"max_steps": steps, "steps_per_epoch": per_epoch, "batch_size": cfg.batch_size,
              "train_windows": int(len(starts)), "refit": True}
    return TrainResult(module.net.cpu().eval(), network_args, pl.DataFrame(), float("nan"),
                       int(trainer.current_epoch), int(trainer.global_step), budget)


def _event_files(log_dir: Path) -> dict[str, bytes]:
    """The run's TensorBoard event files under stable names (the originals carry a host name, a pid
    and a clock): ``events.out.tfevents.nightcast`` (``.1``, ... if the writer rolled over)."""
    found = sorted(log_dir.glob("events.out.tfevents.*"))
    return {f"events.out.tfevents.nightcast{'' if i == 0 else f'.{i}'}": p.read_bytes() for i, p in enumerate(found)}


def refit_seeds(params: RetrainParams, prepared: Prepared, checked: ValidationResult, trained: list[TrainResult],
                progress: bool, init_state: dict | None = None,
                log: logging.Logger | None = None) -> tuple[list, Prepared | None, dict]:
    """The networks that are served: each seed refit on all history up to the origin for the step count its
    backtest model stopped at (``serve.refit``), or the backtest models themselves."""
    logger = log or logging.getLogger(__name__)
    if not params.serve.refit:
        return [t.net for t in trained], None, {"refit": False}
    from nightcast.tasks.forecast.seeds import refit_seeds_models

    data = prepare_refit(prepared, checked, params)
    steps = [best_steps(t) for t in trained]
    cfgs = [params.train.model_copy(update={"seed": params.train.seed + k}) for k in range(len(trained))]
    nets = [r.net for r in refit_seeds_models(data.index, [t.network_args for t in trained], cfgs, steps, progress,
                                              init_state=init_state, log=logger)]
    logger.info("refit %d network(s) on all %d windows up to %s for %s steps", len(nets),
                len(data.index.splits["train"]), data.train_end, steps)
    return nets, data, {"refit": True, "steps": steps, "windows": int(len(data.index.splits["train"])),
                        "end": str(data.train_end)}
