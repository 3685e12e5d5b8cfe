"""Scale benchmark: nightcast on ragged hourly catalogues, each figure beside a reference from the same run.

    python bench/scale.py                                   # 1,000 and 10,000 series x 2,000 steps
    python bench/scale.py --series 1000 --steps 2000        # one size
    python bench/scale.py --series 10000 --full             # + `nightcast retrain` / `score` wall clock
    python bench/scale.py --million                         # 1,000,000 series, as a user runs them
    make bench-scale / make bench-million

``--million`` (table: ``bench/results/scale-million.md``) writes a ragged 1,000,000 x 200 panel a block
of series at a time, then runs the commands a user would: ``nightcast partition`` into 100 shards,
``nightcast retrain --sample 0.01`` (one shard), ``nightcast score --shards 100`` on a local Dask cluster
of 2 workers; each command's whole process tree is sampled for peak RSS every second, and the
forecasts are counted against the panel's series (each forecast, or named by the run).

For each size a seeded ragged panel (``bench/panel.py``) is written to a temporary directory and
measured in child processes, one per group of steps, so that each group's peak RSS is its own:

- **floor**: bare polars on the same file: read + cast + sort, per-series interpolation,
  per-series mean and std;
- **pipeline**: ``load_observations`` → ``validate_observations`` → ``prepare_training`` (clean,
  features, windows; ``RetrainParams(window=WindowConfig(horizon=24))``); this and the floor run
  ``--repeats`` times each, interleaved, each in a fresh process, and the fastest counts (both are
  memory traffic and page faults, whose cost here moved by a third between processes); then training:
  ``train_model`` for a fixed number of steps against a raw PyTorch loop doing the same work (same
  ``LSTMForecaster`` and arguments, AdamW, gradient clipping, the same sampled batches from
  ``WindowDataset``, the same validation sample after each 50-step epoch), and a one-thread sgemm
  (``torch.mm``) for the peak the LSTM's FLOPs are compared with;
- **score**: a short ``retrain_flow`` writes a bundle, then ``forecast_from_bundle`` is timed;
- **full** (``--full``): the ``nightcast retrain`` and ``nightcast score`` commands as a user runs
  them, and the test-span MASE of what is served against seasonal naive from the new bundle.

Peak RSS: within a child, each step's peak (VmHWM, reset when the step starts) minus the RSS once
the imports are done: above the interpreter's baseline, with what earlier steps still hold. For the
CLI, the command's whole peak RSS (``ru_maxrss`` from ``os.wait4``; the parent stays small, so what a
child inherits from it does not show). The frame's in-memory size is its Arrow IPC size, uncompressed.
Flows report to one ``prefect server`` started for the run (stopped by its process id).
A stage that fails prints its error in the table and the run goes on.
The table goes to stdout and to ``bench/results/scale.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "results" / "scale.md"
HORIZON = 24
STEPS_PER_EPOCH = 50
TARGETS = {"pipeline": 3.0, "memory": 1.0, "training": 0.9, "score": 1_000_000, "full_min": 15.0}


# ---------------------------------------------------------------- measurement helpers (children)

def _status_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS: now; VmHWM: its peak)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    """Start VmHWM again from the current RSS (Linux: /proc/self/clear_refs, value 5)."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


class _Steps:
    """Seconds and peak RSS of each step, above the RSS when created (after the imports).

    The peak is the process's VmHWM, reset at each step's start, so each step has its own
    (what earlier steps still hold counts; their transients do not). ``ru_maxrss`` would not
    do: a child inherits its parent's across fork.
    """

    def __init__(self) -> None:
        self.base = _status_mib("VmRSS")
        self.out: dict[str, dict] = {"baseline_mib": self.base}

    @contextlib.contextmanager
    def step(self, name: str):  # noqa: ANN201 - a context manager
        _reset_peak()
        t0 = time.perf_counter()
        try:
            yield
        except Exception as exc:  # the bench goes on; the table shows the error
            self.out[name] = {"error": _one_line(exc)}
            traceback.print_exc()
        else:
            self.out[name] = {"seconds": time.perf_counter() - t0,
                              "peak_mib": _status_mib("VmHWM") - self.base}

    def ok(self, *names: str) -> bool:
        return all("seconds" in self.out.get(n, {}) for n in names)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def _ipc_bytes(frame) -> int:  # noqa: ANN001 - pl.DataFrame
    """The frame's size as uncompressed Arrow IPC: its buffers, string views included."""

    class Count(io.RawIOBase):
        n = 0

        def writable(self) -> bool:
            return True

        def write(self, b) -> int:  # noqa: ANN001 - bytes-like
            self.n += len(b)
            return len(b)

    sink = Count()
    frame.write_ipc(sink, compression="uncompressed")
    return sink.n


def floor_worker(data: str) -> dict:
    """Bare polars on the same file: read + cast + sort, per-series interpolation and statistics."""
    import polars as pl

    steps = _Steps()
    with steps.step("floor"):
        frame = (pl.read_parquet(data)
                 .with_columns(pl.col("timestamp").cast(pl.Datetime("us")), pl.col("target").cast(pl.Float64))
                 .sort("series_id", "timestamp")
                 .with_columns(pl.col("target").interpolate().over("series_id")))
        stats = frame.group_by("series_id").agg(pl.col("target").mean().alias("mean"),
                                                pl.col("target").std().alias("std"))
        assert stats.height > 0
    if steps.ok("floor"):
        steps.out.update(rows=frame.height, series=stats.height, frame_bytes=_ipc_bytes(frame))
    return steps.out


def lstm_flops(args: dict, batch: int, lookback: int) -> float:
    """FLOPs of one training step of the recurrent encoder: forward 2·B·L·G·H·(F+H) per layer and
    direction (G = 4 gates for an LSTM, 3 for a GRU), backward about twice the forward."""
    hidden, dirs = args["hidden_size"], 2 if args.get("bidirectional") else 1
    gates = 4 if args.get("cell", "lstm") == "lstm" else 3
    total, f_in = 0.0, args["n_past"]
    for _ in range(args.get("num_layers", 1)):
        total += dirs * 2.0 * batch * lookback * gates * hidden * (f_in + hidden)
        f_in = hidden * dirs
    return 3 * total


def sgemm_gflops(n: int = 2048, reps: int = 4) -> float:
    """Measured float32 matrix-multiply peak on torch's current threads."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return 2.0 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def raw_loop(index, model_cfg, cfg) -> int:  # noqa: ANN001 - WindowIndex, ModelConfig, TrainConfig
    """What ``train_model`` does, without Lightning: the same network, batches, optimiser,
    clipping, loss and validation sample after every epoch. Returns the steps taken."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from nightcast.models.network import LSTMForecaster
    from nightcast.tasks.forecast.train import network_args_for
    from nightcast.tasks.data.window import WindowDataset, collate_batch

    torch.manual_seed(cfg.seed)
    net = LSTMForecaster(**network_args_for(index, model_cfg))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    loss_fn = {"mse": torch.nn.MSELoss, "mae": torch.nn.L1Loss, "huber": torch.nn.HuberLoss}[cfg.loss]()
    per_epoch = min(cfg.steps_per_epoch, cfg.max_steps)
    train_ds = WindowDataset(index, index.splits["train"])
    sampler = RandomSampler(train_ds, replacement=True, num_samples=per_epoch * cfg.batch_size,
                            generator=torch.Generator().manual_seed(cfg.seed))
    train = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate_batch)
    val = index.splits["val"]
    if len(val) > cfg.val_windows:
        val = np.sort(np.random.default_rng(cfg.seed).choice(val, cfg.val_windows, replace=False))
    val_loader = DataLoader(WindowDataset(index, val), batch_size=max(cfg.batch_size, 512), collate_fn=collate_batch)
    steps = 0
    while steps < cfg.max_steps:
        net.train()
        for past, future, y in train:
            pred, scale = net(past, future, return_scale=True)
            loss = loss_fn(pred / scale, y / scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.gradient_clip:
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.gradient_clip)
            opt.step()
            steps += 1
            if steps >= cfg.max_steps:
                break
        net.eval()
        with torch.no_grad():
            for past, future, y in val_loader:
                pred, scale = net(past, future, return_scale=True)
                loss_fn(pred / scale, y / scale).item()
    return steps


