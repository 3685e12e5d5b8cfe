"""A second, independent S3 server: s3rver (npm), which ignores conditional writes.

nightcast must not run a compare-and-swap there as if it were safe: a retrain fails before it trains,
naming the endpoint, and leaves the store empty; with ``NIGHTCAST_S3_SINGLE_WRITER=true`` (the operator
accepts last-writer-wins) retrain and score work, with the default checksum settings.
`make test-slow` installs s3rver into .cache/s3rver and passes its path as NIGHTCAST_TEST_S3RVER.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import _free_port, _wait_http, fast_params

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture()
def s3rver(tmp_path, monkeypatch):
    exe = os.environ.get("NIGHTCAST_TEST_S3RVER") or shutil.which("s3rver")
    if not exe or not os.path.exists(exe):
        pytest.fail("s3rver is not installed: `make test-slow` installs it with npm (.cache/s3rver)")
    port = _free_port()
    log = open(tmp_path / "s3rver.log", "wb")
    proc = subprocess.Popen([exe, "-d", str(tmp_path / "data"), "-a", "127.0.0.1", "-p", str(port),
                             "--configure-bucket", "nightcast", "--silent"], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url, 30)
        for k, v in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "S3RVER", "AWS_SECRET_ACCESS_KEY": "S3RVER",
                     "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setattr("nightcast.tasks.ops.storage._CONDITIONAL_WRITES", {})
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def test_an_endpoint_that_ignores_conditional_writes_is_refused_unless_single_writer(s3rver, tmp_path, sample_raw,
                                                                                    monkeypatch):
    from nightcast.flows.retrain import retrain_flow
    from nightcast.flows.score import score_flow
    from nightcast.schemas.params import ScoreParams
    from nightcast.tasks.ops.registry import read_champion
    from nightcast.tasks.serving.score import read_forecasts
    from nightcast.tasks.ops.storage import ConditionalWritesUnsupported, open_store

    csv = tmp_path / "obs.csv"
    sample_raw.write_csv(csv)
    store = "s3://nightcast/store"
    st = open_store(store)
    assert st.conditional_writes() is False  # s3rver writes a PUT with If-None-Match: * over an existing key
    with pytest.raises(ConditionalWritesUnsupported, match=f"endpoint {s3rver} .*ignores conditional writes"):
        retrain_flow(fast_params(str(csv)), store=store)
    assert st.list("models/") == []  # refused before training: no bundle, no pointer

    monkeypatch.setenv("NIGHTCAST_S3_SINGLE_WRITER", "true")
    out = retrain_flow(fast_params(str(csv)), store=store)
    assert out["promoted"] and read_champion(open_store(store), "lstm")["version"] == out["version"]
    scored = score_flow(ScoreParams(data=str(csv)), store=store)
    forecasts = read_forecasts(open_store(store), "lstm", scored["as_of"])
    assert forecasts.height == scored["rows"] > 0 and forecasts["series_id"].n_unique() == scored["series"] >= 2
    assert forecasts["forecast"].is_finite().all()
