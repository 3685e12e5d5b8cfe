"""The ``nightcast`` command. Flags that set a parameter take their type, choices, default and help text
from the parameter models in ``nightcast.schemas`` (one source for both)."""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal, get_args, get_origin


def _option(p: argparse.ArgumentParser, flag: str, model: Any, field: str, *, given_only: bool = False,
            **kw: Any) -> None:
    """A flag for one field of a parameter model: its type, choices, default and help text come from the
    field (one source for both); ``given_only`` flags default to None, so that a value nobody typed leaves
    the field to the model (and to a tuned configuration, which an explicit flag overrides)."""
    info = model.model_fields[field]
    default = info.get_default(call_default_factory=True)
    kinds = [a for a in (get_args(info.annotation) or (info.annotation,)) if a is not type(None)]
    options: dict[str, Any] = {}
    if get_origin(info.annotation) is Literal:
        options["choices"] = list(get_args(info.annotation))
    elif kinds and kinds[0] in (int, float):
        options["type"] = kinds[0]
    elif kinds and kinds[0] is dt.date:
        options["type"] = dt.date.fromisoformat
    text = _help(kw.pop("help", None) or info.description, field)
    if default is not None:
        text += f" (default {default})"
    p.add_argument(flag, dest=field, default=None if given_only else default, help=text, **{**options, **kw})


def _switch(p: argparse.ArgumentParser, flag: str, model: Any, field: str) -> None:
    """A boolean field as one flag: ``--no-x`` turns a default-true field off, ``--x`` a default-false one on."""
    info = model.model_fields[field]
    on = bool(info.get_default())
    p.add_argument(flag, dest=field, action="store_false" if on else "store_true", default=on,
                   help=_help(info.description, field))


def _help(text: str | None, field: str) -> str:
    """Help text for argparse (which formats ``%``): the field's description, else its name."""
    return (text or field.replace("_", " ")).replace("%", "%%")


def _add_common(p: argparse.ArgumentParser) -> None:
    from nightcast.schemas.params import ColumnMap, RetrainParams

    p.add_argument("--store", help=STORE_HELP)
    _option(p, "--model-name", RetrainParams, "model_name")
    for flag in ("--series-col", "--timestamp-col", "--target-col", "--timestamp-format"):
        _option(p, flag, ColumnMap, flag[2:].replace("-", "_"))


def _add_training(p: argparse.ArgumentParser) -> None:
    from nightcast.schemas.params import CleanConfig, ModelConfig, ServeConfig, TrainConfig, WindowConfig

    _option(p, "--horizon", WindowConfig, "horizon", help="forecast steps")
    _option(p, "--lookback", WindowConfig, "lookback")
    _option(p, "--frequency", CleanConfig, "frequency")
    _option(p, "--season", CleanConfig, "season_length", metavar="STEPS", help="seasonal period in steps (default: the calendar's, "
            "e.g. 12 for months; for yearly data a cycle found in the data)")
    _option(p, "--max-steps", TrainConfig, "max_steps")
    _option(p, "--hidden-size", ModelConfig, "hidden_size", given_only=True, help="LSTM units (a tuned value when tuned)")
    _option(p, "--seed", TrainConfig, "seed", given_only=True, help="training seed")
    _option(p, "--seeds", ServeConfig, "seeds")
    _option(p, "--combine", ServeConfig, "combine")
    _option(p, "--classical", ServeConfig, "classical")
    _switch(p, "--no-refit", ServeConfig, "refit")
    _option(p, "--devices", TrainConfig, "devices")
    _option(p, "--strategy", TrainConfig, "strategy")


VERBOSE_HELP = "print tracebacks on the terminal too (they always go to the log file)"
STORE_HELP = "local directory or s3://bucket/prefix (default: $NIGHTCAST_STORE or ./nightcast-store)"
DATA_HELP = "CSV/Parquet file, glob or directory; local or s3:// (default: $NIGHTCAST_DATA, else the bundled sample)"


def build_parser() -> argparse.ArgumentParser:
    """The command line; each subcommand's flags are built by its own function below."""
    parser = argparse.ArgumentParser(prog="nightcast", description="Batch LSTM forecasting on Prefect.")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_, add in _COMMANDS:
        add(sub.add_parser(name, help=help_))
    for p in sub.choices.values():  # also after the command; SUPPRESS keeps the global value when absent
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


