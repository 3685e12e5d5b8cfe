"""Hyper-parameter search: rolling-origin folds, an Optuna study, one trial at a time.

The objective of a trial is the mean error (the promotion metric, MASE by
default) over ``k`` expanding-window folds, all inside the span *before* the
final test span, which tuning never sees. By default it is the error of what
would be served (the combination of the network with the classical candidate
and the baselines, weighted on the fold's validation windows), not of the
network alone: a network that errs where the others are right is worth more
than one that copies them. One study per model name, horizon, data
fingerprint and objective: trials scored on different data are never ranked
together. Each fold cleans, scales and
encodes from its own training span (``prepare_training`` with the fold's cut
points), so nothing leaks from a fold's evaluation data into its model.

Trials use Optuna's ask/tell interface against a storage URL, so any number
of processes (Prefect workers) can add trials to one study when the storage is
an RDB such as PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import socket
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from nightcast.schemas.params import Dimension, RetrainParams, TuneParams, WindowConfig
from nightcast.tasks.data.clean import decide_calendar, decide_season, regularize
from nightcast.tasks.data.validate import ValidationResult
from nightcast.tasks.data.window import WindowError, auto_lookback, min_history, split_times, trailing_ends

log = logging.getLogger(__name__)

TUNING_PREFIX = "tuning"


class TuneError(ValueError):
    """The data or the search space cannot support the requested tuning."""


@dataclass(frozen=True)
class Fold:
    """Train ≤ ``train_end`` < validation ≤ ``val_end`` < evaluation ≤ ``end``."""

    train_end: dt.datetime
    val_end: dt.datetime
    end: dt.datetime

    def to_json(self) -> dict[str, str]:
        return {"train_end": str(self.train_end), "val_end": str(self.val_end), "end": str(self.end)}


def rolling_origin_folds(valid: ValidationResult, base: RetrainParams, k: int, fraction: float) -> list[Fold]:
    """``k`` expanding-window folds that end where the final test span begins.

    Each fold evaluates on a block of ``fraction`` of the time steps (at least
    one horizon), validates on the block before it and trains on all before that.
    """
    calendar = decide_calendar(valid.valid, base.clean)
    placed, _ = regularize(valid.valid, calendar)
    w: WindowConfig = base.window
    _, final_val_end = split_times(placed, w.val_fraction, w.test_fraction, w.horizon)
    stamps = placed["timestamp"].unique().sort()
    stamps = stamps.filter(stamps <= final_val_end)
    n = stamps.len()
    block = max(int(n * fraction), w.horizon)
    first_train = n - (k + 1) * block
    season = decide_season(valid.valid, base.clean, calendar, share=w.train_share)
    need = min_history(w.lookback or auto_lookback(season, w.horizon), season) + w.horizon + 1
    if first_train < need:
        raise TuneError(f"{n} time steps before the final test span are too few for {k} folds of {block} steps "
                        f"plus a training span of at least one window's history + horizon + 1 = {need}; "
                        "use fewer folds or a smaller fold_fraction")
    ends = trailing_ends(n, [block] * (k + 1))  # fold j trains to ends[j], validates to ends[j+1], ends at ends[j+2]
    return [Fold(stamps[ends[j]], stamps[ends[j + 1]], stamps[ends[j + 2]]) for j in range(k)]


def apply_overrides(base: RetrainParams, values: dict[str, Any]) -> RetrainParams:
    """``{"model.hidden_size": 32, ...}`` applied to a copy of ``base`` (validated again)."""
    data = base.model_dump()
    for path, value in values.items():
        node = data
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        if leaf not in node:
            raise TuneError(f"unknown field {path!r}")
        node[leaf] = value
    return RetrainParams.model_validate(data)


def _json_valued(d: Dimension) -> bool:
    """Optuna's categorical values are scalars: a dimension with list choices travels as JSON text."""
    return d.choices is not None and any(isinstance(c, list) for c in d.choices)


