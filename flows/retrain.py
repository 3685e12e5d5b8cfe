"""retrain: ingest → validate → clean → window → train → evaluate → register."""

from __future__ import annotations

import datetime as dt
import io

from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_table_artifact
from prefect.futures import wait

from nightcast.schemas.params import RetrainParams
from nightcast.tasks.data.ingest import load_observations
from nightcast.tasks.data.prepare import Cleaned, Prepared, fingerprint, prepare_training
from nightcast.tasks.data.sharded import CleanedShards, agreed_kinds, clean_shards, decide_on_shard, gather, retyped
from nightcast.tasks.serving.shard import plan_run
from nightcast.tasks.data.validate import ValidationResult, validate_observations
from nightcast.tasks.forecast.backtest import evaluate_candidates
from nightcast.tasks.forecast.seeds import train_seeds
from nightcast.tasks.forecast.train import TrainResult, refit_seeds
from nightcast.tasks.forecast.tune import apply_overrides, load_tuned, tuned_for
from nightcast.tasks.forecast.warm import warm_start_from
from nightcast.tasks.ops.publish import register_bundle, summary_rows
from nightcast.tasks.ops.registry import Bundle, RegistryError, load_champion, new_version, read_champion
from nightcast.tasks.ops.storage import Store, require_conditional_writes
from nightcast.flows.report import publish_report
from nightcast.flows.runtime import SettingsTaskRunner, artifact_key, publish_markdown, start_run, step
from nightcast.flows.score import plan_step

ingest = step(load_observations, "ingest", io=True, timeout_s=3600)
validate = step(validate_observations, "validate", timeout_s=3600)
prepare = step(prepare_training, "clean-and-window", timeout_s=3600)


def _train(index, model_cfg, cfgs, progress, init_state=None):  # noqa: ANN001, ANN202 - as train_seeds
    return train_seeds(index, model_cfg, cfgs, progress, init_state=init_state, log=get_run_logger())


train = step(_train, "train", timeout_s=6 * 3600)


def _save_quarantine(store: Store, checked: ValidationResult, run_stamp: str) -> str | None:
    if checked.n_quarantined == 0:
        return None
    buf = io.BytesIO()
    checked.quarantine.write_parquet(buf)
    key = f"quarantine/{run_stamp}.parquet"
    store.write_bytes(key, buf.getvalue())
    return store.uri(key)


def _current_champion(store: Store, name: str) -> tuple[Bundle | None, str]:
    """The current champion, loaded once per run (``None`` when there is none), and why it is unusable."""
    try:
        return (load_champion(store, name) if read_champion(store, name) else None), ""
    except RegistryError as exc:
        get_run_logger().warning("current champion is unusable (no warm start; compared with the baseline "
                                 "only): %s", exc)
        return None, str(exc)


def _evaluate(params: RetrainParams, prepared: Prepared, trained: list[TrainResult], champion: Bundle | None,
              champion_error: str) -> dict:
    return evaluate_candidates(params, prepared, trained, champion, champion_error, get_run_logger())


def _refit(params: RetrainParams, prepared: Prepared, checked: ValidationResult, trained: list[TrainResult],
           progress: bool, init_state: dict | None = None) -> tuple[list, Prepared | None, dict]:
    return refit_seeds(params, prepared, checked, trained, progress, init_state, get_run_logger())


def _warm_start(params: RetrainParams, prepared: Prepared, champion: Bundle | None,
                champion_error: str) -> tuple[dict | None, dict]:
    return warm_start_from(params, prepared, champion, champion_error, get_run_logger())


def _register(store: Store, params: RetrainParams, checked: ValidationResult, prepared: Prepared,
              trained: list[TrainResult], evaluation: dict, version: str, fp: str, tuned: dict | None = None,
              warm: dict | None = None, served: tuple | None = None) -> dict:
    return register_bundle(store, params, checked, prepared, trained, evaluation, version, fp, tuned, warm, served,
                           get_run_logger())


save_quarantine = step(_save_quarantine, "save-quarantine", io=True)
decide_step = step(decide_on_shard, "decide-calendar", io=True, timeout_s=3600)
# mapped on the run's workers, where a Prefect timeout cannot interrupt them (as scoring's shard steps)
clean_step = step(clean_shards, "clean-shards", io=True).with_options(task_run_name="clean-shards-{quarantine_key}")