def _fastest(runs: list[dict]) -> dict:
    """The fastest of repeated runs (and every run's seconds); the first error if one failed."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    best = min(runs, key=lambda r: r["seconds"])
    return {**best, "runs": [r["seconds"] for r in runs], "peak_mib": max(r["peak_mib"] for r in runs)}


def _fastest_process(runs: list[dict], steps: tuple[str, ...]) -> dict:
    """Of whole processes that each ran ``steps``: the steps of the one whose sum was least, each step's
    peak the highest any successful run reached, and every run's sum (``runs`` on the first step; "failed"
    for a run that did not finish them). Only when every run failed, the first failure, step by step (a
    failed extra run never marks the process that went on to train as failed)."""
    done = [r for r in runs if not _err(r, *steps)]
    if not done:  # the first run as it ended: a dead process fails every step, else each step says its own
        r = runs[0]
        return {k: {"error": r["error"]} if "error" in r else r.get(k, {"error": "not run"}) for k in steps}
    total = [sum(r[k]["seconds"] for k in steps) for r in done]
    best = done[total.index(min(total))]
    out = {**best, **{k: {**best[k], "peak_mib": max(r[k]["peak_mib"] for r in done)} for k in steps}}
    if len(runs) > 1:
        out[steps[0]]["runs"] = [sum(r[k]["seconds"] for k in steps) if not _err(r, *steps) else "failed"
                                 for r in runs]
    return out


def pipeline_worker(data: str, train_steps: int, threads: int, repeats: int = 2, data_only: bool = False) -> dict:
    """ingest → validate → prepare, then (unless ``data_only``) Lightning vs the raw loop, then the sgemm peak."""
    import lightning  # noqa: F401 - its import (seconds) is not part of any step
    import torch

    from nightcast.schemas.params import RetrainParams, TrainConfig, WindowConfig
    from nightcast.tasks.data.ingest import load_observations
    from nightcast.tasks.data.prepare import prepare_training
    from nightcast.tasks.forecast.train import network_args_for, train_model
    from nightcast.tasks.data.validate import validate_observations

    torch.set_num_threads(threads)
    params = RetrainParams(window=WindowConfig(horizon=HORIZON))
    steps = _Steps()
    with steps.step("ingest"):
        raw = load_observations(data)
    if steps.ok("ingest"):
        with steps.step("validate"):
            checked = validate_observations(raw, params.clean.max_bad_share)
    if steps.ok("ingest", "validate"):
        with steps.step("prepare"):
            prepared = prepare_training(checked, params)
    if data_only or not steps.ok("prepare"):
        return steps.out
    index = prepared.index
    cfg = TrainConfig(max_steps=train_steps, steps_per_epoch=STEPS_PER_EPOCH)
    args = network_args_for(index, params.model)
    steps.out.update(windows={k: int(len(v)) for k, v in index.splits.items()}, lookback=index.lookback,
                     batch_size=cfg.batch_size, network_args={k: v for k, v in args.items() if k != "target_channels"},
                     flops_per_step=lstm_flops(args, cfg.batch_size, index.lookback))
    del raw, checked
    raw_loop(index, params.model, cfg.model_copy(update={"max_steps": 5}))  # warm the kernels up for both
    runs: dict[str, list[dict]] = {"train_lightning": [], "train_raw": []}
    for _ in range(repeats):  # interleaved; the fastest of each counts (the least disturbed)
        with steps.step("train_lightning"):
            steps.out["lightning_steps"] = train_model(index, params.model, cfg, progress=False).steps
        with steps.step("train_raw"):
            steps.out["raw_steps"] = raw_loop(index, params.model, cfg)
        for k in runs:
            runs[k].append(steps.out[k])
    steps.out.update({k: _fastest(v) for k, v in runs.items()})
    with steps.step("sgemm"):
        steps.out["sgemm_gflops"] = sgemm_gflops()
    return steps.out


def score_worker(data: str, store: str, train_steps: int, threads: int, seeds: int, classical: str) -> dict:
    """A short retrain through ``retrain_flow`` writes a bundle; ``forecast_from_bundle`` is timed."""
    import lightning  # noqa: F401
    import torch

    from nightcast.flows.retrain import retrain_flow
    from nightcast.schemas.params import RetrainParams, ServeConfig, TrainConfig, WindowConfig
    from nightcast.tasks.data.ingest import load_observations
    from nightcast.tasks.ops.registry import load_bundle
    from nightcast.tasks.serving.score import forecast_from_bundle
    from nightcast.tasks.ops.storage import open_store
    from nightcast.tasks.data.validate import validate_observations

    torch.set_num_threads(threads)
    steps = _Steps()
    params = RetrainParams(data=data, window=WindowConfig(horizon=HORIZON), use_tuned=False,
                           train=TrainConfig(max_steps=train_steps, steps_per_epoch=STEPS_PER_EPOCH),
                           serve=ServeConfig(seeds=seeds, classical=classical))
    with steps.step("retrain_flow"):
        out = retrain_flow(params, store=store)
        steps.out["mase"] = _overall_mase(out["metrics"].filter(out["metrics"]["series_id"] == "ALL").to_dicts())
    if not steps.ok("retrain_flow"):
        return steps.out
    with steps.step("score_input"):
        bundle = load_bundle(open_store(store), params.model_name, out["version"])
        checked = validate_observations(load_observations(data))
        as_of = checked.valid["timestamp"].max().date()
    if steps.ok("score_input"):
        import nightcast.models.classical

        spent = {"seconds": 0.0, "histories": 0}
        real = nightcast.models.classical.classical_forecasts

        def timed(values, lengths, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
            t0 = time.perf_counter()
            try:
                return real(values, lengths, *a, **k)
            finally:
                spent["seconds"] += time.perf_counter() - t0
                spent["histories"] += len(lengths)

        nightcast.models.classical.classical_forecasts = timed
        try:
            with steps.step("score"):
                _, report = forecast_from_bundle(bundle, checked.valid, as_of)
                steps.out.update(series_scored=report.series_scored, series_skipped=len(report.skipped))
        finally:
            nightcast.models.classical.classical_forecasts = real
        steps.out["score_classical"] = spent
        if steps.ok("score"):
            with steps.step("score_raw_forward"):
                steps.out["raw_forward_series"] = raw_forward(bundle, report.series_scored)
        with steps.step("theta_reference"):
            steps.out["theta"] = theta_reference(checked.valid)
    return steps.out


THETA_REFERENCE_SERIES = 500


@contextlib.contextmanager
def _env(**values: str):  # noqa: ANN202 - a context manager
    """Set these environment variables while the block runs, then put back what was there."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def theta_reference(valid) -> dict:  # noqa: ANN001 - a polars frame
    """The vectorised Theta (what scoring fits) against statsforecast's ``Theta`` (one series at a time, one
    process) on the same histories: each series' last ``tail_length`` observed values, the first
    ``THETA_REFERENCE_SERIES`` series with a full tail. Seconds per history and how far the forecasts differ."""
    import numpy as np
    import polars as pl

    import nightcast.models.classical as classical
    from nightcast.models.theta import theta_forecasts

    season, tail = 24, classical.tail_length(24, HORIZON)
    last = (valid.drop_nulls("target").sort("series_id", "timestamp").group_by("series_id", maintain_order=True)
            .agg(pl.col("target").tail(tail)).filter(pl.col("target").list.len() == tail)
            .head(THETA_REFERENCE_SERIES))
    values = last["target"].explode().to_numpy().astype(np.float64)
    lengths = np.full(last.height, tail)
    t0 = time.perf_counter()
    ours = theta_forecasts(values, lengths, HORIZON, season)
    t_ours = time.perf_counter() - t0
    with _env(NIGHTCAST_CLASSICAL_JOBS="1"):  # statsforecast on one process, as the vectorised fit
        t0 = time.perf_counter()
        ref = classical.statsforecast_forecasts(values, lengths, HORIZON, season, "theta")
        t_ref = time.perf_counter() - t0
    rel = np.abs(ours - ref) / np.maximum(np.abs(ref), 1e-9)
    return {"histories": int(last.height), "tail": tail, "ours_s": t_ours, "statsforecast_s": t_ref,
            "rel_median": float(np.nanmedian(rel)), "rel_p99": float(np.nanpercentile(rel, 99)),
            "rel_max": float(np.nanmax(rel))}


