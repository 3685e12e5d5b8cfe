import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nightcast.flows.cli import _retrain_params, build_parser, main


@pytest.mark.usefixtures("prefect_harness")
def test_failure_exits_non_zero_with_one_line_reason_first(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NIGHTCAST_LOG_DIR", str(tmp_path / "logs"))
    code = main(["retrain", "--data", str(tmp_path / "missing.csv"), "--store", str(tmp_path / "s")])
    assert code == 1
    err = capsys.readouterr().err.splitlines()
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1  # ours is one line with the reason ...
    # ... and it names the step that failed
    assert errors[0].startswith("error: step ingest failed: IngestError: input not found:") and "missing.csv" in errors[0]
    # the last line says where the full log is (tests/flows/test_cli_errors.py runs the real command)
    log = Path(err[-1].removeprefix("full log: ").split(" (")[0])
    assert log.parent == tmp_path / "logs" and "IngestError" in log.read_text()


def test_verbose_is_a_global_flag_also_accepted_after_the_command():
    parse = build_parser().parse_args
    assert parse(["retrain"]).verbose is False
    assert parse(["--verbose", "retrain"]).verbose is True
    assert parse(["-v", "score"]).verbose is True
    assert parse(["backfill", "--start", "2026-01-01", "--end", "2026-01-02", "--verbose"]).verbose is True


def test_bad_flag_value_is_rejected_by_argparse():
    with pytest.raises(SystemExit) as exc:
        main(["score", "--data", "x.csv", "--as-of", "yesterday"])
    assert exc.value.code == 2


@pytest.mark.slow
def test_demo_from_the_command_line(tmp_path):
    """`nightcast demo` as a user runs it: its own process, its own temporary Prefect server."""
    exe = Path(sys.executable).with_name("nightcast")
    env = {**os.environ, "NIGHTCAST_PROGRESS": "false"}
    run = subprocess.run([str(exe), "demo", "--store", str(tmp_path / "store"), "--max-steps", "60"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    for model in ("lstm", "seasonal_naive", "naive"):
        assert f"\n{model} " in out
    assert "decision " in out and "forecasts " in out
    partitions = list((tmp_path / "store" / "forecasts" / "model=lstm").glob("as_of=*/forecasts.parquet"))
    assert len(partitions) == 1
    assert list((tmp_path / "store" / "models" / "lstm" / "versions").glob("*/manifest.json"))
    latest = tmp_path / "store" / "reports" / "lstm" / "latest.html"
    ours = [line for line in out.splitlines() if not re.match(r"\d\d:\d\d:\d\d", line) and line.strip()]
    assert ours[-2].startswith(f"report {latest}") and ours[-1].startswith("done in ")  # it ends with its report
    assert "<h2" in latest.read_text()


@pytest.mark.slow
def test_accuracy_bench_runs_from_one_command(tmp_path):
    """`python bench/accuracy.py` end to end on one small dataset, one seed, a short budget, every ablation row."""
    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "accuracy.md"
    run = subprocess.run([sys.executable, str(repo / "bench" / "accuracy.py"), "--datasets", "sunspots", "--seeds", "1",
                          "--max-steps", "30", "--out", str(out)], capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    for model in ("nightcast served", "no refit", "one network seed", "hard switch", "no classical", "clipped truth",
                  "no trim", "calendar season only",
                  "seasonal naive", "AutoETS", "AutoTheta"):
        assert f"| {model} |" in run.stdout, model
    assert "**Over datasets**" in run.stdout and out.read_text() in run.stdout


def test_retrain_summary_names_the_series_the_input_lost_or_trimmed():
    from nightcast.flows.cli import _input_notes

    lines = _input_notes({"leading_blanks_dropped": 5, "leading_blank_series": {"a": 3, "b": 2},
                          "trailing_blanks_dropped": 0, "empty_series_count": 12,
                          "empty_series": [f"e{i}" for i in range(12)],
                          "validation": {"series_every_row_quarantined_count": 1,
                                         "series_every_row_quarantined": ["text-only"]}})
    assert lines == ["leading blank targets trimmed: 5 rows, in a, b",
                     "left out, no observed target: 12 series: e0, e1, e2, e3, e4, e5, e6, e7, e8, e9 ... (12 in all)",
                     "every row quarantined: 1 series: text-only"]
    assert _input_notes({}) == []


def test_monitor_flags_become_the_drift_rule():
    from nightcast.flows.cli import _monitor_params

    args = build_parser().parse_args(["monitor", "--data", "x.csv", "--as-of", "2026-10-13", "--origins", "5",
                                      "--vs-seasonal-naive", "off", "--vs-test-span", "0.2", "--no-drift-event",
                                      "--recheck-days", "40", "--model-name", "m2"])
    params = _monitor_params(args, args.data)
    assert (params.data, str(params.as_of), params.model_name, params.recheck_days) == ("x.csv", "2026-10-13", "m2", 40)
    assert (params.drift.origins, params.drift.vs_seasonal_naive, params.drift.vs_test_span,
            params.drift.enabled) == (5, None, 0.2, False)
    default = _monitor_params(build_parser().parse_args(["monitor"]), None).drift
    assert default.vs_seasonal_naive == 0.1 and default.enabled


def test_season_flag_sets_the_season_every_rule_reads():
    from nightcast.flows.cli import _retrain_params

    args = build_parser().parse_args(["retrain", "--data", "x.csv", "--season", "11"])
    assert _retrain_params(args, args.data).clean.season_length == 11
    args = build_parser().parse_args(["retrain", "--data", "x.csv"])
    assert _retrain_params(args, args.data).clean.season_length is None  # decided from the calendar and data


def test_cli_defaults_and_help_come_from_the_parameter_models():
    """No flag restates a default: a command given no flags builds exactly the models' defaults, and the help
    text of a flag is its field's description."""
    from nightcast.flows.cli import _monitor_params, _tune_params
    from nightcast.schemas.monitoring import MonitorParams
    from nightcast.schemas.params import RetrainParams, ServeConfig, TuneParams

    parser = build_parser()
    assert _retrain_params(parser.parse_args(["retrain"]), None) == RetrainParams(data=None)
    assert _tune_params(parser.parse_args(["tune"])) == TuneParams(base=RetrainParams(data=None))
    assert _monitor_params(parser.parse_args(["monitor"]), None) == MonitorParams(data=None)
    retrain = next(a for a in parser._subparsers._group_actions[0].choices["retrain"]._actions
                   if "--classical" in a.option_strings)
    assert retrain.default == ServeConfig().classical
    assert retrain.help.startswith(ServeConfig.model_fields["classical"].description)
    assert retrain.choices == ["auto", "theta", "optimized_theta", "autotheta", "autoets", "none"]
    flags = _retrain_params(parser.parse_args(["retrain", "--no-refit", "--no-tuned", "--seed", "7", "--season", "4"]),
                            None)
    assert (flags.serve.refit, flags.use_tuned, flags.train.seed, flags.clean.season_length) == (False, False, 7, 4)


def test_sample_flag_reaches_retrain_and_tune_and_tune_reads_the_same_sample(monkeypatch, tmp_path):
    """``--sample`` is the base run's share of series for retrain and tune alike, and the tune flow reads
    its data with it, as retrain does (a tune of a catalogue too big for one process reads the sample)."""
    from nightcast.flows import tune as tune_module
    from nightcast.flows.cli import _tune_params

    parser = build_parser()
    assert _retrain_params(parser.parse_args(["retrain", "--sample", "0.3"]), None).sample == 0.3
    params = _tune_params(parser.parse_args(["tune", "--data", "x.csv", "--sample", "0.2"]))
    assert params.base.sample == 0.2
    seen = {}

    class Stop(Exception):
        pass

    def ingest(data, columns, sample=None):  # noqa: ANN001, ANN202 - the step's stand-in
        seen.update(data=data, sample=sample)
        raise Stop

    monkeypatch.setattr(tune_module, "ingest", ingest)
    # the flow's body without a Prefect API (the session's shared test server would stay in this worker's
    # settings for the files after it): its logger is the only thing it asks Prefect for before reading
    monkeypatch.setattr(tune_module, "get_run_logger", lambda: logging.getLogger("test"))
    monkeypatch.setenv("NIGHTCAST_OPTUNA_STORAGE", f"sqlite:///{tmp_path / 'optuna.db'}")
    with pytest.raises(Stop):
        tune_module.tune_flow.fn(params, store=str(tmp_path / "store"))
    assert seen == {"data": "x.csv", "sample": 0.2}
