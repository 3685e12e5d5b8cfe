"""retrain: ingest → validate → clean → window → train → evaluate → register."""

from __future__ import annotations

import datetime as dt
import io

import numpy as np
import polars as pl
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from nightcast.schemas.params import RetrainParams
from nightcast.tasks.forecast.backtest import compare_with_champion, run_backtest
from nightcast.tasks.forecast.evaluate import format_metrics
from nightcast.tasks.data.features import scale_values
from nightcast.tasks.data.ingest import load_observations
from nightcast.tasks.ops.plots import forecast_vs_actual_png, learning_curve_png
from nightcast.tasks.data.prepare import Prepared, fingerprint, prepare_refit, prepare_training
from nightcast.tasks.ops.registry import (Bundle, Decision, RegistryError, decide_promotion, library_versions, load_bundle,
                            load_champion, new_version, promote, read_champion, save_bundle, sweep_incomplete)
from nightcast.tasks.ops.storage import Store, require_conditional_writes
from nightcast.tasks.forecast.train import TrainResult, best_steps, network_args_for, predict_scaled, refit_model, train_model
from nightcast.tasks.forecast.tune import apply_overrides, best_key, load_tuned, tuned_for
from nightcast.tasks.forecast.warm import incompatibility, plan_warm_start
from nightcast.tasks.data.validate import ValidationResult, validate_observations
from nightcast.flows.report import publish_report
from nightcast.flows.runtime import artifact_key, start_run, step

ingest = step(load_observations, "ingest", io=True, timeout_s=3600)
validate = step(validate_observations, "validate", timeout_s=3600)
prepare = step(prepare_training, "clean-and-window", timeout_s=3600)
train = step(train_model, "train", timeout_s=6 * 3600)


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
    """Backtest: weights and widths from the validation windows; the test span scored and compared."""
    logger = get_run_logger()
    index = prepared.index
    val, test = index.splits["val"], index.splits["test"]
    if len(test) == 0:
        raise ValueError("no test windows: the test span is shorter than the horizon for every series")
    level = params.intervals.level if params.intervals.method == "conformal" else None
    bt = run_backtest(index, prepared.state, np.datetime64(prepared.train_end, "us"), prepared.season_length,
                      [predict_scaled(t.net, index, val) for t in trained],
                      [predict_scaled(t.net, index, test) for t in trained], params.serve, level)
    comparison = compare_with_champion(champion, prepared, bt, params.promotion.metric)
    if champion_error:
        comparison["note"] = f"champion unusable ({champion_error})"
    pooled = dict(zip(bt.weights.candidates, np.round(bt.weights.pooled_weights(), 3).tolist()))
    logger.info("combination (%s) weights pooled over the panel, from %d backtest windows: %s; series served by: %s",
                params.serve.combine, len(val), pooled, bt.served_counts)
    logger.info("test-span metrics (%d windows):\n%s", len(test), format_metrics(bt.metrics))
    if bt.intervals:
        t = bt.intervals["test"]
        logger.info("%.0f%% conformal intervals: test coverage %.1f%% over %d points, mean width %.3f",
                    100 * level, 100 * t["coverage"], t["points"], t["mean_width"])
    return {"metrics": bt.metrics, "comparison": comparison, "intervals": bt.intervals, "backtest": bt,
            "served_counts": bt.served_counts}


def _refit(params: RetrainParams, prepared: Prepared, checked: ValidationResult, trained: list[TrainResult],
           progress: bool, init_state: dict | None = None) -> tuple[list, Prepared | None, dict]:
    """The networks that are served: each seed refit on all history up to the origin for the step count its
    backtest model stopped at (``serve.refit``), or the backtest models themselves."""
    logger = get_run_logger()
    if not params.serve.refit:
        return [t.net for t in trained], None, {"refit": False}
    data = prepare_refit(prepared, checked, params)
    nets, steps = [], []
    for k, t in enumerate(trained):  # a handful of seeds
        n = best_steps(t)
        cfg = params.train.model_copy(update={"seed": params.train.seed + k})
        nets.append(refit_model(data.index, t.network_args, cfg, n, progress, init_state=init_state).net)
        steps.append(n)
    logger.info("refit %d network(s) on all %d windows up to %s for %s steps", len(nets),
                len(data.index.splits["train"]), data.train_end, steps)
    return nets, data, {"refit": True, "steps": steps, "windows": int(len(data.index.splits["train"])),
                        "end": str(data.train_end)}