def _inference_threads(torch_threads: int) -> int:
    """The threads scoring runs its batches on with ``torch_threads`` intra-op threads (``inference_threads``)."""
    import torch

    from nightcast.tasks.forecast.predict import inference_threads

    before = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    try:
        return inference_threads()
    finally:
        torch.set_num_threads(before)


def raw_forward(bundle, n: int) -> int:  # noqa: ANN001 - a registry Bundle
    """The reference for scoring: a bare ``torch.nn.LSTM`` + linear head of the bundle's size, one forward
    per served seed over ``n`` random windows of its lookback (no data path, no scalers, no serving), in
    scoring's batches (``SCORE_BATCH``, the fastest size here: one batch of every window ran 1.9x slower)
    on as many threads as scoring runs its batches on (``inference_threads``)."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from nightcast.tasks.forecast.predict import inference_threads
    from nightcast.tasks.serving.score import SCORE_BATCH

    args = bundle.config["network_args"]
    lookback = bundle.config["params"]["window"]["lookback"]
    seeds = len(bundle.networks())
    lstm = torch.nn.LSTM(args["n_past"], args["hidden_size"], args["num_layers"], batch_first=True)
    head = torch.nn.Linear(args["hidden_size"], args["horizon"])
    x = torch.randn(n, lookback, args["n_past"])

    def batch(i: int) -> None:
        with torch.inference_mode():
            for _ in range(seeds):
                head(lstm(x[i:i + SCORE_BATCH])[0][:, -1])

    with ThreadPoolExecutor(inference_threads()) as pool:
        list(pool.map(batch, range(0, n, SCORE_BATCH)))
    return n


def _task_seconds(flow_run_id) -> dict[str, list[float]]:  # noqa: ANN001 - UUID
    """Run seconds of each task of a flow run, by step name, as the Prefect API recorded them."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    out: dict[str, list[float]] = {}
    for run in runs:
        name = next((s for s in ("read-and-score-shards", "read-shard", "score-shard", "list-series", "assemble-shards")
                     if run.name.startswith(s)),
                    run.name.rsplit("-", 1)[0])
        out.setdefault(name, []).append(run.total_run_time.total_seconds())
    return out


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def workers_worker(data: str, store: str, shards: int, counts: list[int]) -> dict:
    """The score flow on the bundle ``score_worker`` wrote. With no ``counts``: one process (thread pool,
    unsharded) with the defaults (inference, polars, and statsforecast's classical fits when chosen, on every
    core; the process's first flow run: conservative). With ``counts`` (run in a process started with
    ``POLARS_MAX_THREADS=1``, so that every process of these rows has one core): unsharded on one core
    (``NIGHTCAST_CLASSICAL_JOBS=1``, ``NIGHTCAST_INFERENCE_THREADS=1``: the reference of the worker rows),
    then sharded on a Dask ``LocalCluster`` of 1, 2, ... worker processes of one thread each (their polars
    pools inherit the one thread) on the shard layout; each configuration (the unsharded one included) has
    a warm run (the workers' imports), then counts the fastest of two timed runs. Per-task seconds come
    from the Prefect API."""
    from nightcast.flows.embedded import without_heartbeats

    # as the CLI's embedded default runs them: no heartbeat thread, whose 1 s sleeps made each run's end
    # wait for the next whole second (a flow that sleeps 0.3 s took 1.0 s; 1.3 s took 2.0 s), so every
    # time below would land on whole seconds, the sharded and the unsharded alike
    with without_heartbeats():
        return _workers_runs(data, store, shards, counts)


def _workers_runs(data: str, store: str, shards: int, counts: list[int]) -> dict:
    from distributed import Client

    from nightcast.flows.runtime import local_cluster, task_runner
    from nightcast.flows.score import score_flow
    from nightcast.schemas.params import ScoreParams, Settings
    from nightcast.tasks.serving.shard import write_shard_layout

    steps = _Steps()
    if not counts:
        with steps.step("flow_1proc_cores"):  # the default: inference on every core
            score_flow(ScoreParams(data=data), store=store)
        return steps.out
    layout = str(Path(store) / "layout")
    with steps.step("partition"):
        write_shard_layout(data, layout, shards)
    # the reference for the workers: one core, as each worker has; its first run warms the process, as each
    # Dask configuration's first run does
    with _env(NIGHTCAST_CLASSICAL_JOBS="1", NIGHTCAST_INFERENCE_THREADS="1"):
        score_flow(ScoreParams(data=data), store=store)
    with _env(NIGHTCAST_CLASSICAL_JOBS="1", NIGHTCAST_INFERENCE_THREADS="1"):
        state = _fastest_of_two(steps, "flow_1proc", lambda: score_flow(ScoreParams(data=data), store=store,
                                                                        return_state=True))
    if state is not None:
        steps.out["series"] = state.result()["series"]
    for k in counts:
        with steps.step(f"cluster_{k}"):
            cluster = local_cluster(n_workers=k)  # as NIGHTCAST_DASK_ADDRESS=local starts it
        if not steps.ok(f"cluster_{k}"):  # recorded: the table says why
            continue
        try:
            flow = score_flow.with_options(task_runner=task_runner(Settings(dask_address=cluster.scheduler_address)))
            with steps.step(f"warm_{k}"):
                flow(ScoreParams(data=layout, shards=shards), store=store)
            state = _fastest_of_two(steps, f"dask_{k}", lambda: flow(ScoreParams(data=layout, shards=shards),
                                                                      store=store, return_state=True))
            if state is not None:
                steps.out[f"series_{k}"] = state.result()["series"]
                steps.out[f"tasks_{k}"] = _task_seconds(state.state_details.flow_run_id)
                with Client(cluster) as client:  # each worker's peak RSS over both runs (MiB)
                    steps.out[f"worker_peak_mib_{k}"] = sorted(client.run(_peak_rss_mib).values())
        finally:
            cluster.close()
    return steps.out


def _fastest_of_two(steps: _Steps, name: str, run: Callable[[], Any]) -> Any:
    """``run()`` (a flow run returning its state) twice, timed as steps; ``steps.out[name]`` is the fastest
    (``_fastest``: one run's time moves by several % on this machine), and its state is returned, or None
    when either run failed (the step records why)."""
    states = []
    for r in range(2):
        with steps.step(f"{name}_{r}"):
            state = run()
            state.result()  # a failed run raises here, inside its step
            states.append(state)
    runs = [steps.out.pop(f"{name}_{r}") for r in range(2)]
    steps.out[name] = _fastest(runs)
    return states[min(range(2), key=lambda r: runs[r]["seconds"])] if steps.ok(name) else None