def _encode(d: Dimension, values: list) -> list:
    return [json.dumps(v) for v in values] if _json_valued(d) else list(values)


def _decode(d: Dimension, value: Any) -> Any:
    return json.loads(value) if _json_valued(d) else value


def default_values(params: TuneParams, base: RetrainParams) -> dict[str, Any]:
    """The base configuration's value of every searched field the sampler can represent (trial 0).

    Starting from the default guarantees the study's best is never worse than the default on
    the tuning folds; fields whose base value lies outside the space are left to the sampler.
    """
    data = base.model_dump()
    out: dict[str, Any] = {}
    for name, d in params.space.items():
        value: Any = data
        for part in name.split("."):
            value = value[part]
        if d.choices is not None:
            if value in d.choices:
                out[name] = _encode(d, [value])[0]
        elif value is not None and d.low <= value <= d.high:  # type: ignore[operator]
            out[name] = int(value) if d.integer else float(value)
    return out


def suggest(trial: Any, params: TuneParams) -> dict[str, Any]:
    """One value per search-space dimension, from the trial's sampler."""
    out: dict[str, Any] = {}
    for name, d in params.space.items():
        if d.choices is not None:
            out[name] = _decode(d, trial.suggest_categorical(name, _encode(d, d.choices)))
        elif d.integer:
            out[name] = trial.suggest_int(name, int(d.low), int(d.high), log=d.log)  # type: ignore[arg-type]
        else:
            out[name] = trial.suggest_float(name, float(d.low), float(d.high), log=d.log)  # type: ignore[arg-type]
    return out


def make_sampler(params: TuneParams, seed: int) -> Any:
    import optuna

    if params.sampler == "grid":
        grid = {k: _encode(d, d.grid_values()) for k, d in params.space.items()}
        return optuna.samplers.GridSampler(grid, seed=seed)
    if params.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, params.n_trials // 3)))


def make_pruner(params: TuneParams) -> Any:
    import optuna

    if not params.pruning:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)


def grid_size(params: TuneParams) -> int:
    return int(np.prod([len(d.grid_values()) for d in params.space.values()]))


def open_study(params: TuneParams, storage: str, study_name: str, attempts: int = 4) -> Any:
    """Create or load the study; several processes may do this at once.

    On a fresh database, workers that start together each create Optuna's schema, and all but one fail
    with a duplicate type or table (PostgreSQL: ``duplicate key ... pg_type_typname_nsp_index``; optuna
    #1092): such a failure is retried after a short wait, when the schema is there to load."""
    import time

    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for attempt in range(attempts):
        try:
            return optuna.create_study(study_name=study_name, storage=storage, direction="minimize",
                                       load_if_exists=True, sampler=make_sampler(params, params.seed),
                                       pruner=make_pruner(params))
        except (IntegrityError, ProgrammingError, OperationalError) as err:
            racing = any(s in str(err) for s in ("already exists", "duplicate key", "UNIQUE constraint"))
            if not racing or attempt == attempts - 1:
                raise
            log.info("the study's storage was being created by another worker; opening it again (%s)",
                     type(err).__name__)
            time.sleep(0.5 * (attempt + 1))


