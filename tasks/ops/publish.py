"""What a retrain writes: the bundle (config, manifest, metrics, the served networks and their
diagnostics), verified, then the champion pointer moved by compare-and-swap if the promotion rule
says so."""

from __future__ import annotations

import datetime as dt
import logging

import polars as pl

from nightcast.schemas.params import RetrainParams
from nightcast.tasks.data.features import scale_values
from nightcast.tasks.data.prepare import Prepared
from nightcast.tasks.data.validate import ValidationResult
from nightcast.tasks.forecast.backtest import champion_decider, promotion_decision
from nightcast.tasks.forecast.train import TrainResult
from nightcast.tasks.forecast.tune import best_key
from nightcast.tasks.ops.plots import forecast_vs_actual_png, learning_curve_png
from nightcast.tasks.ops.registry import library_versions, load_bundle, promote, save_bundle, sweep_incomplete
from nightcast.tasks.ops.storage import Store


def register_bundle(store: Store, params: RetrainParams, checked: ValidationResult, prepared: Prepared,
                    trained: list[TrainResult], evaluation: dict, version: str, fp: str, tuned: dict | None = None,
                    warm: dict | None = None, served: tuple | None = None,
                    log: logging.Logger | None = None) -> dict:
    """Write the bundle under ``version`` (minted by the flow, so a retry rewrites the same bundle), then
    move the champion pointer by compare-and-swap if the rule says so."""
    logger = log or logging.getLogger(__name__)
    if swept := sweep_incomplete(store, params.model_name, keep=version):
        logger.warning("removed %d incomplete bundle(s) left by runs that died while writing them: %s",
                       len(swept), ", ".join(swept))
    comp = evaluation["comparison"]
    decision = promotion_decision(params, comp)
    nets, refit_data, refit_info = served or ([t.net for t in trained], None, {"refit": False})
    state = (refit_data or prepared).state  # the scalers of the data the served networks were fitted on
    first = trained[0]
    config = {"params": params.model_dump(mode="json"), "network_args": first.network_args,
              "calendar": prepared.calendar.to_json(), "season_length": prepared.season_length}
    manifest = bundle_manifest(params, checked, prepared, trained, evaluation, fp, tuned, warm, refit_info)
    extra = diagnostics(store, params, prepared, first, evaluation, tuned, logger)
    metrics_json = {"test": summary_rows(evaluation["metrics"]), "comparison": comp,
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
    decision, pointer = promote(store, params.model_name, version, champion_decider(store, params, prepared, evaluation, logger))
    promoted = pointer is not None and pointer["version"] == version
    logger.info("promotion decision: %s", decision.reason)
    return {"version": version, "bundle": store.uri(prefix), "promoted": promoted,
            "decision": decision.reason, "fingerprint": fp, "comparison": evaluation["comparison"],
            "files": [store.uri(k) for k in store.list(prefix + "/")]}


def data_summary(checked: ValidationResult) -> dict:
    """The input's valid rows, series, quarantined rows and span: the whole catalogue's, from a sharded
    retrain's counts (with the training sample's rows and series, and where the shards wrote their
    quarantined rows), else from the valid rows themselves."""
    if checked.catalogue is not None:
        return dict(checked.catalogue)
    return {"rows": checked.valid.height, "series": checked.valid["series_id"].n_unique(),
            "quarantined": checked.n_quarantined, "start": str(checked.valid["timestamp"].min()),
            "end": str(checked.valid["timestamp"].max())}


def bundle_manifest(params: RetrainParams, checked: ValidationResult, prepared: Prepared, trained: list[TrainResult],
                    evaluation: dict, fp: str, tuned: dict | None, warm: dict | None, refit_info: dict) -> dict:
    """What the bundle records about its making: the data (fingerprint, span, counts), the spans and windows,
    cleaning, training (epochs, steps, seeds, budget), the refit, the warm start, the tuning and the versions."""
    first = trained[0]
    manifest = {
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(), "seed": params.train.seed,
        "data": {"uri": params.data, "fingerprint": fp, **data_summary(checked)},
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
    return manifest


def diagnostics(store: Store, params: RetrainParams, prepared: Prepared, first: TrainResult, evaluation: dict,
                tuned: dict | None, logger: logging.Logger) -> dict[str, bytes]:
    """Files that travel with the model: the learning curve, forecast vs actual on the test span, the TensorBoard
    log and, when tuned, the search that chose the configuration."""
    index = prepared.index
    test = evaluation["backtest"].test_starts
    extra = {
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
    return extra


def summary_rows(metrics: pl.DataFrame, worst: int = 20) -> list[dict]:
    """The overall rows, plus the served forecasts' worst series by MASE (not one row per series)."""
    overall = metrics.filter(pl.col("series_id") == "ALL")
    bad = metrics.filter((pl.col("model") == "served") & (pl.col("series_id") != "ALL")).sort("mase", descending=True)
    return pl.concat([overall, bad.head(worst)]).to_dicts()
