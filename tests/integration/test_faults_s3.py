"""Fault injection against S3: the endpoint cut mid-run, SIGKILL, overlapping backfills.

Real processes on loopback only: ``prefect server start``, ``moto_server`` and the
``nightcast`` command as a user runs it, talking to moto through a ``TcpProxy`` the test
cuts (every connection reset, new ones refused) and restores. Each wait is bounded.
The store is read directly from moto, never through the proxy.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import boto3
import httpx
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from nightcast.tasks.ops.registry import RegistryError, load_bundle, load_champion, read_champion
from nightcast.tasks.ops.storage import Store, open_store
from tests.integration.conftest import BIN, Stack, TcpProxy, start_stack, wait_for

pytestmark = pytest.mark.slow

MODEL = "lstm"
FAST = ["--horizon", "6", "--lookback", "24", "--max-steps", "40", "--hidden-size", "16", "--seeds", "1", "--classical", "theta"]
RUN_TIMEOUT = 300  # seconds any one CLI run may take, faults included
POINTER = f"models/{MODEL}/champion.json"
VERSIONS = f"models/{MODEL}/versions/"
FIRST_DAY, LAST_DAY = "2026-09-03", "2026-09-14"  # as_of dates the 14-day sample can be scored on
FORECAST_PUT = rb"PUT [^ ]*/forecasts\.parquet"  # a partition's one write, as the request line shows it
MANIFEST_PUT = rb"PUT [^ ]*/manifest\.json"  # a bundle's last write


@dataclass
class Cli:
    """One ``nightcast`` process; stdout and stderr together in ``log``."""

    proc: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"nightcast ran past {timeout:.0f}s:\n{self.output()[-4000:]}") from None

    def wait_output(self, pattern: str, timeout: float = RUN_TIMEOUT) -> re.Match:
        """Block until the output matches ``pattern``; fail if the process ends first."""
        def seen() -> re.Match | None:
            found = re.search(pattern, self.output())
            if found is None and self.proc.poll() is not None:
                raise AssertionError(f"nightcast exited ({self.proc.returncode}) before printing {pattern!r}:\n"
                                     + self.output()[-4000:])
            return found
        return wait_for(seen, timeout, f"{pattern!r} in the output", interval=0.2)

    def kill(self) -> None:
        """SIGKILL the whole process group (Lightning catches SIGTERM)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