def score_fold(valid: ValidationResult, run: RetrainParams, fold: Fold, progress: bool = False,
               callbacks: list | None = None, objective: str = "served") -> dict[str, float]:
    """Train on the fold's training span, then judge its evaluation block as retrain would.

    ``served`` (the default): the combination that would be served, its weights fitted on the fold's
    validation windows (the backtest), scored on its evaluation windows, so a trial is judged by what
    it adds to the classical candidate and the baselines. ``network``: the network alone. Both, and
    seasonal naive, are returned; ``objective`` names the one the study minimises.
    """
    from nightcast.tasks.forecast.backtest import run_backtest
    from nightcast.tasks.forecast.evaluate import NETWORK, SERVED
    from nightcast.tasks.data.prepare import prepare_training
    from nightcast.tasks.forecast.predict import predict_scaled
    from nightcast.tasks.forecast.train import train_model

    upto = ValidationResult(valid.valid.filter(pl.col("timestamp") <= fold.end), valid.quarantine, valid.n_rows,
                            valid.exact_duplicates, valid.categorical, valid.numeric)
    prepared = prepare_training(upto, run, cuts=(fold.train_end, fold.val_end))
    trained = train_model(prepared.index, run.model, run.train, progress, callbacks=callbacks)
    index = prepared.index
    if len(index.splits["test"]) == 0:
        raise WindowError(f"fold ending {fold.end}: no evaluation windows")
    preds = {split: predict_scaled(trained.net, index, index.splits[split]) for split in ("val", "test")}
    bt = run_backtest(index, prepared.state, np.datetime64(fold.train_end, "us"), prepared.season_length,
                      [preds["val"]], [preds["test"]], run.serve, None)
    metric = run.promotion.metric
    overall = {r["model"]: r[metric] for r in bt.metrics.filter(pl.col("series_id") == "ALL").iter_rows(named=True)}
    scores = {"served": float(overall[SERVED]), "network": float(overall[NETWORK]),
              "seasonal_naive": float(overall["seasonal_naive"]), "epochs": trained.epochs}
    return {**scores, "model": scores[objective]}


def study_scope(base: RetrainParams, data_fingerprint: str, objective: str) -> dict[str, Any]:
    """What a study's trials are scored on. Trials are comparable only within one scope."""
    return {"model_name": base.model_name, "horizon": base.window.horizon, "frequency": base.clean.frequency,
            "fingerprint": data_fingerprint, "objective": objective}


def default_study_name(scope: dict[str, Any]) -> str:
    """One study per model name, horizon, data and objective: a weekly tune on new data starts a new study
    (its trial 0 the default configuration), never ranks its trials against last week's."""
    from nightcast.tasks.ops.storage import safe_key_part

    tag = "" if scope["objective"] == "served" else f"-{scope['objective']}"
    return f"nightcast-{safe_key_part(scope['model_name'])}-h{scope['horizon']}-{scope['fingerprint'][:12]}{tag}"


def claim_study(study: Any, scope: dict[str, Any]) -> None:
    """Record ``scope`` on a new study; refuse a study whose trials were scored on something else."""
    recorded = study.user_attrs.get("scope")
    if recorded is None and not study.trials:
        study.set_user_attr("scope", scope)
        return
    if recorded == scope:
        return
    if recorded is None:
        raise TuneError(f"study {study.study_name!r} has {len(study.trials)} trial(s) but records no data "
                        "fingerprint, horizon or objective, so its trials cannot be compared with this run's; "
                        "leave the study name empty (one study per model, horizon and data) or name a new one")
    diff = {k: (recorded.get(k), v) for k, v in scope.items() if recorded.get(k) != v}
    said = "; ".join(f"{k} {str(a)[:12]} in the study, {str(b)[:12]} in this run" for k, (a, b) in diff.items())
    raise TuneError(f"study {study.study_name!r} holds trials scored on other terms ({said}): its best trial "
                    "would be chosen among trials that cannot be compared; leave the study name empty (one study "
                    "per model, horizon and data) or name a new one")


_ASKING = threading.Lock()
"""Trials of one process take their trial from the study one at a time (the lock is held from the
queueing of trial 0 until ``optimize`` hands the objective its trial): SQLite ignores the row lock
Optuna takes to pop a queued trial, so two threads could both start trial 0, and the second could
not record it ("Cannot tell a COMPLETE trial"). Across processes, use PostgreSQL (see the README)."""


def _ready_sampler(study: Any, params: TuneParams, base: RetrainParams) -> None:
    """Trial 0 of a new study is the default configuration; every trial but a grid's gets a fresh sampler seed
    (sequential runs stay reproducible, parallel workers rarely collide; the grid is keyed by trial number)."""
    if params.sampler == "grid":
        return
    if not study.trials:
        study.enqueue_trial(default_values(params, base), skip_if_exists=True)
    study.sampler = make_sampler(params, params.seed + len(study.trials))