def clean_in_shards(st: Store, params: RetrainParams, stamp: str) -> tuple[ValidationResult, Cleaned, str]:
    """Validate and clean the catalogue shard by shard on the run's workers (``nightcast.tasks.data.sharded``):
    the calendar and season decided on the largest shard (by a worker too), then one task per shard (and
    again, for a shard that typed a covariate as numbers which another shard reads as text); the flow's
    process receives each shard's counts and its share of the training sample, never the catalogue. Planned
    from the ids, the first shard also reads the rows that have no id (``plan_run``), which validation
    quarantines."""
    logger = get_run_logger()
    plan = plan_run(params.data, params.shards, lambda: plan_step(params.data, params.columns))
    first = max(plan.todo, key=lambda k: plan.sizes[k])
    decided = decide_step.submit(params.data, params.columns, plan.groups[first], (first, params.shards),  # a worker's
                                 params.clean, params.window.train_share).result()
    logger.info("%d series in %d shards (%s); calendar %s, season %d, decided on shard %d; cleaning %d shard(s) "
                "on the workers, training on %.3g of each shard's series", plan.series, params.shards,
                "planned from the layout's manifest" if plan.from_manifest else "planned from the ids",
                decided.calendar.frequency, decided.season_length, first, len(plan.todo), params.sample)

    def clean(todo: list[int], kinds: dict[str, str] | None) -> list[CleanedShards]:
        keys = [f"quarantine/{stamp}/{k:05d}.parquet" for k in todo]
        futures = clean_step.map(unmapped(st.url), unmapped(params.data), unmapped(params.columns),
                                 [[plan.groups[k]] for k in todo], [[(k, params.shards)] for k in todo],
                                 unmapped(params.clean), unmapped(decided), unmapped(params.sample), keys,
                                 unmapped(kinds))
        wait(futures)
        return [f.result() for f in futures]

    if params.sample >= 1:
        logger.warning("--shards without --sample trains on every series: the flow's process receives the clean "
                       "rows of the whole catalogue; give --sample SHARE for a catalogue too big for one process")
    parts = clean(plan.todo, None)
    kinds = agreed_kinds([p.kinds for p in parts])
    redo = [i for i, p in enumerate(parts) if retyped(p.kinds, kinds)]
    if redo:  # a covariate some shard read otherwise than the catalogue (numbers, or blank): typed as the catalogue
        logger.info("covariates typed %s across the catalogue; cleaning shard(s) %s again with these kinds",
                    kinds, [plan.todo[i] for i in redo])
        for i in redo:  # a shard cleaned again writes its quarantined rows again, if it has any left
            st.delete(f"quarantine/{stamp}/{plan.todo[i]:05d}.parquet")
        for i, part in zip(redo, clean([plan.todo[i] for i in redo], kinds)):
            parts[i] = part
    checked, cleaned, fp = gather(parts, decided, params.data)
    cat = checked.catalogue
    logger.info("cleaned %d valid rows of %d series in %d shards (%d quarantined) in %d process(es); training "
                "sample: %d series, %d rows", cat["rows"], cat["series"], len(plan.todo), cat["quarantined"],
                len(cat["cleaned_by"]), cat["sample"]["series"], cat["sample"]["rows"])
    return checked, cleaned, fp


read_tuned = step(load_tuned, "read-tuned", io=True)
current_champion = step(_current_champion, "load-champion", io=True)
warm_start = step(_warm_start, "warm-start")
evaluate = step(_evaluate, "backtest", timeout_s=3600)
check_promotion_store = step(require_conditional_writes, "check-conditional-writes", io=True)
refit = step(_refit, "refit", timeout_s=6 * 3600)
register = step(_register, "register", io=True)


def publish_artifacts(params: RetrainParams, out: dict) -> None:
    """A table of test-span metrics with the decision, and the bundle's storage keys, in the Prefect UI."""
    rows = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
            for r in summary_rows(out["metrics"])]
    create_table_artifact(
        key=artifact_key("retrain", params.model_name), table=rows,
        description=(f"**{params.model_name} {out['version']}**: test-span metrics of the network alone, the "
                     f"baselines and the served per-series choice ({out['served']}) on the same windows, then "
                     f"the served forecasts' worst series.\n\n**Decision:** {out['decision']}"))
    publish_markdown(
        artifact_key("bundle", params.model_name), f"model bundle {params.model_name} {out['version']}",
        f"Bundle {params.model_name} / {out['version']}",
        [f"promoted: **{out['promoted']}** ({out['decision']})", f"data fingerprint: `{out['fingerprint']}`",
         f"quarantined rows: {out['quarantined_rows']}" + (f" → `{out['quarantine']}`" if out["quarantine"] else "")],
        {"Files": [f"`{uri}`" for uri in out["files"]]})