def _retrain_flags(p: argparse.ArgumentParser) -> None:
    from nightcast.schemas.params import RetrainParams

    p.add_argument("--data", help=DATA_HELP)
    _add_common(p)
    _add_training(p)
    _switch(p, "--no-tuned", RetrainParams, "use_tuned")
    _option(p, "--sample", RetrainParams, "sample", given_only=True)
    _option(p, "--shards", RetrainParams, "shards")


def _tune_flags(p: argparse.ArgumentParser) -> None:
    from nightcast.schemas.params import RetrainParams, TuneParams

    p.add_argument("--data", help=DATA_HELP)
    for flag, field in (("--sampler", "sampler"), ("--n-trials", "n_trials"), ("--folds", "folds"),
                        ("--fold-fraction", "fold_fraction"), ("--parallel", "parallel"), ("--study", "study_name"),
                        ("--objective", "objective")):
        _option(p, flag, TuneParams, field)
    p.add_argument("--storage", help="Optuna storage URL (default $NIGHTCAST_OPTUNA_STORAGE, a SQLite file); "
                                     "set for this process only, never sent as a flow parameter")
    p.add_argument("--space", help="JSON file: {\"model.hidden_size\": {\"choices\": [32, 64]}, ...}")
    _option(p, "--sample", RetrainParams, "sample", given_only=True)
    _switch(p, "--no-pruning", TuneParams, "pruning")
    _add_common(p)
    _add_training(p)


def _score_flags(p: argparse.ArgumentParser) -> None:
    from nightcast.schemas.params import ScoreParams

    p.add_argument("--data", help=DATA_HELP)
    _option(p, "--as-of", ScoreParams, "as_of")
    _option(p, "--shards", ScoreParams, "shards")
    _switch(p, "--no-adapt-widths", ScoreParams, "adapt_widths")
    _add_common(p)


def _backfill_flags(p: argparse.ArgumentParser) -> None:
    from nightcast.schemas.params import BackfillParams

    p.add_argument("--data", help=DATA_HELP)
    p.add_argument("--start", required=True, type=dt.date.fromisoformat, help="first as_of, YYYY-MM-DD")
    p.add_argument("--end", required=True, type=dt.date.fromisoformat, help="last as_of, YYYY-MM-DD (inclusive)")
    _option(p, "--model", BackfillParams, "model")
    _switch(p, "--overwrite", BackfillParams, "overwrite")
    _switch(p, "--allow-look-ahead", BackfillParams, "allow_look_ahead")
    _option(p, "--max-parallel", BackfillParams, "max_parallel")
    _option(p, "--shards", BackfillParams, "shards")
    _add_common(p)


def _partition_flags(p: argparse.ArgumentParser) -> None:
    from nightcast.schemas.params import ColumnMap

    p.add_argument("--data", required=True, help="CSV/Parquet file, glob or directory; local or s3://")
    p.add_argument("--out", required=True, help="new directory (local or s3://); must not hold files yet")
    p.add_argument("--shards", type=int, required=True, help="the shard count the runs will use")
    _option(p, "--series-col", ColumnMap, "series_col")


def _monitor_flags(p: argparse.ArgumentParser) -> None:
    from nightcast.schemas.monitoring import DriftRule, MonitorParams

    p.add_argument("--data", help=DATA_HELP)
    _option(p, "--as-of", MonitorParams, "as_of")
    _option(p, "--recheck-days", MonitorParams, "recheck_days", given_only=True)
    for flag, field in (("--origins", "origins"), ("--min-origins", "min_origins"), ("--min-points", "min_points"),
                        ("--vs-test-span", "vs_test_span"), ("--cooldown-days", "cooldown_days")):
        _option(p, flag, DriftRule, field, given_only=True)
    _option(p, "--vs-seasonal-naive", DriftRule, "vs_seasonal_naive", given_only=True, type=str,
            help=DriftRule.model_fields["vs_seasonal_naive"].description + "; 'off' turns it off")
    _switch(p, "--no-drift-event", DriftRule, "enabled")
    _add_common(p)


def _report_flags(p: argparse.ArgumentParser) -> None:
    from nightcast.schemas.params import RetrainParams

    p.add_argument("--store", help=STORE_HELP)
    _option(p, "--model-name", RetrainParams, "model_name")