def _score_folds(trial: Any, params: TuneParams, run: RetrainParams, valid: ValidationResult, folds: list[Fold],
                 progress: bool) -> list[dict]:
    """Each fold scored in turn; pruned on validation loss while the first fold trains, then on the running
    mean over folds (reported at steps past any epoch number)."""
    import optuna

    scores = []
    for j, fold in enumerate(folds):
        callbacks = []
        if params.pruning and j == 0:
            from optuna_integration import PyTorchLightningPruningCallback

            callbacks.append(PyTorchLightningPruningCallback(trial, monitor="val_loss"))
        scores.append(score_fold(valid, run, fold, progress, callbacks, params.objective))
        mean = float(np.mean([x["model"] for x in scores]))
        trial.report(mean, step=run.train.max_epochs + j)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after fold {j + 1}: mean {mean:.4f}")
    return scores


def run_trial(params: TuneParams, base: RetrainParams, valid: ValidationResult, folds: list[Fold],
              storage: str, study_name: str, progress: bool = False) -> dict[str, Any]:
    """Run one trial of the study: suggest, score over the folds, record. Never raises for a bad trial."""
    import optuna

    study = open_study(params, storage, study_name)
    _ASKING.acquire()  # released once this trial is taken (first thing in the objective), or below
    seen: dict[str, Any] = {}
    try:
        _ready_sampler(study, params, base)
    except BaseException:
        _ASKING.release()
        raise

    def objective(trial: optuna.Trial) -> float:
        seen["trial"] = trial
        _ASKING.release()
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        try:
            seen["params"] = values = suggest(trial, params)
            run = apply_overrides(base, values)
            scores = _score_folds(trial, params, run, valid, folds, progress)
        except optuna.TrialPruned as exc:
            seen["detail"] = str(exc)
            raise
        except Exception as exc:  # recorded on the trial; the study goes on
            seen["detail"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            trial.set_user_attr("error", seen["detail"][:500])
            raise
        trial.set_user_attr("fold_scores", [s["model"] for s in scores])
        trial.set_user_attr("network", float(np.mean([s["network"] for s in scores])))
        trial.set_user_attr("served", float(np.mean([s["served"] for s in scores])))
        trial.set_user_attr("seasonal_naive", float(np.mean([s["seasonal_naive"] for s in scores])))
        return float(np.mean([s["model"] for s in scores]))

    try:
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False)
    finally:
        if "trial" not in seen:  # optimize failed before it took a trial
            _ASKING.release()
    frozen = study.trials[seen["trial"].number]  # trial numbers index the study's trials
    # a pruned trial's Optuna value is its last intermediate report (a validation loss), not the objective
    return {"number": frozen.number, "state": frozen.state.name,
            "value": frozen.value if frozen.state.name == "COMPLETE" else None,
            "params": seen.get("params", {}), "detail": seen.get("detail", "")}


def trials_table(study: Any) -> pl.DataFrame:
    """One row per trial: number, state, value, each parameter, worker, duration."""
    rows = []
    for t in study.trials:
        rows.append({"number": t.number, "state": t.state.name,
                     "value": t.value if t.state.name == "COMPLETE" else None,  # not a pruned trial's last loss
                     "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
                     if t.datetime_complete and t.datetime_start else None,
                     "worker": t.user_attrs.get("worker"), "error": t.user_attrs.get("error"),
                     **{f"param:{k}": str(v) for k, v in t.params.items()}})
    return pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()