@flow(name="retrain", log_prints=True, task_runner=SettingsTaskRunner())
def retrain_flow(params: RetrainParams = RetrainParams(), store: str | None = None) -> dict:
    """Train a new model and promote it if it wins on the test span.

    Args:
        params: data, columns, cleaning, windows, network, training and the promotion rule.
        store: object store root (local directory or s3://bucket/prefix); empty: $NIGHTCAST_STORE.
    """
    settings, st = start_run(store, params.data)
    if params.data is None:
        params = params.model_copy(update={"data": settings.data})
    check_promotion_store(st)  # S3: fail now, not after training, if promotion could not be safe
    tuned = read_tuned(st, params.model_name) if params.use_tuned else None
    if tuned is not None:
        applied, kept, refused = tuned_for(params, tuned)
        if refused:
            get_run_logger().warning("not using the tuned configuration of study %s: %s", tuned["study_name"], refused)
            tuned = None
        else:
            params = apply_overrides(params, applied)
            tuned = {**tuned, "applied": applied, "kept": kept}
            get_run_logger().info("using the tuned configuration of study %s (best %s %.4f): %s%s", tuned["study_name"],
                                  tuned["metric"], tuned["best_value"], applied,
                                  f"; kept the values this run was given: {kept}" if kept else "")
    started = dt.datetime.now(dt.timezone.utc)
    stamp = started.strftime("%Y%m%dT%H%M%S%fZ")
    fp = None
    if params.shards > 1:  # the flow's process holds the training sample, never the catalogue
        checked, cleaned, fp = clean_in_shards(st, params, stamp)
        quarantine = st.uri(f"quarantine/{stamp}") + "/" if checked.n_quarantined else None  # a file per shard
        prepared = prepare(checked, params, cleaned=cleaned)
        del cleaned
    else:
        raw = ingest(params.data, params.columns, sample=params.sample)  # 1: every series (no id scan)
        if params.sample < 1:
            get_run_logger().info("training on a sample of %.3g of the series (stable hash): %d series read",
                                  params.sample, raw["series_id"].n_unique())
        checked = validate(raw, params.clean.max_bad_share, params.columns.timestamp_format)
        del raw
        quarantine = save_quarantine(st, checked, stamp)
        prepared = prepare(checked, params)
    # the bundle records the lookback actually used (it may have been derived from the data)
    params = params.model_copy(update={"window": params.window.model_copy(update={"lookback": prepared.index.lookback})})
    champion, champion_error = current_champion(st, params.model_name)
    init_state, warm = warm_start(params, prepared, champion, champion_error)
    trained = train(prepared.index, params.model, [params.train.model_copy(update={"seed": params.train.seed + k})
                                                   for k in range(params.serve.seeds)],
                    settings.progress, init_state=init_state)
    evaluation = evaluate(params, prepared, trained, champion, champion_error)
    served = refit(params, prepared, checked, trained, settings.progress, init_state)
    fp = fp or fingerprint(checked.valid)  # a sharded run's: every shard's, computed on its worker
    version = new_version(fp, started)  # minted once: a retried register writes this same version
    registered = register(st, params, checked, prepared, trained, evaluation, version, fp, tuned, warm, served)
    out = {**registered, "store": st.url, "quarantine": quarantine, "quarantined_rows": checked.n_quarantined,
           "rows": checked.n_rows, "cleaning": prepared.report.to_json(worst=20),
           "short_series": (served[1] or prepared).index.short_series, "metrics": evaluation["metrics"],
           "intervals": evaluation["intervals"], "warm_start": warm,
           "served": evaluation["served_counts"], "refit": served[2],
           "weights": dict(zip(evaluation["backtest"].weights.candidates,
                               evaluation["backtest"].weights.pooled_weights().round(3).tolist()))}
    publish_artifacts(params, out)
    out["report"] = publish_report(st, params.model_name)
    return out