def _overall_mase(rows: list[dict]) -> dict[str, float]:
    """model -> test-span MASE over all series, from metric rows (``series_id == "ALL"``)."""
    return {r["model"]: float(r["mase"]) for r in rows if r.get("series_id") == "ALL"}


# ---------------------------------------------------------------- orchestration (parent)

def _run_child(cmd: list[str], env: dict[str, str], log: Path, timeout: float,
               watch: "TreeSampler | None" = None) -> tuple[int, float, float]:
    """(exit code, seconds, the child's own peak RSS in MiB); killed (with its group) past ``timeout``.
    ``watch`` samples the RSS of the child's whole process tree while it runs."""
    t0 = time.perf_counter()
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
    timer.start()
    if watch is not None:
        watch.start(proc.pid)
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
        if watch is not None:
            watch.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t0, usage.ru_maxrss / 1024


def _worker(kind: str, args: list[str], env: dict[str, str], tmp: Path, timeout: float) -> dict:
    """Run one worker child; its JSON result, or ``{"error": ...}`` with the tail of its log."""
    result, log = tmp / f"{kind}.json", tmp / f"{kind}.log"
    result.unlink(missing_ok=True)  # a repeat that dies before writing must not return the last run's result
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--result", str(result), *args]
    try:
        code, secs, _ = _run_child(cmd, env, log, timeout)
    except OSError as exc:
        return {"error": _one_line(exc)}
    print(f"    {kind}: {secs:.1f} s in its process", flush=True)
    if result.exists():
        return json.loads(result.read_text())
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
    return {"error": f"worker {kind} exited {code}: {tail[0][:300] if tail else 'no output'}"}


