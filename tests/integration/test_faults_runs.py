"""Fault injection with real processes: racing retrains, a tampered bundle, hostile names.

Every run is the ``nightcast`` CLI as a user starts it, against a real ``prefect server`` and S3 over HTTP
(``moto_server``). Interleavings are forced, not hoped for: a run is frozen with SIGSTOP at a chosen point
and thawed with SIGCONT.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import boto3
import polars as pl
import pytest
import torch

from tests.integration.conftest import BIN, REPO, Stack, start_stack, wait_for

pytestmark = pytest.mark.slow

FAST = ["--horizon", "6", "--lookback", "24", "--hidden-size", "32", "--max-steps", "300", "--seeds", "1", "--classical", "theta"]
POOR = ["--horizon", "6", "--lookback", "24", "--hidden-size", "2", "--max-steps", "3", "--seeds", "1", "--classical", "theta"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, moto_endpoint, sample_raw, aws_for_tests):
    s = start_stack(tmp_path_factory.mktemp("faults"), moto_endpoint, sample_raw)
    try:
        yield s
    finally:
        s.procs.stop()


class Run:
    """A ``nightcast`` CLI process in its own process group; output to a file we can watch."""

    def __init__(self, stack: Stack, name: str, args: list[str], store: str) -> None:
        self.log = stack.logs / f"{name}.out"
        env = {**stack.env, "NIGHTCAST_STORE": store}
        self.proc = subprocess.Popen([str(BIN / "nightcast"), *args], env=env, cwd=REPO, stdout=self.log.open("wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def reached(self, pattern: str, timeout: float = 300) -> None:
        def seen():
            if self.proc.poll() is not None and not re.search(pattern, self.text()):
                raise AssertionError(f"run ended before {pattern!r}:\n{self.text()[-3000:]}")
            return re.search(pattern, self.text())
        wait_for(seen, timeout, pattern, interval=0.02)

    def pause(self) -> None:
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def finish(self, timeout: float = 400) -> str:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise
        return self.text()

    def version(self) -> str:
        return re.search(r"bundle\s+s3://\S+/versions/(\S+)", self.text()).group(1)


def _pointer(stack: Stack, prefix: str, name: str = "lstm") -> dict:
    return json.loads(stack.read(f"{prefix}/models/{name}/champion.json"))


def _history(stack: Stack, prefix: str) -> list[str]:
    return [json.loads(stack.read(k))["version"] for k in stack.keys(f"{prefix}/models/lstm/champions/")]


# the champion has been read once this step has finished: from here on the run holds a stale view
READ_CHAMPION = r"Task run 'load-champion-\w+' - Finished in state Completed"


@pytest.mark.parametrize("last", ["poor", "good"])
def test_the_better_model_is_champion_whichever_retrain_finishes_last(stack, last):
    prefix = f"race-{last}"
    store = f"s3://{stack.bucket}/store/{prefix}"
    runs = {"good": Run(stack, f"good-{last}", ["retrain", *FAST], store),
            "poor": Run(stack, f"poor-{last}", ["retrain", *POOR], store)}
    late, early = runs[last], runs["good" if last == "poor" else "poor"]
    # freeze each run the moment it has read the (empty) registry, so both hold the same stale view
    frozen: set[str] = set()
    deadline = time.monotonic() + 300
    while len(frozen) < 2 and time.monotonic() < deadline:
        for name, run in runs.items():
            if name not in frozen and re.search(READ_CHAMPION, run.text()):
                run.pause()
                frozen.add(name)
                assert "bundle written" not in run.text(), f"{name} got past training before it could be frozen"
            elif run.proc.poll() is not None:
                raise AssertionError(f"{name} ended early:\n{run.text()[-3000:]}")
        time.sleep(0.02)
    assert len(frozen) == 2, "both runs should have read the champion"
    early.resume()
    out = early.finish()
    assert early.proc.returncode == 0, out[-3000:]
    assert _pointer(stack, prefix)["version"] == early.version()  # the first model of a name is served
    late.resume()
    out = late.finish()
    assert late.proc.returncode == 0, out[-3000:]
    assert "the champion moved to" in out  # it judged again, against the model promoted meanwhile
    good, poor = runs["good"].version(), runs["poor"].version()
    assert _pointer(stack, prefix)["version"] == good
    assert _history(stack, prefix) == ([good] if last == "poor" else [poor, good])
    pointer = _pointer(stack, prefix)
    assert pointer["previous"] == (None if last == "poor" else poor)


def _exploit_weights(marker: Path) -> bytes:
    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    buf = io.BytesIO()
    torch.save({"encoder.weight_ih_l0": Exploit()}, buf)
    return buf.getvalue()


def test_a_tampered_bundle_runs_no_code_fails_once_and_says_which_file(stack, tmp_path):
    prefix = "tampered"
    store = f"s3://{stack.bucket}/store/{prefix}"
    first = Run(stack, "tamper-train", ["retrain", *FAST], store)
    assert first.finish() and first.proc.returncode == 0, first.text()[-3000:]
    version = _pointer(stack, prefix)["version"]
    # someone with write access to the bucket swaps the weights and fixes the checksum up
    s3 = boto3.client("s3", endpoint_url=stack.env["AWS_ENDPOINT_URL"])
    key = f"store/{prefix}/models/lstm/versions/{version}"
    marker = tmp_path / "code-ran"
    evil = _exploit_weights(marker)
    manifest = json.loads(s3.get_object(Bucket=stack.bucket, Key=f"{key}/manifest.json")["Body"].read())
    manifest["files"]["weights.pt"] = hashlib.sha256(evil).hexdigest()
    s3.put_object(Bucket=stack.bucket, Key=f"{key}/weights.pt", Body=evil)
    s3.put_object(Bucket=stack.bucket, Key=f"{key}/manifest.json", Body=json.dumps(manifest).encode())

    score = Run(stack, "tamper-score", ["score"], store)
    out = score.finish()
    assert score.proc.returncode == 1
    assert not marker.exists()
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert errors and "weights.pt" in errors[0] and version in errors[0], out[-3000:]
    assert "weights_only=False" not in out
    assert not re.search(r"Retry \d+/\d+ will start", out)  # a corrupt bundle is not a transient error
    assert not stack.keys(f"{prefix}/forecasts/")


def test_model_names_that_differ_never_share_keys(stack):
    prefix = "names"
    store = f"s3://{stack.bucket}/store/{prefix}"
    for name in ("lstm", "lstm_"):
        run = Run(stack, f"name-{name}", ["retrain", "--model-name", name, *POOR], store)
        assert run.finish() and run.proc.returncode == 0, run.text()[-3000:]
    plain = stack.keys(f"{prefix}/forecasts/model=lstm/")
    run = Run(stack, "name-score-plain", ["score", "--model-name", "lstm"], store)
    assert run.finish() and run.proc.returncode == 0, run.text()[-3000:]
    plain = stack.keys(f"{prefix}/forecasts/model=lstm/")
    before = {k: stack.read(k) for k in plain}
    run = Run(stack, "name-score-underscore", ["score", "--model-name", "lstm_"], store)
    assert run.finish() and run.proc.returncode == 0, run.text()[-3000:]
    assert {k: stack.read(k) for k in stack.keys(f"{prefix}/forecasts/model=lstm/")} == before  # untouched
    mine = stack.keys(f"{prefix}/forecasts/model=lstm_/")
    assert mine and pl.read_parquet(io.BytesIO(stack.read(mine[0])))["model_version"][0] == \
        _pointer(stack, prefix, "lstm_")["version"] != _pointer(stack, prefix, "lstm")["version"]
    run = Run(stack, "name-bad", ["retrain", "--model-name", "../lstm", *POOR], store)  # the rest: test_params
    out = run.finish()
    assert run.proc.returncode != 0 and "model_name" in out, out[-2000:]
    assert all(k.startswith(f"{prefix}/") for k in stack.keys(prefix))


def test_hostile_series_ids_are_forecast_and_never_become_paths(stack, sample_raw):
    prefix = "series"
    hostile = ["../../etc/passwd", "a/b", "ünï cødé", "x" * 300, "s3://other-bucket/key", "'; DROP TABLE t; --"]
    ids = sample_raw["series_id"].unique().sort().to_list()
    frame = sample_raw.with_columns(pl.col("series_id").replace(dict(zip(ids, hostile))))
    s3 = boto3.client("s3", endpoint_url=stack.env["AWS_ENDPOINT_URL"])
    s3.put_object(Bucket=stack.bucket, Key=f"in/{prefix}.csv", Body=frame.write_csv().encode())
    data = f"s3://{stack.bucket}/in/{prefix}.csv"
    store = f"s3://{stack.bucket}/store/{prefix}"
    for args in (["retrain", "--data", data, *POOR], ["score", "--data", data]):
        run = Run(stack, f"series-{args[0]}", args, store)
        out = run.finish()
        assert run.proc.returncode == 0, out[-3000:]
    keys = stack.keys(f"{prefix}/forecasts/")
    assert len(keys) == 1
    got = set(pl.read_parquet(io.BytesIO(stack.read(keys[0])))["series_id"])
    skipped = set(re.findall(r"^  skipped (.+?): ", out, flags=re.M))  # the sample has one series with a long gap
    assert got | skipped == set(hostile[: len(ids)]) and len(got) >= 2
    every = [o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket=stack.bucket)
             for o in p.get("Contents", [])]
    assert not [k for k in every if "passwd" in k or "other-bucket" in k or "DROP" in k]
