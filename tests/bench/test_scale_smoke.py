"""bench/scale.py end to end on a tiny panel: every stage runs and the table says what it measured."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_scale_bench_runs_from_one_command(tmp_path):
    out = tmp_path / "scale.md"
    run = subprocess.run([sys.executable, str(REPO / "bench" / "scale.py"), "--series", "50", "--steps", "300",
                          "--seeds", "1", "--classical", "theta", "--train-steps", "20", "--score-train-steps", "10",
                          "--repeats", "2", "--out", str(out)],  # the plumbing, not the defaults
                         capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    table = out.read_text()
    assert table in run.stdout
    assert "## 50 series × 300 steps" in table
    assert "served: 1 network seed(s), classical `theta`" in table
    assert "error" not in table, table
    for row in ("| ingest → validate → prepare vs polars floor |", "| peak RSS ingest → prepare vs the polars floor's peak |",
                "| training windows/s: `train_model` vs raw loop |", "vs sgemm peak |",
                "| scoring series/minute, network + baselines (`forecast_from_bundle` less the classical fits) |",
                "| scoring series/minute, all of `forecast_from_bundle` (classical fits included) |",
                "| Theta fit per history of ", "× faster |",
                "| test-span MASE, served vs seasonal naive (short retrain_flow) |"):
        assert row in table
    for step in ("ingest (`load_observations`)", "validate (`validate_observations`)", "`prepare_training`",
                 "train: `train_model` (Lightning)", "train: raw PyTorch loop", "score: `forecast_from_bundle`",
                 "score: raw LSTM forward (reference)"):
        assert step in table
    assert table.count(" met |") + table.count(" **missed** |") == 4  # every target has a verdict
    # the data path and its floor: the fastest of two fresh processes each, every run's seconds shown
    assert table.count("fastest of 2 processes") == 2, table  # the floor row, and the data path's first row
    # the worker-scaling rows: one process, then Dask with 1 and 2 workers, and the estimate from them
    # (every process of them on one core but the default one's)
    assert "each process on one core: `POLARS_MAX_THREADS=1`" in table
    for row in ("| score flow, 1 process, unsharded, one core (`NIGHTCAST_CLASSICAL_JOBS=1`, `NIGHTCAST_INFERENCE_THREADS=1`, "
                "`POLARS_MAX_THREADS=1`) |",
                "| score flow, 1 process, unsharded, default (polars, inference and statsforecast's fits on ",
                "| score flow on Dask, 1 worker(s), shard layout |",
                "| score flow on Dask, 2 worker(s), shard layout |", "**Estimate for 1,000,000 series**",
                "- 60 min window: "):  # a worker count, or, extrapolated from 50 series on a slow hour, "steps alone take longer"
        assert row in table


@pytest.mark.slow
def test_the_million_mode_runs_every_command_and_accounts_for_every_series(tmp_path):
    """``--million`` at a tiny size: the panel streamed, partitioned, retrained on a sample, scored on a local
    Dask cluster; every command's processes measured; each series forecast or named."""
    out = tmp_path / "million.md"
    run = subprocess.run([sys.executable, str(REPO / "bench" / "scale.py"), "--million", "--million-series", "600",
                          "--million-steps", "200", "--million-shards", "4", "--million-sample", "0.5",
                          "--score-train-steps", "10", "--seeds", "1", "--classical", "theta", "--out", str(out)],
                         capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    table = out.read_text()
    assert "failed" not in table, table
    for step in ("| panel |", "| partition |", "| retrain |", "| score |"):
        assert step in table
    assert "--sample 0.5" in table and "Dask process (worker / nanny)" in table
    assert "of 600**" in table and "; 0 unaccounted." in table
    # the retrain cleaned every shard on the cluster's workers; the flow's process got the sample
    assert "valid rows of 600 series validated and cleaned in 4 shards by" in table, table
    retrain = next(line for line in table.splitlines() if line.startswith("| retrain |"))
    assert "--shards 4 --sample 0.5" in retrain and "Dask process (worker / nanny)" in retrain, retrain