def _warm_start(params: RetrainParams, prepared: Prepared, champion: Bundle | None,
                champion_error: str) -> tuple[dict | None, dict]:
    """The champion's weights to start from, or ``None``; and what was decided, for the manifest."""
    logger = get_run_logger()
    if params.warm_start.policy == "never":
        return None, {"used": False, "reason": "policy never"}
    if champion_error:
        logger.warning("warm start not possible, training from scratch: %s", champion_error)
        return None, {"used": False, "reason": f"champion unusable: {champion_error}"}
    plan = plan_warm_start(params.warm_start, champion.manifest if champion else None,
                           dt.datetime.now(dt.timezone.utc))
    if not plan.warm:
        logger.info("training from scratch: %s", plan.reason)
        return None, {"used": False, "reason": plan.reason}
    why = incompatibility(champion.config, champion.preprocessing["features"],
                          network_args_for(prepared.index, params.model),
                          prepared.state.to_json(), prepared.calendar.frequency)
    if why:
        logger.warning("warm start not possible, training from scratch: %s", why)
        return None, {"used": False, "reason": why}
    logger.info("warm start from champion %s (%s)", champion.version, plan.reason)
    return champion.networks()[0].state_dict(), {"used": True, "from": champion.version, "reason": plan.reason,
                                 "full_trained_at": plan.full_trained_at}


def _decide(params: RetrainParams, comp: dict) -> Decision:
    """The promotion rule applied to a comparison with the champion (or with none)."""
    if comp["comparable"]:
        return decide_promotion(params.promotion, comp["new"], comp["seasonal_naive"], comp["champion"], comp["note"])
    if not params.promotion.beat_champion:
        return decide_promotion(params.promotion, comp["new"], comp["seasonal_naive"], None, comp["note"])
    return Decision(False, f"not promoted: {comp['note']}; the champion stays "
                           "(set promotion.beat_champion=false to replace it)")


def _decider(store: Store, params: RetrainParams, prepared: Prepared, evaluation: dict):  # noqa: ANN202
    """``promote``'s judge: the comparison made at evaluation time while the champion is the one this run
    compared with; a fresh comparison on the same test windows when another run moved the pointer since."""
    logger = get_run_logger()
    first = evaluation["comparison"]

    def decide(current: dict | None) -> tuple[Decision, dict]:
        comp = first
        if (current or {}).get("version") != first["champion_version"]:
            champion, why = None, ""
            if current is not None:
                try:
                    champion = load_bundle(store, params.model_name, current["version"])
                except RegistryError as exc:
                    why = str(exc)
            logger.info("the champion moved to %s while this run trained; comparing with it again",
                        None if current is None else current["version"])
            comp = compare_with_champion(champion, prepared, evaluation["backtest"], params.promotion.metric)
            if why:
                comp["note"] = f"champion unusable ({why})"
        evaluation["comparison"] = comp
        return _decide(params, comp), {params.promotion.metric: comp["new"], "windows": comp["windows"]}

    return decide


def _register(store: Store, params: RetrainParams, checked: ValidationResult, prepared: Prepared,
              trained: list[TrainResult], evaluation: dict, version: str, fp: str, tuned: dict | None = None,
              warm: dict | None = None, served: tuple | None = None) -> dict:
    """Write the bundle under ``version`` (minted by the flow, so a retry rewrites the same bundle), then
    move the champion pointer by compare-and-swap if the rule says so."""
    logger = get_run_logger()
    if swept := sweep_incomplete(store, params.model_name, keep=version):
        logger.warning("removed %d incomplete bundle(s) left by runs that died while writing them: %s",
                       len(swept), ", ".join(swept))
    comp = evaluation["comparison"]
    decision = _decide(params, comp)
    nets, refit_data, refit_info = served or ([t.net for t in trained], None, {"refit": False})
    state = (refit_data or prepared).state  # the scalers of the data the served networks were fitted on
    first = trained[0]
    config = {"params": params.model_dump(mode="json"), "network_args": first.network_args,
              "calendar": prepared.calendar.to_json(), "season_length": prepared.season_length}
    manifest = {
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(), "seed": params.train.seed,
        "data": {"uri": params.data, "fingerprint": fp, "rows": checked.valid.height,
                 "series": checked.valid["series_id"].n_unique(), "quarantined": checked.n_quarantined,
                 "start": str(checked.valid["timestamp"].min()), "end": str(checked.valid["timestamp"].max())},
        "spans": {"train_end": str(prepared.train_end), "val_end": str(prepared.val_end)},
        "windows": {k: int(len(v)) for k, v in prepared.index.splits.items()},
        "cleaning": prepared.report.to_json(worst=20), "epochs": [t.epochs for t in trained],
        "steps": [t.steps for t in trained], "training_budget": first.budget, "served": evaluation["served_counts"],
        "best_val_loss": [t.best_val_loss for t in trained], "libraries": library_versions(),
        "seeds": [params.train.seed + k for k in range(len(trained))], "refit": refit_info,
        "warm_start": warm,
        "tuning": None if tuned is None else {k: tuned.get(k) for k in (
            "study_name", "storage", "sampler", "metric", "objective", "best_value", "best_trial", "best_params",
            "trials", "fingerprint", "applied", "kept")},
    }
    index = prepared.index
    test = evaluation["backtest"].test_starts
    extra = {  # diagnostics travel with the model
        "plots/learning_curve.png": learning_curve_png(first.history),
        "plots/forecast_vs_actual.png": forecast_vs_actual_png(
            index, prepared.state, scale_values(evaluation["backtest"].served_test, index.series_of(test),
                                                prepared.state), test,
            (evaluation["intervals"] or {}).get("half_widths")),
    }
    extra.update({f"tensorboard/{name}": data for name, data in first.tensorboard.items()})
    if tuned is not None:  # the search that chose this configuration travels with the model
        prefix = best_key(params.model_name).rsplit("/", 1)[0]
        for fname in tuned.get("files", []):
            try:
                extra[f"tuning/{fname}"] = store.read_bytes(f"{prefix}/{fname}")
            except FileNotFoundError:
                logger.warning("tuning file %s is missing; the bundle goes without it", fname)
    metrics_json = {"test": _summary_rows(evaluation["metrics"]), "comparison": comp,
                    "served": evaluation["served_counts"],
                    "intervals": evaluation["intervals"],
                    # at registration, against the champion this run compared with; the pointer records the final one
                    "decision": {"promote": decision.promote, "reason": decision.reason,
                                 "against": comp["champion_version"]}}
    prefix = save_bundle(store, params.model_name, version, net=nets, config=config,
                         preprocessing={"features": state.to_json(),
                                        "iqr_bounds": (refit_data or prepared).iqr_bounds,
                                        "conformal": evaluation["intervals"],
                                        "combination": evaluation["backtest"].weights.to_json()},
                         metrics=metrics_json,
                         history_csv=first.history.write_csv(), manifest=manifest, extra_files=extra)
    logger.info("bundle written to %s", store.uri(prefix))
    # read back and verify every file before the pointer may name it: a bundle that lost a file after it
    # was written (a sweep racing a writer that was frozen for hours) fails here, the champion untouched
    load_bundle(store, params.model_name, version)
    decision, pointer = promote(store, params.model_name, version, _decider(store, params, prepared, evaluation))
    promoted = pointer is not None and pointer["version"] == version
    logger.info("promotion decision: %s", decision.reason)
    return {"version": version, "bundle": store.uri(prefix), "promoted": promoted,
            "decision": decision.reason, "fingerprint": fp, "comparison": evaluation["comparison"],
            "files": [store.uri(k) for k in store.list(prefix + "/")]}