def plots(study: Any) -> dict[str, bytes]:
    """Optimisation history and parameter importances as PNG (importances need 2+ complete trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    out: dict[str, bytes] = {}
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    makers = {"optimization_history.png": ovm.plot_optimization_history}
    if len(complete) >= 2:
        makers["param_importances.png"] = ovm.plot_param_importances
    import warnings

    for name, make in makers.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
            try:
                ax = make(study)
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue  # e.g. importances when every trial has the same parameters
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        out[name] = buf.getvalue()
    return out


def resolve_storage(params: TuneParams, default: str) -> str:
    """The Optuna storage URL: from the Prefect Secret block the run names, else the worker's setting.

    Never a flow parameter: parameters are stored by the Prefect API and shown in its UI.
    """
    if not params.storage_secret:
        return default
    from prefect.blocks.system import Secret

    try:
        return str(Secret.load(params.storage_secret).get())
    except ValueError as exc:
        raise ValueError(f"no Prefect Secret block named {params.storage_secret!r} (create it with "
                         "`Secret(value=url).save(name)` or in the UI under Blocks)") from exc


def redact(url: str) -> str:
    """A storage URL without its password, for logs and artifacts."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL: show only the scheme
        return url.split("://", 1)[0] + "://…"


def explicitly_set(params: Any, path: str) -> bool:
    """Whether the caller gave ``path`` ("model.hidden_size") a value, rather than leaving the default."""
    node = params
    *parents, leaf = path.split(".")
    for part in parents:
        if part not in node.model_fields_set:
            return False
        node = getattr(node, part)
    return leaf in node.model_fields_set


def tuned_for(params: RetrainParams, tuned: dict) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """Which of a saved best configuration's values a run takes: (applied, kept, refused).

    A value the run was given explicitly (a CLI flag, a field in the flow's parameters) is kept, never
    silently replaced; a configuration tuned for another horizon or frequency is refused whole (``refused``
    says why) because its trials were scored on a different problem.
    """
    for field, mine in (("horizon", params.window.horizon), ("frequency", params.clean.frequency)):
        theirs = tuned.get(field)
        if theirs is not None and mine is not None and theirs != mine:
            return {}, {}, f"it was tuned for {field} {theirs}, this run has {field} {mine}"
    applied: dict[str, Any] = {}
    kept: dict[str, Any] = {}
    for path, value in tuned["best_params"].items():
        (kept if explicitly_set(params, path) else applied)[path] = value
    return applied, kept, None


def best_key(model_name: str) -> str:
    from nightcast.tasks.ops.storage import safe_key_part

    return f"models/{safe_key_part(model_name)}/{TUNING_PREFIX}/best.json"


def summarize(study: Any, params: TuneParams, storage: str, folds: list[Fold],
              scope: dict[str, Any] | None = None) -> dict[str, Any]:
    """What retrain picks up: the best trial's values for the searched fields, and how they were found."""
    import optuna

    states = [t.state.name for t in study.trials]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        errors = sorted({t.user_attrs.get("error", "pruned") for t in study.trials})[:5]
        raise TuneError(f"no trial of study {study.study_name!r} completed ({len(states)} trials): {errors}")
    best = study.best_trial
    best_params = {k: _decode(params.space[k], v) if k in params.space else v for k, v in best.params.items()}
    return {
        "study_name": study.study_name, "storage": redact(storage), "sampler": params.sampler,
        "metric": params.base.promotion.metric, "objective": params.objective,
        "best_value": best.value, "best_trial": best.number,
        "network": best.user_attrs.get("network"), "served": best.user_attrs.get("served"),
        "fingerprint": (scope or {}).get("fingerprint"),
        "horizon": params.base.window.horizon, "frequency": params.base.clean.frequency,
        "best_params": best_params, "seasonal_naive": best.user_attrs.get("seasonal_naive"),
        "fold_scores": best.user_attrs.get("fold_scores"), "folds": [f.to_json() for f in folds],
        "trials": {s: states.count(s) for s in sorted(set(states))},
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }


def load_tuned(store: Any, model_name: str) -> dict | None:
    """The saved best configuration for a model, ``None`` when it was never tuned."""
    try:
        return json.loads(store.read_bytes(best_key(model_name)))
    except FileNotFoundError:
        return None