@contextlib.contextmanager
def prefect_server(tmp: Path, env: dict[str, str], timeout: float = 180):  # noqa: ANN201
    """``prefect server start`` on a free port with its own PREFECT_HOME; yields the API URL."""
    from nightcast.flows.embedded import free_port

    port = free_port()
    env = {**env, "PREFECT_HOME": str(tmp / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    exe = Path(sys.executable).with_name("prefect")
    with (tmp / "prefect-server.log").open("wb") as log:
        proc = subprocess.Popen([str(exe), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"prefect server did not start in {timeout:.0f}s (log: "
                                       f"{(tmp / 'prefect-server.log').read_text(errors='replace')[-300:]!r})")
                time.sleep(0.5)
        yield url
    finally:
        from nightcast.flows.embedded import stop_child

        stop_child(proc, group=True)


def full_run(data: Path, store: Path, env: dict[str, str], tmp: Path, timeout: float, serve: list[str]) -> dict:
    """``nightcast retrain`` then ``nightcast score``, as a user runs them; MASE from the new bundle."""
    exe = str(Path(sys.executable).with_name("nightcast"))
    out: dict = {}
    for name, cmd in (("cli_retrain", [exe, "retrain", "--data", str(data), "--store", str(store),
                                       "--horizon", str(HORIZON), "--no-tuned", *serve]),
                      ("cli_score", [exe, "score", "--data", str(data), "--store", str(store)])):
        try:
            code, secs, peak = _run_child(cmd, env, tmp / f"{name}.log", timeout)
        except OSError as exc:
            out[name] = {"error": _one_line(exc)}
            continue
        if code != 0:
            err = [ln for ln in (tmp / f"{name}.log").read_text(errors="replace").splitlines() if ln.startswith("error:")]
            out[name] = {"error": (err[-1] if err else f"exit code {code}")[:300]}
        else:
            out[name] = {"seconds": secs, "peak_mib": peak}
    metrics = sorted(store.glob("models/*/versions/*/metrics.json"))
    if metrics:
        out["mase"] = _overall_mase(json.loads(metrics[-1].read_text()).get("test", []))
    return out


def measure_size(n: int, t: int, args: argparse.Namespace, tmp: Path, env: dict[str, str],
                 api_url: str | None, server_error: str | None) -> dict:
    """Every measurement for one panel size."""
    res: dict = {"series": n, "steps": t}
    data = tmp / f"panel-{n}x{t}.parquet"
    print(f"[{n} x {t}] generating the panel ...", flush=True)
    res["generate"] = _worker("generate", ["--data", str(data), "--shape", str(n), str(t), "--seed", str(args.seed)],
                              env, tmp, args.timeout)
    if "error" in res["generate"]:
        return res
    common = ["--data", str(data), "--threads", str(args.threads)]
    serve = ["--seeds", str(args.seeds), "--classical", args.classical]
    # The data path and its floor are mostly memory traffic and page faults, whose cost on a shared VM moves
    # by a third from one process to the next: each runs `repeats` times, interleaved, each in a fresh
    # process (as a retrain would), and the fastest counts; the last data run goes on to train.
    floors, data_runs = [], []
    for i in range(args.repeats):
        print(f"[{n} x {t}] floor ({i + 1} of {args.repeats}) ...", flush=True)
        floors.append(_worker("floor", common, env, tmp, args.timeout))
        if i < args.repeats - 1:
            print(f"[{n} x {t}] ingest -> validate -> prepare ({i + 1} of {args.repeats}) ...", flush=True)
            data_runs.append(_worker("data", common, env, tmp, args.timeout))
    print(f"[{n} x {t}] ingest -> validate -> prepare ({args.repeats} of {args.repeats}), training ...", flush=True)
    res["pipeline"] = _worker("pipeline", [*common, "--train-steps", str(args.train_steps),
                                           "--repeats", str(args.repeats)], env, tmp, args.timeout)
    res["floor"] = _fastest_process(floors, ("floor",))
    res["pipeline"].update(_fastest_process([*data_runs, res["pipeline"]], ("ingest", "validate", "prepare")))
    flow_env = {**env, "PREFECT_API_URL": api_url} if api_url else None
    if flow_env is None:
        res["score"] = res["full"] = {"error": f"no Prefect API: {server_error}"}
        return res
    print(f"[{n} x {t}] short retrain_flow, scoring ...", flush=True)
    res["score"] = _worker("score", [*common, *serve, "--train-steps", str(args.score_train_steps),
                                     "--store", str(tmp / f"store-{n}")], flow_env, tmp, args.timeout)
    if n == max(args.series) and args.workers and "error" not in res["score"]:
        print(f"[{n} x {t}] score flow on 1 process, then on Dask with {args.workers} workers ...", flush=True)
        where = ["--data", str(data), "--store", str(tmp / f"store-{n}"), "--shards", str(args.shards)]
        default = _worker("workers", [*where, "--counts"], flow_env, tmp, args.timeout)
        res["workers"] = {**_worker("workers", [*where, "--counts", *map(str, args.workers)],
                                    {**flow_env, "POLARS_MAX_THREADS": "1"}, tmp, args.timeout),
                          "flow_1proc_cores": default.get("flow_1proc_cores", {"error": default.get("error", "?")})}
    if args.full:
        print(f"[{n} x {t}] nightcast retrain + score ...", flush=True)
        res["full"] = full_run(data, tmp / f"store-cli-{n}", flow_env, tmp, args.timeout, serve)
    return res


# ---------------------------------------------------------------- a million series (--million)

GIB = 2**30
MILLION_PROCESS_LIMIT_GIB = 8.0
"""Issue 19's bound: no process of the run above this."""


class TreeSampler:
    """Peak RSS of every process in a command's tree (the command and all its descendants: Prefect's task
    threads share the command's process; Dask's LocalCluster workers and statsforecast's pool workers are
    processes of their own), sampled every ``every`` seconds with psutil."""

    def __init__(self, every: float = 1.0) -> None:
        self.every, self.peaks, self._stop = every, {}, threading.Event()  # pid -> (peak bytes, role)
        self._thread: threading.Thread | None = None

    def start(self, pid: int) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(pid,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @staticmethod
    def _role(proc, root: int) -> str:  # noqa: ANN001 - psutil.Process
        if proc.pid == root:
            return "the command (flow)"
        cmd = " ".join(proc.cmdline())
        if "spawn_main" in cmd or "distributed" in cmd:
            return "Dask process (worker / nanny)"
        if "nightcast.flows.embedded" in cmd:
            return "embedded Prefect server"
        return "forked worker (statsforecast pool)"

    def _run(self, pid: int) -> None:
        import psutil

        try:
            root = psutil.Process(pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                return
            for p in procs:
                try:
                    rss = p.memory_info().rss
                    if rss > self.peaks.get(p.pid, (0, ""))[0]:
                        self.peaks[p.pid] = (rss, self.peaks.get(p.pid, (0, ""))[1] or self._role(p, pid))
                except psutil.Error:
                    continue
            self._stop.wait(self.every)

    def by_role(self) -> dict[str, tuple[float, int]]:
        """role -> (largest peak in GiB, processes seen)."""
        out: dict[str, tuple[float, int]] = {}
        for rss, role in self.peaks.values():
            peak, n = out.get(role, (0.0, 0))
            out[role] = (max(peak, rss / GIB), n + 1)
        return out


def million_run(args: argparse.Namespace, tmp: Path, env: dict[str, str], api_url: str | None) -> dict:
    """A ragged 1,000,000-series panel end to end as a user runs it, each command's process tree sampled:
    panel (streamed), ``nightcast partition``, ``nightcast retrain --shards --sample`` (every shard validated
    and cleaned on the cluster, the network trained on a sample of every shard's series) and ``nightcast score``
    on a local Dask cluster, and the forecasts counted."""
    import polars as pl

    n, t = args.million_series, args.million_steps
    exe = str(Path(sys.executable).with_name("nightcast"))
    data, layout, store = tmp / "panel.parquet", tmp / "layout", tmp / "store"
    flow_env = {**env, "PREFECT_API_URL": api_url} if api_url else dict(env)
    dask = {"NIGHTCAST_DASK_ADDRESS": "local", "NIGHTCAST_DASK_LOCAL_WORKERS": str(args.million_workers)}
    steps = [
        ("panel", [sys.executable, str(REPO / "bench" / "panel.py"), str(n), str(t), str(data), "--seed",
                   str(args.seed), "--stream"], env),
        ("partition", [exe, "partition", "--data", str(data), "--out", str(layout), "--shards",
                       str(args.million_shards)], env),
        ("retrain", [exe, "retrain", "--data", str(layout), "--store", str(store), "--horizon", str(HORIZON),
                     "--shards", str(args.million_shards), "--sample", str(args.million_sample),
                     "--max-steps", str(args.score_train_steps), "--no-tuned",
                     "--seeds", str(args.seeds), "--classical", args.classical], {**flow_env, **dask}),
        ("score", [exe, "score", "--data", str(layout), "--store", str(store), "--shards", str(args.million_shards)],
         {**flow_env, **dask}),
    ]
    res: dict = {"series": n, "steps": t, "runs": {}}
    for name, cmd, step_env in steps:
        print(f"[1M] {name}: {' '.join(cmd[1:])}", flush=True)
        watch = TreeSampler()
        log = tmp / f"million-{name}.log"
        code, secs, _ = _run_child(cmd, step_env, log, args.timeout, watch)
        run = {"seconds": secs, "code": code, "roles": watch.by_role(),
               "command": " ".join(["nightcast" if c == exe else Path(c).name if c == sys.executable else c
                                    for c in cmd]).replace(str(tmp) + "/", "").replace(str(REPO) + "/", "")}
        if code != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            run["error"] = " / ".join(tail)[-400:]
        res["runs"][name] = run
        print(f"    {secs:.0f} s, exit {code}, peaks {run['roles']}", flush=True)
        if code != 0:
            return res
        if name == "retrain":
            m = re.search(r"cleaned (\d+) valid rows of (\d+) series in (\d+) shards \((\d+) quarantined\) in (\d+) "
                          r"process\(es\); training sample: (\d+) series, (\d+) rows", log.read_text(errors="replace"))
            if m:
                res["retrain_cleaned"] = dict(zip(("rows", "series", "shards", "quarantined", "processes",
                                                   "sample_series", "sample_rows"), map(int, m.groups())))
        if name == "score":
            out = log.read_text(errors="replace")
            m = re.search(r"(\d+) rows, (\d+) series", out)
            more = re.search(r"and (\d+) more skipped", out)
            res["skipped"] = (20 + int(more.group(1))) if more else out.count("  skipped ")
            res["reported_series"] = int(m.group(2)) if m else None
    files = sorted(store.glob("forecasts/**/*.parquet"))
    res["forecast_series"] = pl.scan_parquet(files).select(pl.col("series_id").n_unique()).collect().item()
    res["panel_series"] = pl.scan_parquet(data).select(pl.col("series_id").n_unique()).collect().item()
    res["rows"] = pl.scan_parquet(data).select(pl.len()).collect().item()
    return res


def million_table(res: dict, args: argparse.Namespace, started: dt.datetime, wall: float) -> str:
    import polars as pl

    lines = [
        "# A million series on one machine",
        "",
        f"`{' '.join(['python bench/scale.py', *sys.argv[1:]])}` — {started:%Y-%m-%d %H:%M} UTC, {wall / 60:.1f} min; "
        f"{platform.platform()}, {os.cpu_count()} cores, {_mem_gib():.0f} GiB, Python {platform.python_version()}, "
        f"polars {pl.__version__}; panel seed {args.seed}; horizon {HORIZON}.",
        "",
        f"A ragged hourly panel of {res['series']:,} series x up to {res['steps']:,} steps"
        + (f" ({res['rows']:,} rows)" if "rows" in res else "")
        + f", written to the shard layout ({args.million_shards} shards), retrained with every shard validated and "
        f"cleaned on a local Dask cluster of {args.million_workers} workers and the network trained on a "
        f"{args.million_sample:g} sample of every shard's series (`--shards {args.million_shards} --sample "
        f"{args.million_sample:g}`, {args.score_train_steps} optimiser steps, {args.seeds} seed(s), classical "
        f"`{args.classical}`), and scored on the same kind of cluster. Peak RSS: every process of each command's "
        "tree, sampled each second (psutil); the largest per kind of process.",
        "",
        "| step | command | seconds | peak RSS by process (GiB) | ≤ 8 GiB each |",
        "|---|---|---|---|---|",
    ]
    for name, run in res["runs"].items():
        roles = "; ".join(f"{role} {peak:.2f}" + (f" (x{k})" if k > 1 else "")
                          for role, (peak, k) in sorted(run["roles"].items(), key=lambda kv: -kv[1][0]))
        ok = all(peak <= MILLION_PROCESS_LIMIT_GIB for peak, _ in run["roles"].values())
        note = f" **failed**: {run['error']}" if "error" in run else ""
        lines.append(f"| {name} | `{run['command']}` | {run['seconds']:,.0f} | {roles}{note} | "
                     f"{'yes' if ok else '**no**'} |")
    total = sum(r["seconds"] for r in res["runs"].values())
    lines += ["", f"All steps: {total / 60:.1f} min."]
    if "retrain_cleaned" in res:
        c = res["retrain_cleaned"]
        lines += [f"Retrain: {c['rows']:,} valid rows of {c['series']:,} series validated and cleaned in "
                  f"{c['shards']} shards by {c['processes']} worker process(es) ({c['quarantined']:,} quarantined); "
                  f"the flow's process received the training sample only: {c['sample_series']:,} series, "
                  f"{c['sample_rows']:,} rows."]
    if "forecast_series" in res:
        lines += [f"Series forecast: **{res['forecast_series']:,} of {res['panel_series']:,}**; the run named "
                  f"{res.get('skipped', 0):,} as not forecast (stale: the panel's early-ending series); "
                  f"{res['panel_series'] - res['forecast_series'] - res.get('skipped', 0):,} unaccounted."]
    return "\n".join(lines) + "\n"


def _mem_gib() -> float:
    import psutil

    return psutil.virtual_memory().total / GIB


# ---------------------------------------------------------------- the table

def _f(x: float, digits: int = 2) -> str:
    return f"{x:,.{digits}f}"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _err(d: dict, *keys: str) -> str | None:
    """The first error among ``keys`` of a result (or of the whole result)."""
    if "error" in d:
        return d["error"]
    for k in keys:
        if "error" in d.get(k, {}):
            return f"{k}: {d[k]['error']}"
        if k not in d:
            return f"{k}: not run"
    return None


def step_rows(res: dict) -> list[str]:
    """Seconds and peak RSS of every step measured for one size."""
    rows = []
    pipe, floor, score, full = (res.get(k, {}) for k in ("pipeline", "floor", "score", "full"))
    frame = floor.get("frame_bytes")

    def row(label: str, d: dict, note: str = "", per_frame: bool = False) -> None:
        if "error" in d:
            rows.append(f"| {label} | error: {d['error']} | | {note} |")
            return
        if "seconds" not in d:
            return
        mem = ""
        if "peak_mib" in d:
            mem = f"{_f(d['peak_mib'], 0)} MiB"
            if per_frame and frame:
                mem += f" ({d['peak_mib'] * 2**20 / frame:.1f}× frame)"
        rows.append(f"| {label} | {_f(d['seconds'])} | {mem} | {note} |")

    row("generate the panel (bench/panel.py)", res.get("generate", {}))
    def fastest(d: dict, what: str) -> str:
        runs = ", ".join(x if isinstance(x, str) else _f(x) for x in d.get("runs", []))
        return f"; fastest of {len(d['runs'])} processes ({what}: {runs} s)" \
            if "runs" in d else ""

    row("floor: polars read + sort + interpolate + mean/std", floor.get("floor", floor),
        "its own process" + fastest(floor.get("floor", {}), "seconds"), True)
    if "error" in pipe:
        row("pipeline process", pipe)
    for k, label in (("ingest", "ingest (`load_observations`)"), ("validate", "validate (`validate_observations`)"),
                     ("prepare", "clean + features + windows (`prepare_training`)")):
        row(label, pipe.get(k, {}), "one process from here on" + fastest(pipe.get(k, {}), "the three steps"), True)
    for k, label in (("train_lightning", "train: `train_model` (Lightning)"),
                     ("train_raw", "train: raw PyTorch loop, same work"), ("sgemm", "sgemm peak (torch.mm 2048²)")):
        d = pipe.get(k, {})
        row(label, d, f"fastest of {', '.join(_f(x) for x in d['runs'])} s" if "runs" in d else "")
    if "error" in score:
        row("score process", score)
    row("short `retrain_flow` (bundle for scoring)", score.get("retrain_flow", {}), "its own process")
    row("score input: ingest + validate", score.get("score_input", {}))
    row("score: raw LSTM forward (reference)", score.get("score_raw_forward", {}), "same seeds, hidden size, lookback")
    row("score: `forecast_from_bundle`", score.get("score", {}),
        f"{score.get('series_scored', '')} series scored, {score.get('series_skipped', '')} skipped"
        if "series_scored" in score else "")
    row("`nightcast retrain` (CLI)", full.get("cli_retrain", {}), "its own process; RSS: its whole peak")
    row("`nightcast score` (CLI)", full.get("cli_score", {}), "its own process; RSS: its whole peak")
    return rows


def target_rows(res: dict, args: argparse.Namespace) -> list[str]:
    """Measured value, reference, ratio, target and verdict of each target."""
    rows = []
    pipe, floor, score, full = (res.get(k, {}) for k in ("pipeline", "floor", "score", "full"))

    def row(label: str, measured: str, ref: str, ratio: str, target: str, verdict: str) -> None:
        rows.append(f"| {label} | {measured} | {ref} | {ratio} | {target} | {verdict} |")

    def failed(label: str, target: str, why: str) -> None:
        row(label, f"error: {why}", "", "", target, "**not measured**")

    label = "ingest → validate → prepare vs polars floor"
    if (why := _err(pipe, "ingest", "validate", "prepare") or _err(floor, "floor")):
        failed(label, f"≤ {TARGETS['pipeline']:g}×", why)
    else:
        ours = sum(pipe[k]["seconds"] for k in ("ingest", "validate", "prepare"))
        ref = floor["floor"]["seconds"]
        row(label, f"{_f(ours)} s", f"{_f(ref)} s", f"{ours / ref:.1f}×", f"≤ {TARGETS['pipeline']:g}×",
            _verdict(ours / ref <= TARGETS["pipeline"]))
        peak = max(pipe[k]["peak_mib"] for k in ("ingest", "validate", "prepare"))
        ref = floor["floor"]["peak_mib"]
        row("peak RSS ingest → prepare vs the polars floor's peak", f"{_f(peak, 0)} MiB ({peak * 2**20 / floor['frame_bytes']:.1f}× frame)",
            f"{_f(ref, 0)} MiB", f"{peak / ref:.2f}×", f"≤ {TARGETS['memory']:g}×", _verdict(peak / ref <= TARGETS["memory"]))
    label = "training windows/s: `train_model` vs raw loop"
    if (why := _err(pipe, "train_lightning", "train_raw")):
        failed(label, f"≥ {TARGETS['training']:g}×", why)
    else:
        b = pipe["batch_size"]
        ours = pipe["lightning_steps"] * b / pipe["train_lightning"]["seconds"]
        ref = pipe["raw_steps"] * b / pipe["train_raw"]["seconds"]
        row(label, f"{_f(ours, 0)}/s", f"{_f(ref, 0)}/s", f"{ours / ref:.3f}×", f"≥ {TARGETS['training']:g}×",
            _verdict(ours / ref >= TARGETS["training"]))
        if "seconds" in pipe.get("sgemm", {}):
            flops = pipe["flops_per_step"]
            for who, steps_key, secs_key in (("Lightning", "lightning_steps", "train_lightning"),
                                              ("raw loop", "raw_steps", "train_raw")):
                got = flops * pipe[steps_key] / pipe[secs_key]["seconds"] / 1e9
                row(f"LSTM GFLOP/s of a training step ({who}) vs sgemm peak", f"{_f(got, 1)} GFLOP/s",
                    f"{_f(pipe['sgemm_gflops'], 1)} GFLOP/s", f"{got / pipe['sgemm_gflops']:.1%}", "report", "—")
    label = "scoring series/minute, network + baselines (`forecast_from_bundle` less the classical fits)"
    if (why := _err(score, "score")):
        failed(label, f"≥ {TARGETS['score']:,}", why)
    else:
        n, total = score["series_scored"], score["score"]["seconds"]
        classical = score.get("score_classical", {"seconds": 0.0, "histories": 0})
        per_min = n / (total - classical["seconds"]) * 60
        raw = score.get("score_raw_forward", {}).get("seconds")
        ref = n / raw * 60 if raw else None
        row(label, f"{_f(per_min, 0)}", f"{_f(ref, 0)} (raw LSTM forward, same seeds, batches and threads)" if ref else "—",
            f"{per_min / ref:.2f}× raw; {per_min / TARGETS['score']:.2f}× target" if ref
            else f"{per_min / TARGETS['score']:.2f}× target", f"≥ {TARGETS['score']:,}",
            _verdict(per_min >= TARGETS["score"]))
        row("scoring series/minute, all of `forecast_from_bundle` (classical fits included)", f"{_f(n / total * 60, 0)}",
            f"classical fits {_f(classical['seconds'])} s on {classical['histories']:,} series", "", "report", "—")
    if "theta" in score:
        th = score["theta"]
        per = th["ours_s"] / th["histories"] * 1000
        ref_per = th["statsforecast_s"] / th["histories"] * 1000
        row(f"Theta fit per history of {th['tail']} steps, vectorised vs statsforecast (same {th['histories']} histories, "
            "one core)", f"{per:.3f} ms", f"{ref_per:.2f} ms", f"{th['statsforecast_s'] / th['ours_s']:.0f}× faster", "report",
            f"forecasts differ by {th['rel_median']:.1e} (median), {th['rel_p99']:.1e} (99th pct), {th['rel_max']:.1e} (max), relative")
    if args.full:
        label = "`nightcast retrain` + `nightcast score` wall clock"
        if (why := _err(full, "cli_retrain", "cli_score")):
            failed(label, f"< {TARGETS['full_min']:g} min", why)
        else:
            minutes = (full["cli_retrain"]["seconds"] + full["cli_score"]["seconds"]) / 60
            at_size = res["series"] >= 10_000 and res["steps"] >= 2_000
            row(label, f"{_f(minutes, 1)} min", f"{TARGETS['full_min']:g} min", f"{minutes / TARGETS['full_min']:.2f}×",
                f"< {TARGETS['full_min']:g} min at 10,000 × 2,000",
                _verdict(minutes < TARGETS["full_min"]) if at_size else "— (other size)")
    for who, d in (("short retrain_flow", score), ("`nightcast retrain`", full if args.full else {})):
        m = d.get("mase", {})
        if "served" in m and "seasonal_naive" in m:
            row(f"test-span MASE, served vs seasonal naive ({who})", _f(m["served"], 3), _f(m["seasonal_naive"], 3),
                f"{m['served'] / m['seasonal_naive']:.2f}×", "report (< 1× beats the baseline)", "—")
    return rows


def scaling_rows(res: dict, args: argparse.Namespace) -> list[str]:
    """The worker-scaling table and the 1M-series estimate made from its per-task costs."""
    w = res.get("workers")
    if not w:
        return []
    lines = ["", f"### Scoring on workers ({args.shards} shards, Dask `LocalCluster`, 1 thread per worker, "
                 "each process on one core: `POLARS_MAX_THREADS=1`)", ""]
    if "error" in w:
        return [*lines, f"error: {w['error']}"]
    n = w.get("series", res["series"])
    lines += ["| run | seconds | series/min | vs 1 process | vs 1 worker |", "|---|---|---|---|---|"]
    base = w.get("flow_1proc", {}).get("seconds")
    one = w.get("dask_1", {}).get("seconds")
    if base:
        lines.append(f"| score flow, 1 process, unsharded, one core (`NIGHTCAST_CLASSICAL_JOBS=1`, `NIGHTCAST_INFERENCE_THREADS=1`, `POLARS_MAX_THREADS=1`) | {_f(base)} | "
                     f"{_f(n / base * 60, 0)} | 1.00× | |")
    cores = w.get("flow_1proc_cores", {}).get("seconds")
    if base and cores:
        lines.append(f"| score flow, 1 process, unsharded, default (polars, inference and statsforecast's fits on {os.cpu_count()} cores) | "
                     f"{_f(cores)} | {_f(n / cores * 60, 0)} | {base / cores:.2f}× | |")
    for k in args.workers:
        d = w.get(f"dask_{k}", {})
        if "seconds" not in d:
            lines.append(f"| Dask, {k} worker(s) | error: {d.get('error', 'not run')} | | | |")
            continue
        sec = d["seconds"]
        lines.append(f"| score flow on Dask, {k} worker(s), shard layout | {_f(sec)} | {_f(n / sec * 60, 0)} | "
                     f"{base / sec:.2f}× | {one / sec:.2f}× |" if base and one else f"| Dask {k} | {_f(sec)} | | | |")
    tasks = w.get("tasks_1") or {}
    shard_tasks = tasks.get("read-and-score-shards", []) + tasks.get("read-shard", []) + tasks.get("score-shard", [])
    if not (one and shard_tasks):
        return lines
    read, score = sum(tasks.get("read-shard", [])), sum(tasks.get("score-shard", []))
    fused = sum(tasks.get("read-and-score-shards", []))
    n_shards = args.shards
    serial = sum(tasks.get("list-series", [0])) + sum(tasks.get("assemble-shards", [0]))
    other = max(one - read - score - fused - serial, 0.0)
    shard_line = (f"read-and-score-shards {_f(fused)} s in {len(tasks.get('read-and-score-shards', []))} task(s) of "
                  "consecutive shards (one pass: no input staged)"
                  if fused else f"read-shard {_f(read)} s, score-shard {_f(score)} s in {len(shard_tasks)} tasks")
    plan = (f"list-series {_f(sum(tasks['list-series']))} s" if "list-series" in tasks
            else "no list-series (planned from the layout's manifest)")
    lines += ["", "Per-task costs of the 1-worker run (Prefect API task run times): "
              f"{plan}, {shard_line}, assemble-shards "
              f"{_f(sum(tasks.get('assemble-shards', [0])))} s, the rest of the flow (planning, calendar, "
              f"dispatch) {_f(other)} s; peak RSS of each worker process "
              f"{', '.join(_f(m, 0) + ' MiB' for m in w.get('worker_peak_mib_1', []))} (1 worker), "
              f"{', '.join(_f(m, 0) + ' MiB' for m in w.get(f'worker_peak_mib_{max(args.workers)}', []))} "
              f"({max(args.workers)} workers), with {n // n_shards:,} series per shard; cluster start {_f(w.get('cluster_1', {}).get('seconds', 0))} s, "
              f"`nightcast partition` {_f(w.get('partition', {}).get('seconds', 0))} s (not in the runs)."]
    per_series = (read + score + fused) / n
    from nightcast.schemas.params import Settings
    from nightcast.tasks.serving.shard import task_groups

    n_tasks = len(shard_tasks)
    per_task = other / n_tasks
    two = w.get(f"dask_{max(args.workers)}", {}).get("seconds")
    kmax = max(args.workers)
    eff = min((one / two) / kmax, 1.0) if two and kmax > 1 else 1.0
    big, per_shard = 1_000_000, args.big_shard_series
    tasks_big = len(task_groups([per_shard] * -(-big // per_shard), kmax, Settings().shard_task_series))
    serial_big = serial * big / n + per_task * tasks_big
    lines += ["", f"**Estimate for 1,000,000 series** of this shape ({res['steps']:,} hourly steps, horizon "
              f"{HORIZON}), in {-(-big // per_shard)} shards of {per_shard:,} series: the shards' tasks cost "
              f"{per_series * 1000:.2f} worker-seconds per 1,000 series as measured here (with {n // n_tasks:,} "
              f"series per task, so each task's fixed costs weigh more than they would), "
              f"{per_series * big / 3600:.1f} worker-hours in all. The flow's own steps ({'the id scan and ' if 'list-series' in tasks else ''}assembly, "
              f"scaled linearly from {n:,} series) and the orchestration of the {tasks_big} tasks a 1,000,000-series "
              f"run has ({kmax} workers, `NIGHTCAST_SHARD_TASK_SERIES` {Settings().shard_task_series:,}), each "
              f"counted at the {per_task:.2f} s the rest of this run's flow took over its {n_tasks} task(s) (an upper "
              f"bound: part of it is the run's own start and end) and none overlapping, take at most "
              f"{serial_big / 60:.1f} min. {kmax} workers on this {os.cpu_count()}-core machine ran at "
              f"{eff:.0%} parallel efficiency; the estimate divides by it."]
    for minutes in args.window_min:
        left = minutes * 60 - serial_big
        if left <= 0:
            lines.append(f"- {minutes:g} min window: the single-process steps alone take longer; shard the "
                         "assembly or widen the window.")
            continue
        need = -(-per_series * big // (left * eff))
        lines.append(f"- {minutes:g} min window: **{need:.0f} worker{'s' if need > 1 else ''}** of one core each "
                     f"({per_series * big / 60:,.0f} worker-minutes over the {left / 60:.0f} min left)")
    lines.append("- Assumes workers like this machine's cores, the same panel shape, and that the store's "
                 "read and write bandwidth is not the limit; the cluster start and the data landing in the "
                 "shard layout are outside the window.")
    return lines


def render(results: list[dict], args: argparse.Namespace, started: dt.datetime, wall: float) -> str:
    import polars as pl
    import torch

    lines = [
        "# Scale benchmark",
        "",
        f"`{' '.join(['python bench/scale.py', *sys.argv[1:]])}` — {started:%Y-%m-%d %H:%M} UTC, {wall / 60:.1f} min; "
        f"{platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}, polars {pl.__version__} "
        f"({pl.thread_pool_size()} threads), torch {torch.__version__} ({args.threads} intra-op thread(s); inference batches on "
        f"{_inference_threads(args.threads)} thread(s)); panel seed {args.seed}; "
        f"horizon {HORIZON}; training {args.train_steps} steps of {STEPS_PER_EPOCH} per epoch, fastest of "
        f"{args.repeats} interleaved runs each (scoring bundle: "
        f"{args.score_train_steps} steps; served: {args.seeds} network seed(s), classical `{args.classical}`, refit).",
        "",
        "Each group of steps runs in a child process; a step's RSS is its own peak above that process's RSS "
        "after its imports (data that earlier steps still hold included). The frame is the panel as read, "
        "sized as uncompressed Arrow IPC. Seconds are wall clock.",
    ]
    for res in results:
        floor = res.get("floor", {})
        head = f"{res['series']:,} series × {res['steps']:,} steps"
        if "rows" in floor:
            head += f" ({floor['rows']:,} rows, frame {floor['frame_bytes'] / 2**20:,.0f} MiB)"
        windows = res.get("pipeline", {}).get("windows")
        lines += ["", f"## {head}", ""]
        if windows:
            lines += [f"Windows: {', '.join(f'{k} {v:,}' for k, v in windows.items())}; lookback "
                      f"{res['pipeline']['lookback']}; network {res['pipeline']['network_args']}.", ""]
        lines += ["| target | measured | reference | ratio | target | result |", "|---|---|---|---|---|---|",
                  *target_rows(res, args), "", "| step | seconds | peak RSS | note |", "|---|---|---|---|",
                  *step_rows(res), *scaling_rows(res, args)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from nightcast.schemas.params import ServeConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--series", type=int, nargs="+", default=[1000, 10000], help="panel sizes (series)")
    ap.add_argument("--steps", type=int, default=2000, help="hourly steps of the longest series")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--full", action="store_true", help="also time `nightcast retrain` + `nightcast score`")
    ap.add_argument("--train-steps", type=int, default=200, help="optimiser steps of the training comparison")
    ap.add_argument("--score-train-steps", type=int, default=50, help="steps of the retrain that makes the bundle")
    ap.add_argument("--seeds", type=int, default=ServeConfig().seeds, help="network seeds served (the product default)")
    ap.add_argument("--classical", default=ServeConfig().classical,
                    help="classical candidate: auto, theta, autoets, autotheta, none (the product default)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each training loop (interleaved; fastest counts)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (nightcast's default is 1)")
    ap.add_argument("--timeout", type=float, default=3 * 3600, help="seconds per child process")
    ap.add_argument("--out", type=Path, default=RESULTS, help="markdown file for the table")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (panels, logs, stores)")
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2],
                    help="Dask worker counts for the scaling rows, on the largest size (none: skip)")
    ap.add_argument("--shards", type=int, default=8, help="shards of the sharded scoring runs")
    ap.add_argument("--window-min", type=float, nargs="+", default=[60, 120],
                    help="nightly windows (minutes) the 1M-series worker estimate is made for")
    ap.add_argument("--big-shard-series", type=int, default=10_000,
                    help="series per shard assumed by the 1M-series estimate")
    ap.add_argument("--million", action="store_true",
                    help="instead of the sizes: a 1,000,000-series panel partitioned, retrained on a sample, scored "
                         "on a local Dask cluster, every process's peak RSS (table: bench/results/scale-million.md)")
    ap.add_argument("--million-series", type=int, default=1_000_000, help=argparse.SUPPRESS)
    ap.add_argument("--million-steps", type=int, default=200, help="--million: hourly steps of the longest series")
    ap.add_argument("--million-shards", type=int, default=100, help="--million: shards of the layout and the run")
    ap.add_argument("--million-sample", type=float, default=0.01, help="--million: share of series retrained on")
    ap.add_argument("--million-workers", type=int, default=2, help="--million: local Dask workers scoring")
    ap.add_argument("--counts", type=int, nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--worker", choices=["generate", "floor", "data", "pipeline", "score", "workers"],
                    help=argparse.SUPPRESS)
    ap.add_argument("--shape", type=int, nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--store", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return _worker_main(args)
    started, t0 = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    env = {**os.environ, "NIGHTCAST_PROGRESS": "false", "NIGHTCAST_TORCH_THREADS": str(args.threads),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_URL", None)
    results = []
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="nightcast-scale-")) if args.keep else Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="nightcast-scale-")))
        api_url, server_error = None, None
        t_server = time.perf_counter()
        try:
            api_url = stack.enter_context(prefect_server(tmp, env))
            print(f"prefect server up in {time.perf_counter() - t_server:.1f} s", flush=True)
        except Exception as exc:  # scoring and --full report it; the rest still runs
            server_error = _one_line(exc)
        if args.million:
            million = million_run(args, tmp, env, api_url)
        for n in [] if args.million else args.series:
            try:
                results.append(measure_size(n, args.steps, args, tmp, env, api_url, server_error))
            except Exception as exc:
                results.append({"series": n, "steps": args.steps, "error": _one_line(exc)})
        if args.keep:
            print(f"kept {tmp}")
    if args.million:
        if args.out == RESULTS:
            args.out = RESULTS.with_name("scale-million.md")
        table = million_table(million, args, started, time.perf_counter() - t0)
    else:
        table = render(results, args, started, time.perf_counter() - t0)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    print(f"written to {args.out}")
    return 0


def generate_worker(data: str, n: int, t: int, seed: int) -> dict:
    from bench.panel import make_panel, write_panel

    steps = _Steps()
    with steps.step("generate"):
        write_panel(make_panel(n, t, seed), data)
    return steps.out["generate"]


def _worker_main(args: argparse.Namespace) -> int:
    if args.worker == "generate":
        out = generate_worker(args.data, *args.shape, args.seed)
    elif args.worker == "floor":
        out = floor_worker(args.data)
    elif args.worker in ("pipeline", "data"):
        out = pipeline_worker(args.data, args.train_steps, args.threads, args.repeats, data_only=args.worker == "data")
    elif args.worker == "workers":
        out = workers_worker(args.data, args.store, args.shards, args.counts)
    else:
        out = score_worker(args.data, args.store, args.train_steps, args.threads, args.seeds, args.classical)
    Path(args.result).write_text(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
