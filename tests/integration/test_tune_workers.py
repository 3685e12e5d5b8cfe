"""Two Prefect workers add trials to one Optuna study on PostgreSQL, at the same time."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import optuna
import pytest

from tests.integration.conftest import BIN, FAST_RETRAIN, REPO, start_stack, wait_for

pytestmark = pytest.mark.slow


def test_two_workers_share_one_study(tmp_path, moto_endpoint, sample_raw, postgres_url, aws_for_tests):
    study_url = postgres_url.replace("+asyncpg", "+psycopg2")
    stack = start_stack(tmp_path, moto_endpoint, sample_raw)
    try:
        assert stack.prefect("work-pool", "create", "nightcast", "--type", "process").returncode == 0
        deployed = stack.prefect("--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
        assert deployed.returncode == 0, deployed.stdout[-3000:]
        env = {**stack.env, "PREFECT_WORKER_QUERY_SECONDS": "1"}  # pick runs up promptly
        for name in ("w1", "w2"):  # one run at a time each: two concurrent runs need both workers
            stack.procs.start(name, [str(BIN / "prefect"), "worker", "start", "--pool", "nightcast",
                                     "--name", name, "--limit", "1"], env, stack.logs)
        fast = FAST_RETRAIN["params"]
        params = {"params": {
            "base": {**fast, "train": {**fast["train"], "max_epochs": 8, "patience": 8}},
            "space": {"model.hidden_size": {"choices": [8, 16, 32]},
                      "train.learning_rate": {"low": 1e-3, "high": 1e-2, "log": True}},
            "sampler": "random", "n_trials": 3, "folds": 2, "fold_fraction": 0.08, "pruning": False,
            "storage_secret": "optuna-study", "study_name": "shared"}}
        # the URL (a password in real life) lives in a Prefect Secret block, never in the run's parameters
        saved = subprocess.run([sys.executable, "-c", "import sys; from prefect.blocks.system import Secret; "
                                "Secret(value=sys.argv[1]).save('optuna-study')", study_url],
                               env=stack.env, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert saved.returncode == 0, saved.stderr[-2000:]
        for _ in range(2):
            run = stack.prefect("deployment", "run", "tune/weekly", "--params", json.dumps(params))
            assert run.returncode == 0, run.stdout[-2000:]

        def finished():
            runs = httpx.post(f"{stack.api_url}/flow_runs/filter", json={}, timeout=10).json()
            tune_runs = [r for r in runs if r["parameters"].get("params", {}).get("study_name") == "shared"]
            done = [r for r in tune_runs if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED")]
            return tune_runs if len(done) == 2 else None

        runs = wait_for(finished, 420, "both tune runs to finish")
        assert all(study_url not in json.dumps(r["parameters"]) for r in runs)
        logs = stack.procs.log("w1")[-3000:] + stack.procs.log("w2")[-3000:]
        assert [r["state_type"] for r in runs] == ["COMPLETED", "COMPLETED"], logs
    finally:
        stack.procs.stop()

    study = optuna.load_study(study_name="shared", storage=study_url)
    assert len(study.trials) == 6 and all(t.state.name == "COMPLETE" for t in study.trials)
    spans = {}
    for t in study.trials:  # each worker's first start and last end
        a, b = spans.get(t.user_attrs["worker"], (t.datetime_start, t.datetime_complete))
        spans[t.user_attrs["worker"]] = (min(a, t.datetime_start), max(b, t.datetime_complete))
    assert len(spans) == 2  # two processes wrote to one study...
    assert max(a for a, _ in spans.values()) < min(b for _, b in spans.values())  # ...at the same time
    best = json.loads(stack.read("models/lstm/tuning/best.json"))
    assert best["study_name"] == "shared" and best["storage"].startswith("postgresql")