class Faults:
    """The stack, direct (proxy-free) access to its bucket, and ``nightcast`` runs to break."""

    def __init__(self, stack: Stack, moto_endpoint: str, tmp: Path) -> None:
        self.stack, self.moto_endpoint, self.tmp = stack, moto_endpoint, tmp
        self.moto_port = urlparse(moto_endpoint).port
        self.s3 = boto3.client("s3", endpoint_url=moto_endpoint)
        self.runs: list[Cli] = []
        self.references: dict[str, Cli] = {}  # version -> its undisturbed backfill (see start_reference)

    def url(self, name: str) -> str:
        return f"s3://{self.stack.bucket}/{name}"

    def store(self, name: str = "store") -> Store:
        return open_store(self.url(name))  # AWS_ENDPOINT_URL is moto itself in this process

    def cli(self, *args: str, store: str = "store", endpoint: str | None = None) -> Cli:
        """Start ``nightcast`` as a user would, on ``store`` in the test bucket, S3 through ``endpoint``."""
        log = self.tmp / f"run-{len(self.runs)}-{args[0]}.log"
        env = {**self.stack.env, "AWS_ENDPOINT_URL": endpoint or self.moto_endpoint,
               "NIGHTCAST_LOG_DIR": str(self.tmp / "logs")}
        cmd = [str(BIN / "nightcast"), *args, "--store", self.url(store), "--data", self.stack.data]
        proc = subprocess.Popen(cmd, env=env, cwd=self.tmp, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.runs.append(Cli(proc, log))
        return self.runs[-1]

    def copy_models(self, store: str) -> None:
        """A new store holding every bundle and the champion pointer of the main one (no forecasts)."""
        prefix = f"store/models/{MODEL}/"
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.stack.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                self.s3.copy_object(Bucket=self.stack.bucket, Key=f"{store}/{obj['Key'].removeprefix('store/')}",
                                    CopySource={"Bucket": self.stack.bucket, "Key": obj["Key"]})

    def versions(self, store: str = "store") -> set[str]:
        return {k[len(VERSIONS):].split("/", 1)[0] for k in self.store(store).list(VERSIONS)}

    def complete(self, store: str = "store") -> set[str]:
        return {v for v in self.versions(store) if self.store(store).exists(f"{VERSIONS}{v}/manifest.json")}

    def partitions(self, store: str) -> dict[str, pl.DataFrame]:
        """Every forecast partition as a frame, by as_of date; a partition that is not whole Parquet fails."""
        st, out = self.store(store), {}
        for key in st.list(f"forecasts/model={MODEL}/"):
            day = re.fullmatch(rf"forecasts/model={MODEL}/as_of=([\d-]+)/forecasts\.parquet", key)
            assert day, f"unexpected object in a forecast partition: {key}"
            out[day.group(1)] = pl.read_parquet(io.BytesIO(st.read_bytes(key)))
        return out

    def start_reference(self, version: str) -> None:
        """Start one undisturbed backfill of ``version`` over every date, in a store of its own, directly
        on moto; it runs while the scenarios wait out their outages."""
        if version not in self.references:
            self.copy_models(f"ref-{version}")
            self.references[version] = self.cli("backfill", "--start", FIRST_DAY, "--end", LAST_DAY,
                                                "--model", version, store=f"ref-{version}")

    def reference(self, version: str) -> dict[str, pl.DataFrame]:
        """What the undisturbed backfill of ``version`` wrote, by as_of date."""
        self.start_reference(version)
        run = self.references[version]
        assert run.wait() == 0, run.output()[-4000:]
        found = self.partitions(f"ref-{version}")
        assert len(found) == 12 and {f["model_version"].unique().to_list()[0] for f in found.values()} == {version}
        return found

    def two_versions(self) -> tuple[str, str]:
        """Two complete bundles, those with a reference backfill started first (one is trained here
        when no earlier test left a second)."""
        complete = self.complete()
        if len(complete) < 2:
            run = self.cli("retrain", *FAST, "--seed", "7")
            assert run.wait() == 0, run.output()[-4000:]
            complete = self.complete()
        first, second = sorted(complete, key=lambda v: (v not in self.references, v))[:2]
        return first, second

    def last_task_run(self, task: str) -> dict:
        """The newest run of a step, as the Prefect server recorded it (runs here never overlap a step)."""
        found = httpx.post(f"{self.stack.api_url}/task_runs/filter", timeout=10,
                           json={"task_runs": {"name": {"like_": f"{task}-"}},
                                 "sort": "EXPECTED_START_TIME_DESC", "limit": 1}).json()
        return found[0] if found else {}

    def stop(self) -> None:
        for run in self.runs:
            run.kill()


def sort(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort("series_id", "horizon")


def assert_whole(found: dict[str, pl.DataFrame], reference: dict[str, pl.DataFrame]) -> None:
    """Every partition present is exactly what an undisturbed run writes for that date."""
    for day, frame in found.items():
        assert_frame_equal(sort(frame), sort(reference[day]))


def assert_rerun_completes(faults: Faults, store: str, found: dict[str, pl.DataFrame],
                           reference: dict[str, pl.DataFrame]) -> None:
    """A re-run of the whole range skips the dates already whole and writes the rest, as undisturbed."""
    rerun = faults.cli("backfill", "--start", FIRST_DAY, "--end", LAST_DAY, "--allow-look-ahead", store=store)
    assert rerun.wait() == 0, rerun.output()[-4000:]
    assert f"{12 - len(found)} done, {len(found)} skipped, 0 failed" in rerun.output()
    found = faults.partitions(store)
    assert set(found) == set(reference)
    assert_whole(found, reference)


def assert_champion_intact(faults: Faults, pointer: bytes) -> None:
    st = faults.store()
    assert st.read_bytes(POINTER) == pointer
    champion = load_champion(st, MODEL)
    assert champion.version == read_champion(st, MODEL)["version"]


def assert_refused(faults: Faults, versions: set[str]) -> None:
    """Bundle folders a broken run left: none has a manifest, and none loads."""
    st = faults.store()
    for version in versions:
        assert not st.exists(f"{VERSIONS}{version}/manifest.json")
        with pytest.raises(RegistryError, match="no manifest.json"):
            load_bundle(st, MODEL, version)


def held_day(proxy: TcpProxy) -> str:
    """The as_of date of the partition whose PUT the proxy stalled."""
    line = (proxy.held or b"").decode()
    return re.search(r"as_of(?:=|%3D)([\d-]+)/", line).group(1)


class Outage:
    """In the background: stall the next request matching ``pattern``, then cut the proxy until
    ``until(seconds since the cut)`` holds, then restore it."""

    def __init__(self, proxy: TcpProxy, pattern: bytes, until, body_bytes: int = 64) -> None:  # noqa: ANN001
        import threading

        self.proxy, self.until, self.error = proxy, until, None
        self.held = proxy.hold_on(pattern, body_bytes=body_bytes)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            if not self.held.wait(RUN_TIMEOUT):
                raise AssertionError("no request to hold came")
            self.proxy.cut()
            cut_at = time.monotonic()
            wait_for(lambda: self.until(time.monotonic() - cut_at), RUN_TIMEOUT, "the end of the outage", 0.2)
        except Exception as exc:  # reported by check()
            self.error = exc
        finally:
            self.proxy.restore()

    def check(self, run: Cli) -> None:
        self.thread.join(30)
        assert self.error is None and self.held.is_set(), f"{self.error}\n{run.output()[-4000:]}"

    def held_day(self) -> str:
        return held_day(self.proxy)


@pytest.fixture(scope="module")
def faults(tmp_path_factory, moto_endpoint, sample_raw, aws_for_tests):
    """The stack with a champion trained by the CLI, and the reference backfill of it under way."""
    tmp = tmp_path_factory.mktemp("faults-s3")
    stack = start_stack(tmp, moto_endpoint, sample_raw)
    faults = Faults(stack, moto_endpoint, tmp)
    try:
        run = faults.cli("retrain", *FAST)  # the champion every scenario starts from
        assert run.wait() == 0, run.output()[-4000:]
        faults.start_reference(read_champion(faults.store(), MODEL)["version"])
        yield faults
    finally:
        faults.stop()
        stack.procs.stop()


def test_short_outage_in_register_is_ridden_out_with_one_version(faults):
    """A 25 s outage (longer than botocore's own retries, within the 30 s the retry policy promises)
    while the bundle's last file is in flight: register is retried, rewrites the same version, finishes."""
    st = faults.store()
    before, pointer = faults.versions(), st.read_bytes(POINTER)
    with TcpProxy(faults.moto_port) as proxy:
        held = proxy.hold_on(MANIFEST_PUT)
        run = faults.cli("retrain", *FAST, "--seed", "7", endpoint=proxy.url)
        wait_for(lambda: held.is_set() or run.proc.poll() is not None, RUN_TIMEOUT, "the manifest PUT")
        assert held.is_set(), run.output()[-4000:]
        proxy.cut()
        time.sleep(25)
        assert run.proc.poll() is None, run.output()[-4000:]
        new = faults.versions() - before
        assert len(new) == 1 and not faults.complete() & new  # every file but the manifest, one version
        proxy.restore()
        assert run.wait() == 0, run.output()[-4000:]
    out = run.output()
    assert faults.last_task_run("register")["run_count"] >= 2, out[-3000:]  # the step itself was retried
    assert faults.versions() - before == new  # the retried register wrote the same version: no orphan folder
    (version,) = new
    assert re.search(rf"^bundle\s+s3://\S+/versions/{version}$", out, re.M), out[-3000:]
    assert load_bundle(st, MODEL, version).version == version
    champion = load_champion(st, MODEL)
    if champion.version != version:  # not promoted: the pointer is untouched
        assert st.read_bytes(POINTER) == pointer, out[-3000:]
    faults.start_reference(version)  # for the overlapping backfills


def test_long_outage_in_register_fails_cleanly_and_a_rerun_completes(faults):
    """An outage that outlasts the retry budget while the bundle's last file is in flight: the run
    fails with one ``error:`` line, the champion is untouched, the half-written bundle never loads."""
    st = faults.store()
    before, pointer = faults.versions(), st.read_bytes(POINTER)
    with TcpProxy(faults.moto_port) as proxy:
        held = proxy.hold_on(MANIFEST_PUT)
        run = faults.cli("retrain", *FAST, endpoint=proxy.url)
        wait_for(lambda: held.is_set() or run.proc.poll() is not None, RUN_TIMEOUT, "the manifest PUT")
        assert held.is_set(), run.output()[-4000:]
        proxy.cut()
        cut_at = time.monotonic()
        code = run.wait()
        failed_after = time.monotonic() - cut_at
        out = run.output()
        assert code == 1, out[-4000:]
        # the retry policy waited its budget out (3+6+12+24 s, jitter down to 0.75x) before giving up
        assert failed_after >= 33, (failed_after, out[-4000:])
        assert re.search(r"^error: step register failed: StorageError: S3 \w+ s3://\S+ failed: "
                         r"EndpointConnectionError", out, re.M), out[-4000:]
        assert_champion_intact(faults, pointer)
        orphans = faults.versions() - before
        assert len(orphans) == 1  # every file but the manifest
        assert_refused(faults, orphans)
        proxy.restore()
        rerun = faults.cli("retrain", *FAST, endpoint=proxy.url)
        assert rerun.wait() == 0, rerun.output()[-4000:]
    (version,) = faults.versions() - before - orphans
    assert load_bundle(st, MODEL, version).version == version
    assert_refused(faults, orphans)  # still there (swept after 6 h), still never a candidate
    load_champion(st, MODEL)


def test_outage_during_score_and_backfill_leaves_only_whole_partitions(faults):
    """Score and backfill each lose S3 while a partition's PUT is half sent. Score rides out 25 s.
    Backfill loses it until a batch of dates has failed (past the retry budget), then writes the later
    batches and exits 1 naming the failed dates. Every partition there is whole; a re-run fills the gaps."""
    reference = faults.reference(read_champion(faults.store(), MODEL)["version"])
    faults.copy_models("cut-score")
    faults.copy_models("cut-backfill")
    with TcpProxy(faults.moto_port) as to_score, TcpProxy(faults.moto_port) as to_backfill:
        score_outage = Outage(to_score, FORECAST_PUT, lambda elapsed: elapsed >= 25)
        backfill_outage = Outage(to_backfill, FORECAST_PUT,
                                 lambda _: re.search(r"\[\d+/12\] [\d-]+ failed: ", backfill.output()))
        score = faults.cli("score", "--as-of", LAST_DAY, store="cut-score", endpoint=to_score.url)
        backfill = faults.cli("backfill", "--start", FIRST_DAY, "--end", LAST_DAY, "--max-parallel", "4",
                              "--allow-look-ahead",
                              store="cut-backfill", endpoint=to_backfill.url)
        score_code, backfill_code = score.wait(), backfill.wait()
        score_outage.check(score)
        backfill_outage.check(backfill)
    out = score.output()
    assert score_code == 0, out[-4000:]
    assert faults.last_task_run("forecast-and-write")["run_count"] >= 2, out[-4000:]
    assert_whole(faults.partitions("cut-score"), reference)
    assert set(faults.partitions("cut-score")) == {LAST_DAY}

    out = backfill.output()
    assert backfill_code == 1, out[-4000:]
    failed = set(re.findall(r"^([\d-]+): \w+Error", out, re.M))
    assert re.search(rf"^error: BackfillError: {len(failed)} of 12 dates failed", out, re.M), out[-4000:]
    found = faults.partitions("cut-backfill")
    assert_whole(found, reference)
    # The stalled PUT never lands half-written (every partition found is whole, above). Its date either
    # failed or, retried after the restore, was written whole: which one depends on which task ran out of
    # retries first, not on nightcast. The outage itself failed at least one date (reported; it may still be
    # whole in the store, below: a CI run once found the one failed date's PUT had landed).
    assert backfill_outage.held_day() in failed | set(found), out[-4000:]
    assert failed, out[-4000:]
    # A date reported failed may still be whole in the store: its PUT landed and the answer was lost, or
    # the cleanup listing after it failed. The reverse never happens: every missing date was reported.
    assert set(reference) - set(found) <= failed and set(reference) - failed <= set(found)
    assert len(found) >= 8  # the later batches ran after the restore

    assert_rerun_completes(faults, "cut-backfill", found, reference)


def test_sigkill_mid_train_leaves_the_store_as_it_was(faults):
    """kill -9 while the train step runs (as the Prefect server sees it): the champion is untouched,
    nothing loadable was added, and a re-run finishes."""
    st = faults.store()
    before, pointer = faults.versions(), st.read_bytes(POINTER)
    last = faults.last_task_run("train").get("id")
    run = faults.cli("retrain", *FAST[:4], "--max-steps", "2000", "--hidden-size", "16", "--seeds", "1",
                     "--classical", "theta")
    wait_for(lambda: (t := faults.last_task_run("train")).get("id") != last and t["state_type"] == "RUNNING"
             or run.proc.poll() is not None, RUN_TIMEOUT, "the train step to start", interval=0.2)
    run.kill()
    assert run.proc.returncode == -signal.SIGKILL, run.output()[-4000:]
    assert "test-span metrics" not in run.output()  # killed in training, before the evaluation
    assert_champion_intact(faults, pointer)
    left = faults.versions() - before
    assert_refused(faults, left)
    rerun = faults.cli("retrain", *FAST)
    assert rerun.wait() == 0, rerun.output()[-4000:]
    (version,) = faults.versions() - before - left
    assert load_bundle(st, MODEL, version).version == version
    load_champion(st, MODEL)


def test_sigkill_mid_backfill_leaves_only_whole_partitions(faults):
    """Killed while a partition's PUT is half sent: that date is absent, the written ones are whole."""
    reference = faults.reference(read_champion(faults.store(), MODEL)["version"])
    faults.copy_models("killed")
    pointer = faults.store("killed").read_bytes(POINTER)
    with TcpProxy(faults.moto_port) as proxy:
        held = proxy.hold_on(FORECAST_PUT, body_bytes=64, skip=2)  # the third date's write, half sent
        run = faults.cli("backfill", "--start", FIRST_DAY, "--end", LAST_DAY, "--max-parallel", "1",
                         "--allow-look-ahead",
                         store="killed", endpoint=proxy.url)
        wait_for(lambda: held.is_set() or run.proc.poll() is not None, RUN_TIMEOUT, "the third partition's PUT")
        assert held.is_set(), run.output()[-4000:]
        run.kill()
        proxy.cut()  # the half-sent PUT ends with a reset, as when the host dies
    assert run.proc.returncode == -signal.SIGKILL
    found = faults.partitions("killed")
    assert_whole(found, reference)
    assert held_day(proxy) == "2026-09-05" and set(found) == {FIRST_DAY, "2026-09-04"}
    assert faults.store("killed").read_bytes(POINTER) == pointer
    assert_rerun_completes(faults, "killed", found, reference)


def test_overlapping_backfills_of_two_versions_never_mix(faults):
    """Two processes re-score overlapping ranges with two bundle versions at once: every partition is
    one version's, exactly as a backfill of that version alone writes it."""
    first, second = faults.two_versions()
    faults.copy_models("overlap")
    a = faults.cli("backfill", "--start", FIRST_DAY, "--end", "2026-09-10", "--model", first, "--overwrite",
                   store="overlap")
    b = faults.cli("backfill", "--start", "2026-09-07", "--end", LAST_DAY, "--model", second, "--overwrite",
                   store="overlap")
    assert a.wait() == 0, a.output()[-4000:]
    assert b.wait() == 0, b.output()[-4000:]
    refs = {first: faults.reference(first), second: faults.reference(second)}
    found = faults.partitions("overlap")
    assert set(found) == set(refs[first])
    for day, frame in found.items():
        (version,) = frame["model_version"].unique().to_list()
        if day < "2026-09-07":
            assert version == first
        elif day > "2026-09-10":
            assert version == second
        assert_frame_equal(sort(frame), sort(refs[version][day]))
