"""tune: an Optuna study over rolling-origin folds; the best configuration is saved for retrain.

Each trial is a Prefect task run, judged by the combination it would serve (see
``nightcast.tasks.forecast.tune``); the study is one per model, horizon and data fingerprint. Trials talk to the study through its storage
(SQLite by default, PostgreSQL for many workers), so several runs of this flow,
on several workers, can add trials to the same study at the same time.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.futures import wait

from nightcast.schemas.params import RetrainParams, TuneParams
from nightcast.tasks.data.validate import ValidationResult
from nightcast.tasks.ops.storage import Store
from nightcast.tasks.data.prepare import fingerprint
from nightcast.tasks.forecast.tune import (TUNING_PREFIX, best_key, claim_study, default_study_name, grid_size, open_study, plots,
                        redact, resolve_storage, rolling_origin_folds, run_trial, study_scope, summarize,
                        trials_table)
from nightcast.flows.runtime import artifact_key, publish_markdown, start_run, step
from nightcast.flows.score import ingest, validate

plan_folds = step(rolling_origin_folds, "plan-folds")
trial_task = step(run_trial, "trial")  # submitted to threads: a Prefect timeout could not interrupt it


def _save_outputs(store: Store, model_name: str, best: dict, files: dict[str, bytes]) -> list[str]:
    """Trials table and plots first, best.json last: retrain never sees a best.json without them."""
    prefix = best_key(model_name).rsplit("/", 1)[0]
    keys = []
    for name, data in files.items():
        store.write_bytes(f"{prefix}/{name}", data)
        keys.append(f"{prefix}/{name}")
    store.write_bytes(best_key(model_name), json.dumps({**best, "files": sorted(files)}, indent=2).encode())
    return [*keys, best_key(model_name)]


save_outputs = step(_save_outputs, "save-tuning", io=True)


def _run_trials(params: TuneParams, base: RetrainParams, checked: ValidationResult, folds: list, storage: str, study_name: str,
                study: Any) -> list[dict]:
    """``n_trials`` trials, ``parallel`` at a time (a grid stops when every point is explored), logged as they end."""
    logger = get_run_logger()
    n = params.n_trials
    if params.sampler == "grid":
        left = grid_size(params) - sum(t.state.is_finished() for t in study.trials)
        if left < n:
            logger.info("grid has %d unexplored point(s); running %d trial(s), not %d", max(left, 0), max(left, 0), n)
        n = max(min(n, left), 0)
    logger.info("study %s on %s: %d trial(s) with the %s sampler, %d fold(s), up to %d at a time",
                study_name, redact(storage), n, params.sampler, len(folds), params.parallel)

    results = []
    for i in range(0, n, params.parallel):
        batch = [trial_task.submit(params, base, checked, folds, storage, study_name)
                 for _ in range(min(params.parallel, n - i))]
        wait(batch)
        for fut in batch:
            r = fut.result()
            results.append(r)
            value = f"{r['value']:.4f}" if r["value"] is not None else r.get("detail", "")
            logger.info("[%d/%d] trial %d %s %s %s", len(results), n, r["number"], r["state"], value, r["params"])

    return results


def _publish(params: TuneParams, base: RetrainParams, st: Store, study_name: str, results: list[dict], best: dict, folds: list,
             keys: list[str]) -> None:
    """The trials of this run and the best configuration, as Prefect artifacts."""
    create_table_artifact(
        key=artifact_key("tune", base.model_name),
        table=[{k: v for k, v in r.items() if k != "params"} | {f"{k}": str(v) for k, v in r["params"].items()}
               for r in results],
        description=f"trials of this run in study {study_name}; best {best['metric']} {best['best_value']:.4f}")
    publish_markdown(
        artifact_key("tuned", base.model_name), f"best configuration of {base.model_name}", f"Tuned {base.model_name}",
        [f"study `{study_name}` on `{best['storage']}`, sampler {params.sampler}, trials {best['trials']}",
         f"best {best['metric']} **{best['best_value']:.4f}** over {len(folds)} fold(s) "
         f"(seasonal naive {best['seasonal_naive']:.4f})"],
        {"Best parameters": [f"`{k}` = {v}" for k, v in best["best_params"].items()],
         "Files": [f"`{st.uri(k)}`" for k in keys]})


@flow(name="tune", log_prints=True)
def tune_flow(params: TuneParams = TuneParams(), store: str | None = None) -> dict:
    """Search hyper-parameters with Optuna; save the best configuration where retrain picks it up.

    Args:
        params: the base run (data, columns, cleaning, defaults), the search space, the sampler
            (tpe, random, grid), trials, folds, pruning and the study storage.
        store: object store root; empty: $NIGHTCAST_STORE.
    """
    settings, st = start_run(store, params.base.data)
    logger = get_run_logger()
    base = params.base if params.base.data else params.base.model_copy(update={"data": settings.data})
    storage = resolve_storage(params, settings.optuna_storage.get_secret_value())
    raw = ingest(base.data, base.columns, sample=base.sample)  # as retrain reads
    checked = validate(raw, base.clean.max_bad_share, base.columns.timestamp_format)
    scope = study_scope(base, fingerprint(checked.valid), params.objective)
    study_name = params.study_name or default_study_name(scope)
    folds = plan_folds(checked, base, params.folds, params.fold_fraction)
    study = open_study(params, storage, study_name)
    claim_study(study, scope)
    results = _run_trials(params, base, checked, folds, storage, study_name, study)
    study = open_study(params, storage, study_name)
    best = summarize(study, params, storage, folds, scope)
    table = trials_table(study)
    files = {"trials.csv": table.write_csv().encode(), **plots(study)}
    keys = save_outputs(st, base.model_name, best, files)
    logger.info("best %s %.4f (trial %d): %s -> %s", best["metric"], best["best_value"], best["best_trial"],
                best["best_params"], st.uri(best_key(base.model_name)))

    _publish(params, base, st, study_name, results, best, folds, keys)
    return {"study_name": study_name, "trials": results, "best": best, "table": table,
            "files": [st.uri(k) for k in keys], "prefix": f"models/{base.model_name}/{TUNING_PREFIX}"}
