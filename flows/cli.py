"""The ``nightcast`` command: retrain, tune, score, backfill, serve, demo."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", help="local directory or s3://bucket/prefix (default: $NIGHTCAST_STORE or ./nightcast-store)")
    p.add_argument("--model-name", default="lstm")
    p.add_argument("--series-col", default="series_id")
    p.add_argument("--timestamp-col", default="timestamp")
    p.add_argument("--target-col", default="target")
    p.add_argument("--timestamp-format", help="strftime format of the timestamps (inferred when omitted)")


def _add_training(p: argparse.ArgumentParser) -> None:
    p.add_argument("--horizon", type=int, default=12)
    p.add_argument("--lookback", type=int, help="input steps (default: 2 horizons, up to 3 seasons)")
    p.add_argument("--frequency", help="polars duration such as 1h, 1d, 1mo (inferred when omitted)")
    p.add_argument("--season", type=int, help="seasonal period in steps (default: the calendar's, e.g. 12 for "
                   "months; for yearly data a cycle found in the data)")
    p.add_argument("--max-steps", type=int, help="optimiser steps (default: sized to the data, 300 to 2,000)")
    p.add_argument("--hidden-size", type=int, help="LSTM units (default 64; a tuned value when tuned)")
    p.add_argument("--seed", type=int, help="training seed (default 42)")
    p.add_argument("--seeds", type=int, default=3, help="network seeds; the network candidate is their median (3)")
    p.add_argument("--combine", choices=["weighted", "mean", "median", "switch"], default="weighted",
                   help="how candidates make the served forecast (weighted: from backtest errors)")
    p.add_argument("--classical", choices=["auto", "theta", "optimized_theta", "autotheta", "autoets", "none"],
                   default="auto", help="classical candidate(s) fitted at every origin (auto: AutoETS + AutoTheta "
                                        "when affordable, else Theta)")
    p.add_argument("--no-refit", action="store_true", help="serve the backtest model instead of refitting it on "
                                                            "all history up to the origin")
    p.add_argument("--devices", type=int, default=1,
                   help="train on this many processes (CPU) or GPUs at once with Lightning's DDP (1)")
    p.add_argument("--strategy", choices=["auto", "ddp_spawn", "ddp_fork", "ddp"], default="auto",
                   help="Lightning strategy when --devices > 1 (auto: ddp_spawn, which works inside a flow)")


VERBOSE_HELP = "print tracebacks on the terminal too (they always go to the log file)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nightcast", description="Batch LSTM forecasting on Prefect.")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    data_help = "CSV/Parquet file, glob or directory; local or s3:// (default: $NIGHTCAST_DATA, else the bundled sample)"
    p = sub.add_parser("retrain", help="train, evaluate and maybe promote a model")
    p.add_argument("--data", help=data_help)
    _add_common(p)
    _add_training(p)
    p.add_argument("--no-tuned", action="store_true", help="ignore the saved tuned configuration of this model")
    p = sub.add_parser("tune", help="search hyper-parameters (Optuna, rolling-origin folds); retrain uses the best")
    p.add_argument("--data", help=data_help)
    p.add_argument("--sampler", choices=["tpe", "random", "grid"], default="tpe")
    p.add_argument("--n-trials", type=int, default=20)
    p.add_argument("--folds", type=int, default=3, help="rolling-origin folds (expanding window)")
    p.add_argument("--fold-fraction", type=float, default=0.08, help="evaluation span of each fold, share of steps")
    p.add_argument("--parallel", type=int, default=1, help="trials at once in this process")
    p.add_argument("--storage", help="Optuna storage URL (default $NIGHTCAST_OPTUNA_STORAGE, a SQLite file); "
                                     "set for this process only, never sent as a flow parameter")
    p.add_argument("--study", help="study name (default nightcast-<model>-h<horizon>-<data fingerprint>: one study "
                                   "per model, horizon and data; a named study must hold trials on the same terms)")
    p.add_argument("--objective", choices=["served", "network"], default="served",
                   help="what a trial is judged by: the served combination (default) or the network alone")
    p.add_argument("--space", help="JSON file: {\"model.hidden_size\": {\"choices\": [32, 64]}, ...}")
    p.add_argument("--no-pruning", action="store_true")
    _add_common(p)
    _add_training(p)
    p = sub.add_parser("score", help="forecast from the champion as of a date")
    p.add_argument("--data", help=data_help)
    p.add_argument("--as-of", type=dt.date.fromisoformat, help="YYYY-MM-DD (default: the newest date in the data)")
    p.add_argument("--shards", type=int, default=1,
                   help="score in this many shards, as parallel tasks (on Dask when $NIGHTCAST_DASK_ADDRESS is set)")
    p.add_argument("--no-adapt-widths", dest="adapt_widths", action="store_false",
                   help="serve the bundle's interval widths, not the ones adapted to the monitored actuals")
    _add_common(p)
    p = sub.add_parser("backfill", help="forecast every as_of date in a range (skips dates already written)")
    p.add_argument("--data", help=data_help)
    p.add_argument("--start", required=True, type=dt.date.fromisoformat, help="first as_of, YYYY-MM-DD")
    p.add_argument("--end", required=True, type=dt.date.fromisoformat, help="last as_of, YYYY-MM-DD (inclusive)")
    p.add_argument("--model", help="bundle version for every date (default: each date's champion)")
    p.add_argument("--overwrite", action="store_true", help="re-score dates that already have forecasts")
    p.add_argument("--allow-look-ahead", action="store_true",
                   help="score dates before the end of the champion's training data with it anyway (refused by "
                        "default: that model has seen those dates' future)")
    p.add_argument("--max-parallel", type=int, default=2, help="dates scored at the same time (2)")
    p.add_argument("--shards", type=int, default=1,
                   help="read the data once in this many shards and score each date shard by shard, as parallel "
                        "tasks (on Dask when $NIGHTCAST_DASK_ADDRESS is set)")
    _add_common(p)
    p = sub.add_parser("partition", help="rewrite input as Parquet in the shard layout, so each shard of a "
                                         "sharded run opens only its own files")
    p.add_argument("--data", required=True, help="CSV/Parquet file, glob or directory; local or s3://")
    p.add_argument("--out", required=True, help="new directory (local or s3://); must not hold files yet")
    p.add_argument("--shards", type=int, required=True, help="the shard count the runs will use")
    p.add_argument("--series-col", default="series_id")
    p = sub.add_parser("monitor", help="score stored forecasts on the actuals that arrived; flag drift")
    p.add_argument("--data", help=data_help)
    p.add_argument("--as-of", type=dt.date.fromisoformat,
                   help="monitoring date: actuals up to the end of it (default: the newest date in the data)")
    p.add_argument("--recheck-days", type=int, help="re-join forecasts this many days back (default 28)")
    p.add_argument("--origins", type=int, help="drift: judge the champion's newest N origins (7)")
    p.add_argument("--min-origins", type=int, help="drift: judge only with this many origins (3)")
    p.add_argument("--min-points", type=int, help="drift: ... and this many scored points (20)")
    p.add_argument("--vs-seasonal-naive", help="drift when MASE exceeds seasonal naive's by this share (0.1); 'off'")
    p.add_argument("--vs-test-span", type=float, help="drift when MASE exceeds the test-span MASE by this share (off)")
    p.add_argument("--no-drift-event", action="store_true", help="judge drift but emit no event")
    p.add_argument("--cooldown-days", type=int,
                   help="no new drift event for the same champion within this many days of the last one (7)")
    _add_common(p)
    p = sub.add_parser("report", help="write the model's HTML report (reports/<model>/latest.html in the store)")
    p.add_argument("--store", help="local directory or s3://bucket/prefix (default: $NIGHTCAST_STORE or ./nightcast-store)")
    p.add_argument("--model-name", default="lstm")
    p = sub.add_parser("rollback", help="point the champion back at an earlier version (checked before the move)")
    p.add_argument("version", help="the bundle version to serve (models/<name>/versions/ in the store; every "
                                   "earlier champion is in models/<name>/champions/)")
    p.add_argument("--store", help="local directory or s3://bucket/prefix (default: $NIGHTCAST_STORE or ./nightcast-store)")
    p.add_argument("--model-name", default="lstm")
    p.add_argument("--reason", default="", help="why, recorded in the pointer and its history")
    p = sub.add_parser("serve", help="serve every deployment in deployments/prefect.yaml from this process")
    p.add_argument("--store", help="local directory or s3://bucket/prefix (default: $NIGHTCAST_STORE or ./nightcast-store)")
    p = sub.add_parser("demo", help="retrain and score on the bundled sample, then print where it all went")
    _add_common(p)
    _add_training(p)
    for p in sub.choices.values():  # also after the command; SUPPRESS keeps the global value when absent
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


def _columns(args: argparse.Namespace) -> Any:
    from nightcast.schemas.params import ColumnMap

    return ColumnMap(series_col=args.series_col, timestamp_col=args.timestamp_col,
                     target_col=args.target_col, timestamp_format=args.timestamp_format)


def _given(config: Any, **values: Any) -> Any:
    """``config`` with only the flags the user gave (a flag left out keeps the default and may be tuned)."""
    return config(**{k: v for k, v in values.items() if v is not None})


def _retrain_params(args: argparse.Namespace, data: str | None) -> Any:
    from nightcast.schemas.params import CleanConfig, ModelConfig, RetrainParams, ServeConfig, TrainConfig, WindowConfig

    return RetrainParams(
        data=data, model_name=args.model_name, columns=_columns(args),
        clean=CleanConfig(frequency=args.frequency, season_length=args.season),
        window=_given(WindowConfig, lookback=args.lookback, horizon=args.horizon),
        model=_given(ModelConfig, hidden_size=args.hidden_size),
        train=_given(TrainConfig, max_steps=args.max_steps, seed=args.seed, devices=args.devices,
                     strategy=args.strategy),
        serve=ServeConfig(seeds=args.seeds, combine=args.combine, classical=args.classical, refit=not args.no_refit),
        use_tuned=not getattr(args, "no_tuned", False),
    )


def _tune_params(args: argparse.Namespace) -> Any:
    import json
    from pathlib import Path

    from nightcast.schemas.params import TuneParams

    extra = {"space": json.loads(Path(args.space).read_text())} if args.space else {}
    return TuneParams(base=_retrain_params(args, args.data), sampler=args.sampler, n_trials=args.n_trials,
                      folds=args.folds, fold_fraction=args.fold_fraction, parallel=args.parallel,
                      study_name=args.study, objective=args.objective, pruning=not args.no_pruning, **extra)


def _monitor_params(args: argparse.Namespace, data: str | None) -> Any:
    from nightcast.schemas.monitoring import DriftRule, MonitorParams

    drift: dict[str, Any] = {k: v for k, v in {"origins": args.origins, "min_origins": args.min_origins,
                             "min_points": args.min_points, "vs_test_span": args.vs_test_span}.items()
                             if v is not None}
    if args.vs_seasonal_naive is not None:
        drift["vs_seasonal_naive"] = None if args.vs_seasonal_naive == "off" else float(args.vs_seasonal_naive)
    if args.no_drift_event:
        drift["enabled"] = False
    if args.cooldown_days is not None:
        drift["cooldown_days"] = args.cooldown_days
    extra = {"recheck_days": args.recheck_days} if args.recheck_days is not None else {}
    return MonitorParams(data=data, as_of=args.as_of, model_name=args.model_name, columns=_columns(args),
                         drift=DriftRule(**drift), **extra)


def _print_tune(out: dict) -> None:
    best = out["best"]
    print(f"\nstudy {out['study_name']} ({best['storage']}): trials {best['trials']}")
    alone = (f", the network alone {best['network']:.4f}" if best.get("network") is not None
             and best.get("objective") == "served" else "")
    print(f"best {best['metric']} of the {best.get('objective', 'network')} forecast {best['best_value']:.4f} over "
          f"{len(best['folds'])} fold(s) (seasonal naive {best['seasonal_naive']:.4f}{alone}), "
          f"trial {best['best_trial']}:")
    for k, v in best["best_params"].items():
        print(f"  {k} = {v}")
    print("saved (retrain uses it unless --no-tuned):")
    for uri in out["files"]:
        print(f"  {uri}")


def _score_params(args: argparse.Namespace, data: str | None, as_of: dt.date | None) -> Any:
    from nightcast.schemas.params import ScoreParams

    return ScoreParams(data=data, as_of=as_of, model_name=args.model_name, columns=_columns(args),
                       shards=getattr(args, "shards", 1), adapt_widths=getattr(args, "adapt_widths", True))


def _print_retrain(out: dict) -> None:
    from nightcast.tasks.forecast.evaluate import format_metrics

    print("\nTest-span metrics (every candidate and the served combination, on the same windows, raw truth):")
    print(format_metrics(out["metrics"]))
    print("served per series (weights from the backtest windows): "
          + ", ".join(f"{m} {n}" for m, n in out["served"].items()))
    if out.get("weights"):
        print("panel weights: " + ", ".join(f"{m} {w:.2f}" for m, w in out["weights"].items()))
    if (refit := out.get("refit") or {}).get("refit"):
        print(f"served networks refit on all history up to {refit['end']} ({refit['windows']} windows, "
              f"steps {refit['steps']})")
    c = out["cleaning"]
    print(f"\nrows read {out['rows']}, quarantined {out['quarantined_rows']}"
          + (f" -> {out['quarantine']}" if out["quarantine"] else ""))
    print(f"cleaning: {c['short_gaps_filled']} gap steps filled, {c['long_gap_steps']} long-gap steps flagged, "
          f"{c['outliers']} outliers ({c['outlier_action']}), {c['off_grid_rows_dropped']} off-grid rows dropped")
    for line in _input_notes(c):
        print(line)
    if out["short_series"]:
        short = out["short_series"]
        print(f"not trained on ({len(short)} series: too short for one window, or no data in the training span; "
              f"score serves them a baseline): {short[:10]}{' ...' if len(short) > 10 else ''}")
    if out.get("intervals"):
        iv = out["intervals"]
        print(f"\n{iv['level']:.0%} conformal intervals: test coverage {iv['test']['coverage']:.1%} "
              f"over {iv['test']['points']} points, mean width {iv['test']['mean_width']:.3f}")
    print(f"bundle   {out['bundle']}")
    print(f"decision {out['decision']}")
    if out.get("report"):
        print(f"report   {out['report']}")


def _listed(names: list | dict, total: int) -> str:
    shown = list(names)[:10]
    return ", ".join(map(str, shown)) + (f" ... ({total} in all)" if total > len(shown) else "")


def _input_notes(cleaning: dict) -> list[str]:
    """What the run trimmed, left out or read differently than written, naming the series."""
    v, lines = cleaning.get("validation") or {}, []
    for kind in ("leading", "trailing"):
        if n := cleaning.get(f"{kind}_blanks_dropped"):
            series = cleaning.get(f"{kind}_blank_series") or {}
            lines.append(f"{kind} blank targets trimmed: {n} rows, in {_listed(series, len(series))}")
    if n := cleaning.get("empty_series_count"):
        lines.append(f"left out, no observed target: {n} series: {_listed(cleaning.get('empty_series', []), n)}")
    if n := v.get("series_every_row_quarantined_count"):
        lines.append(f"every row quarantined: {n} series: {_listed(v.get('series_every_row_quarantined', []), n)}")
    if n := v.get("targets_missing_marker"):
        lines.append(f"missing-value markers (NaN, NA, null ...) read as gaps: {n} rows")
    if n := v.get("timestamps_with_offset"):
        lines.append(f"timestamps with a UTC offset converted to UTC: {n} rows"
                     + (f"; {v['timestamps_without_offset_read_as_utc']} without one read as UTC"
                        if v.get("timestamps_without_offset_read_as_utc") else ""))
    return lines


def _print_score(out: dict) -> None:
    print(f"\nforecasts {out['forecasts']}  (as of {out['as_of']}, {out['rows']} rows, {out['series']} series, "
          f"model version {out['model_version']})")
    print("served by method: " + ", ".join(f"{m} {n}" for m, n in out.get("methods", {}).items()))
    if widths := out.get("widths"):
        print(f"interval widths x {', '.join(f'{f:.2f}' for f in widths['factors'])} per horizon step "
              f"({sum(widths['points'])} monitored actuals through {widths['monitored_through']})")
    notes = out.get("input_notes") or {}
    if n := notes.get("series_every_row_quarantined_count"):
        print(f"every input row quarantined (not scored): {n} series: "
              f"{_listed(notes.get('series_every_row_quarantined', []), n)}")
    skipped = list(out["skipped"].items())
    for sid, why in skipped[:20]:
        print(f"  skipped {sid}: {why}")
    if len(skipped) > 20:
        print(f"  ... and {len(skipped) - 20} more skipped (see the score artifact)")


def _run(args: argparse.Namespace) -> None:
    """Run one command and print its summary."""
    from nightcast.flows.retrain import retrain_flow
    from nightcast.flows.score import score_flow

    if args.command == "retrain":
        _print_retrain(retrain_flow(_retrain_params(args, args.data)))
    elif args.command == "score":
        _print_score(score_flow(_score_params(args, args.data, args.as_of)))
    elif args.command == "tune":
        from nightcast.flows.tune import tune_flow

        _print_tune(tune_flow(_tune_params(args)))
    elif args.command == "backfill":
        from nightcast.flows.backfill import backfill_flow

        out = backfill_flow(start=args.start, end=args.end, model=args.model, overwrite=args.overwrite,
                            max_parallel=args.max_parallel, data=args.data, model_name=args.model_name,
                            columns=_columns(args), shards=args.shards, allow_look_ahead=args.allow_look_ahead)
        print(f"\n{out['summary']}\n\n{out['done']} done, {out['skipped']} skipped, {out['failed']} failed")
    elif args.command == "monitor":
        from nightcast.flows.monitor import monitor_flow
        from nightcast.tasks.ops.monitor import format_monitoring

        out = monitor_flow(_monitor_params(args, args.data))
        print("\n" + format_monitoring(out))
        if out.get("report"):
            print(f"report {out['report']}")
    elif args.command == "report":
        from nightcast.flows.report import report_flow

        out = report_flow(model_name=args.model_name, store=args.store)
        print(f"\nreport for {args.model_name} (champion {out['version']}): {out['latest']}")
        print(f"  dated copy: {out['dated']}")
        print(f"  monitoring data: {'yes' if out['monitoring'] else 'not yet (run nightcast monitor)'}")
    elif args.command == "serve":
        from nightcast.flows.serve import serve

        serve()
    else:
        _demo(args)


def _demo(args: argparse.Namespace) -> None:
    import polars as pl

    from nightcast.flows.retrain import retrain_flow
    from nightcast.flows.score import score_flow
    from nightcast.schemas.params import Settings
    from nightcast.tasks.data.sample import make_sample
    from nightcast.tasks.ops.storage import open_store

    store = open_store(Settings().store)
    sample = make_sample()
    store.write_bytes("inputs/sample.csv", sample.write_csv().encode())
    data = store.uri("inputs/sample.csv")
    print(f"sample data ({sample.height} rows, {sample['series_id'].n_unique()} series) -> {data}")
    _print_retrain(retrain_flow(_retrain_params(args, data)))
    as_of = sample.select(pl.col("timestamp").str.to_datetime().max()).item().date()
    scored = score_flow(_score_params(args, data, as_of))
    _print_score(scored)
    from nightcast.flows.report import report_flow

    report = report_flow(model_name=args.model_name)["latest"]
    print(f"\nreport {report}  (open it in a browser; `nightcast monitor` adds accuracy on actuals once they arrive)")


def _print_failure(exc: BaseException, log_path: Path | None, verbose: bool) -> None:
    """On stderr: one line naming the step, the error type and the reason, then the details."""
    import traceback

    from nightcast.flows.runtime import failed_step

    if isinstance(exc, KeyboardInterrupt):
        print("error: interrupted", file=sys.stderr)
    else:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        where = f"step {step} failed: " if (step := failed_step(exc)) else ""
        print(f"error: {where}{type(exc).__name__}: {lines[0]}", file=sys.stderr)
        if len(lines) > 1:
            print("\n".join(lines[1:]), file=sys.stderr)
        if verbose:
            print("".join(traceback.format_exception(exc)).rstrip(), file=sys.stderr)
    if log_path:
        print(f"full log: {log_path}" + ("" if verbose else " (or run with --verbose)"), file=sys.stderr)


def _partition(args: argparse.Namespace) -> int:
    import traceback

    from nightcast.tasks.serving.shard import write_shard_layout

    try:
        out = write_shard_layout(args.data, args.out, args.shards, args.series_col)
    except Exception as exc:  # noqa: BLE001 - one line, as every command fails
        print(f"error: partition failed: {exc}", file=sys.stderr)
        if args.verbose:
            print("".join(traceback.format_exception(exc)).rstrip(), file=sys.stderr)
        return 1
    print(f"wrote {out['rows']} rows of {out['series']} series into {out['shards']} of {args.shards} shards "
          f"under {out['out']} (nshards={args.shards}/shard=K/); score with --shards {args.shards}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    """Move the champion pointer to an earlier bundle, after loading it (checksums, files) as scoring would."""
    from nightcast.schemas.params import Settings
    from nightcast.tasks.ops.registry import Decision, load_bundle, read_champion, set_champion
    from nightcast.tasks.ops.storage import open_store

    try:
        store = open_store(args.store or Settings().store)
        load_bundle(store, args.model_name, args.version)  # a missing or damaged bundle is refused here
        before = (read_champion(store, args.model_name) or {}).get("version")
        reason = "rollback by an operator" + (f": {args.reason}" if args.reason else "")
        pointer = set_champion(store, args.model_name, args.version, Decision(True, reason), {})
    except Exception as exc:  # noqa: BLE001 - one line, as every command fails
        print(f"error: rollback failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"champion of {args.model_name}: {before} -> {pointer['version']} ({reason})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if args.command == "partition":  # a file rewrite: no flow, no Prefect API
        return _partition(args)
    if args.command == "rollback":  # a pointer swap: no flow, no Prefect API
        return _rollback(args)
    if args.store:
        os.environ["NIGHTCAST_STORE"] = args.store
    if getattr(args, "storage", None):  # a URL with a password stays in this process's environment
        os.environ["NIGHTCAST_OPTUNA_STORAGE"] = args.storage
    from nightcast.flows.console import FILE_ONLY, cli_logging
    from nightcast.flows.embedded import embedded_server

    started = time.monotonic()
    with cli_logging(args.command, args.verbose) as log_path:
        try:
            with embedded_server(output=log_path):
                _run(args)
        except (KeyboardInterrupt, Exception) as exc:  # one line first, then the detail
            logging.getLogger("nightcast.cli").error("nightcast %s failed", args.command, exc_info=exc,
                                                     extra={FILE_ONLY: True})
            _print_failure(exc, log_path, args.verbose)
            return 130 if isinstance(exc, KeyboardInterrupt) else 1
    print(f"\ndone in {time.monotonic() - started:.0f}s" + (f", log {log_path}" if log_path else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