def _rollback_flags(p: argparse.ArgumentParser) -> None:
    _report_flags(p)
    p.add_argument("version", help="the bundle version to serve (models/<name>/versions/ in the store; every "
                                   "earlier champion is in models/<name>/champions/)")
    p.add_argument("--reason", default="", help="why, recorded in the pointer and its history")


def _serve_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", help=STORE_HELP)


def _demo_flags(p: argparse.ArgumentParser) -> None:
    _add_common(p)
    _add_training(p)


_COMMANDS = [
    ("retrain", "train, evaluate and maybe promote a model", _retrain_flags),
    ("tune", "search hyper-parameters (Optuna, rolling-origin folds); retrain uses the best", _tune_flags),
    ("score", "forecast from the champion as of a date", _score_flags),
    ("backfill", "forecast every as_of date in a range (skips dates already written)", _backfill_flags),
    ("partition", "rewrite input as Parquet in the shard layout, so each shard of a sharded run opens only its "
                  "own files", _partition_flags),
    ("monitor", "score stored forecasts on the actuals that arrived; flag drift", _monitor_flags),
    ("report", "write the model's HTML report (reports/<model>/latest.html in the store)", _report_flags),
    ("rollback", "point the champion back at an earlier version (checked before the move)", _rollback_flags),
    ("serve", "serve every deployment in deployments/prefect.yaml from this process", _serve_flags),
    ("demo", "retrain and score on the bundled sample, then print where it all went", _demo_flags),
]


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
        clean=CleanConfig(frequency=args.frequency, season_length=args.season_length),
        window=_given(WindowConfig, lookback=args.lookback, horizon=args.horizon),
        model=_given(ModelConfig, hidden_size=args.hidden_size),
        train=_given(TrainConfig, max_steps=args.max_steps, seed=args.seed, devices=args.devices,
                     strategy=args.strategy),
        serve=ServeConfig(seeds=args.seeds, combine=args.combine, classical=args.classical, refit=args.refit),
        use_tuned=getattr(args, "use_tuned", True),
        **({"sample": args.sample} if getattr(args, "sample", None) is not None else {}),
        shards=getattr(args, "shards", 1),
    )


def _tune_params(args: argparse.Namespace) -> Any:
    import json
    from pathlib import Path

    from nightcast.schemas.params import TuneParams

    extra = {"space": json.loads(Path(args.space).read_text())} if args.space else {}
    return TuneParams(base=_retrain_params(args, args.data), sampler=args.sampler, n_trials=args.n_trials,
                      folds=args.folds, fold_fraction=args.fold_fraction, parallel=args.parallel,
                      study_name=args.study_name, objective=args.objective, pruning=args.pruning, **extra)


def _monitor_params(args: argparse.Namespace, data: str | None) -> Any:
    from nightcast.schemas.monitoring import DriftRule, MonitorParams

    drift: dict[str, Any] = {k: v for k, v in {"origins": args.origins, "min_origins": args.min_origins,
                             "min_points": args.min_points, "vs_test_span": args.vs_test_span,
                             "cooldown_days": args.cooldown_days}.items() if v is not None}
    if args.vs_seasonal_naive is not None:
        drift["vs_seasonal_naive"] = None if args.vs_seasonal_naive == "off" else float(args.vs_seasonal_naive)
    if not args.enabled:
        drift["enabled"] = False
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


_FLOW_MODULES = {"retrain": ("retrain",), "score": ("score",), "tune": ("tune",), "backfill": ("backfill",),
                 "monitor": ("monitor",), "report": ("report",), "serve": ("serve",),
                 "demo": ("retrain", "score", "report")}
"""The flow modules each command runs (scoring's do not import Lightning: ``nightcast.tasks.forecast.predict``)."""


def _import_flows(command: str) -> None:
    """What ``_run`` imports for ``command`` (torch, polars, Prefect's flows, Lightning for training: 2.5-4.5 s),
    done while a temporary server boots (``embedded_server``'s ``meanwhile``) rather than after it answers."""
    import importlib

    for name in _FLOW_MODULES.get(command, ()):
        importlib.import_module(f"nightcast.flows.{name}")


def _run(args: argparse.Namespace) -> None:
    """Run one command and print its summary."""
    if args.command == "retrain":
        from nightcast.flows.retrain import retrain_flow

        _print_retrain(retrain_flow(_retrain_params(args, args.data)))
    elif args.command == "score":
        from nightcast.flows.score import score_flow

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
            with embedded_server(output=log_path, meanwhile=functools.partial(_import_flows, args.command)):
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