def _summary_rows(metrics: pl.DataFrame, worst: int = 20) -> list[dict]:
    """The overall rows, plus the served forecasts' worst series by MASE (not one row per series)."""
    overall = metrics.filter(pl.col("series_id") == "ALL")
    bad = metrics.filter((pl.col("model") == "served") & (pl.col("series_id") != "ALL")).sort("mase", descending=True)
    return pl.concat([overall, bad.head(worst)]).to_dicts()


save_quarantine = step(_save_quarantine, "save-quarantine", io=True)
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
            for r in _summary_rows(out["metrics"])]
    create_table_artifact(
        key=artifact_key("retrain", params.model_name), table=rows,
        description=(f"**{params.model_name} {out['version']}**: test-span metrics of the network alone, the "
                     f"baselines and the served per-series choice ({out['served']}) on the same windows, then "
                     f"the served forecasts' worst series.\n\n**Decision:** {out['decision']}"))
    files = "\n".join(f"- `{uri}`" for uri in out["files"])
    create_markdown_artifact(
        key=artifact_key("bundle", params.model_name),
        description=f"model bundle {params.model_name} {out['version']}",
        markdown=(f"# Bundle {params.model_name} / {out['version']}\n\n"
                  f"- promoted: **{out['promoted']}** ({out['decision']})\n"
                  f"- data fingerprint: `{out['fingerprint']}`\n"
                  f"- quarantined rows: {out['quarantined_rows']}" + (f" → `{out['quarantine']}`" if out["quarantine"] else "")
                  + f"\n\n## Files\n{files}\n"))


@flow(name="retrain", log_prints=True)
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
    raw = ingest(params.data, params.columns)
    checked = validate(raw, params.clean.max_bad_share, params.columns.timestamp_format)
    quarantine = save_quarantine(st, checked, stamp)
    prepared = prepare(checked, params)
    # the bundle records the lookback actually used (it may have been derived from the data)
    params = params.model_copy(update={"window": params.window.model_copy(update={"lookback": prepared.index.lookback})})
    champion, champion_error = current_champion(st, params.model_name)
    init_state, warm = warm_start(params, prepared, champion, champion_error)
    trained = [train(prepared.index, params.model, params.train.model_copy(update={"seed": params.train.seed + k}),
                     settings.progress, init_state=init_state) for k in range(params.serve.seeds)]
    evaluation = evaluate(params, prepared, trained, champion, champion_error)
    served = refit(params, prepared, checked, trained, settings.progress, init_state)
    fp = fingerprint(checked.valid)
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

