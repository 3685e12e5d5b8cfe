"""Retry classification: an allow-list of transient errors; everything else fails at once."""

from __future__ import annotations

import errno
import pickle
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import pytest
from botocore.exceptions import (ClientError, ConnectionClosedError, ConnectTimeoutError,
                                 EndpointConnectionError, ReadTimeoutError)
from botocore.stub import Stubber
from prefect import flow
from prefect.task_engine import TaskRunTimeoutError
from prefect.utilities.math import lower_clamp_multiple

from tests.conftest import _free_port
from nightcast.flows import runtime
from nightcast.flows.runtime import is_transient_error, step
from nightcast.tasks.data.ingest import IngestError
from nightcast.tasks.ops.registry import RegistryError
from nightcast.tasks.ops.storage import S3Settings, S3Store, StorageError


def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


def _wrapped(outer: BaseException, inner: BaseException, *, explicit: bool = True) -> BaseException:
    """``outer`` raised while handling ``inner``: ``raise outer from inner`` or implicitly."""
    try:
        try:
            raise inner
        except BaseException:
            if explicit:
                raise outer from inner
            raise outer
    except BaseException as exc:
        return exc


def _from_none(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException:
            raise outer from None
    except BaseException as exc:
        return exc


TRANSIENT = {
    "ConnectionError": ConnectionError("refused"),
    "ConnectionResetError": ConnectionResetError(errno.ECONNRESET, "reset"),
    "BrokenPipeError": BrokenPipeError(errno.EPIPE, "pipe"),
    "TimeoutError": TimeoutError("slow"),
    "socket.timeout": socket.timeout("timed out"),
    "OSError ECONNREFUSED": OSError(errno.ECONNREFUSED, "refused"),
    "OSError ETIMEDOUT": OSError(errno.ETIMEDOUT, "timed out"),
    "OSError ENETUNREACH": OSError(errno.ENETUNREACH, "unreachable"),
    "DNS try again": socket.gaierror(socket.EAI_AGAIN, "try again"),
    "EndpointConnectionError": EndpointConnectionError(endpoint_url="http://s3"),
    "ConnectTimeoutError": ConnectTimeoutError(endpoint_url="http://s3"),
    "ReadTimeoutError": ReadTimeoutError(endpoint_url="http://s3"),
    "ConnectionClosedError": ConnectionClosedError(endpoint_url="http://s3"),
    "SlowDown 503": _client_error("SlowDown", 503),
    "Throttling 400": _client_error("Throttling", 400),
    "ThrottlingException 400": _client_error("ThrottlingException", 400),
    "RequestLimitExceeded": _client_error("RequestLimitExceeded", 400),
    "RequestTimeout 400": _client_error("RequestTimeout", 400),
    "InternalError 500": _client_error("InternalError", 500),
    "HEAD 503": _client_error("503", 503),
    "any 502": _client_error("BadGateway", 502),
    "429": _client_error("TooManyRequests", 429),
    "httpx ConnectError": httpx.ConnectError("refused"),
    "httpx ReadTimeout": httpx.ReadTimeout("slow"),
    "StorageError from ConnectionError": _wrapped(StorageError("s3 get failed"), ConnectionError("x")),
    "StorageError from EndpointConnectionError": _wrapped(
        StorageError("s3 get failed"), EndpointConnectionError(endpoint_url="http://s3")),
    "IngestError during a reset (implicit context)": _wrapped(
        IngestError("read failed"), ConnectionResetError(errno.ECONNRESET, "reset"), explicit=False),
    "two levels deep": _wrapped(RuntimeError("outer"), _wrapped(StorageError("mid"), TimeoutError())),
}

PERMANENT = {
    "IngestError": IngestError("input not found: data/x.csv"),
    "StorageError bad URL": StorageError("not an s3:// URL: 's3:/x'"),
    "RegistryError": RegistryError("bundle incomplete"),
    "UnpicklingError": pickle.UnpicklingError("Weights only load failed"),
    "ValueError": ValueError("bad"),
    "KeyError": KeyError("k"),
    "TypeError": TypeError("t"),
    "RuntimeError": RuntimeError("r"),
    "FileNotFoundError": FileNotFoundError(errno.ENOENT, "missing"),
    "PermissionError": PermissionError(errno.EACCES, "denied"),
    "OSError ENOSPC": OSError(errno.ENOSPC, "disk full"),
    "DNS no such name": socket.gaierror(socket.EAI_NONAME, "unknown host"),
    "AccessDenied 403": _client_error("AccessDenied", 403),
    "NoSuchKey 404": _client_error("NoSuchKey", 404),
    "NoSuchBucket 404": _client_error("NoSuchBucket", 404),
    "PreconditionFailed 412": _client_error("PreconditionFailed", 412),
    "StorageError from AccessDenied": _wrapped(StorageError("s3 get failed"), _client_error("AccessDenied", 403)),
    "a step's own time limit": TaskRunTimeoutError("Scope timed out after 3600 second(s)."),
    "ValueError from None, inside a ConnectionError handler": _from_none(ValueError("bad"), ConnectionError()),
    "KeyboardInterrupt": KeyboardInterrupt(),
}


@pytest.mark.parametrize("exc", TRANSIENT.values(), ids=TRANSIENT.keys())
def test_transient_errors_are_retried(exc):
    assert is_transient_error(exc)


@pytest.mark.parametrize("exc", PERMANENT.values(), ids=PERMANENT.keys())
def test_everything_else_fails_at_once(exc):
    assert not is_transient_error(exc)


def test_a_cycle_in_the_chain_ends():
    a, b = StorageError("a"), ValueError("b")
    a.__context__, b.__context__ = b, a
    assert not is_transient_error(a)


def test_retry_waits_cover_a_30_second_outage():
    """The shortest the jittered waits can add up to is what the docstrings promise."""
    floor = sum(d * lower_clamp_multiple(1 + runtime.RETRY_JITTER) for d in runtime.RETRY_DELAYS_S)
    assert floor >= 33


# --- the Prefect task really retries what the policy says ----------------------------------

@pytest.fixture()
def no_wait(monkeypatch):
    monkeypatch.setattr(runtime, "RETRY_DELAYS_S", [0.0] * len(runtime.RETRY_DELAYS_S))
    return len(runtime.RETRY_DELAYS_S) + 1


def _failing(exc: BaseException, succeed_after: int | None = None):
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if succeed_after is not None and len(calls) > succeed_after:
            return "ok"
        raise exc

    return fn, calls


def _in_flow(task):
    """Run a task the way the pipeline does: inside a flow run."""
    @flow(name="retry-probe")
    def probe():
        return task()

    return probe()


@pytest.mark.parametrize("exc", [IngestError("input not found: x.csv"),
                                 pickle.UnpicklingError("Weights only load failed"),
                                 StorageError("invalid object key '../x'")],
                         ids=["IngestError", "UnpicklingError", "StorageError"])
def test_io_step_runs_a_permanent_failure_once(prefect_harness, no_wait, exc):
    fn, calls = _failing(exc)
    with pytest.raises(type(exc)):
        _in_flow(step(fn, "x", io=True))
    assert len(calls) == 1


def test_io_step_retries_a_connection_error_to_the_budget(prefect_harness, no_wait):
    fn, calls = _failing(ConnectionError("refused"))
    with pytest.raises(ConnectionError):
        _in_flow(step(fn, "x", io=True))
    assert len(calls) == no_wait == 5


def test_io_step_recovers_after_transient_failures(prefect_harness, no_wait):
    fn, calls = _failing(_wrapped(StorageError("s3 put failed"), TimeoutError()), succeed_after=2)
    assert _in_flow(step(fn, "x", io=True)) == "ok"
    assert len(calls) == 3


def test_non_io_step_never_retries(prefect_harness, no_wait):
    fn, calls = _failing(ConnectionError("refused"))
    with pytest.raises(ConnectionError):
        _in_flow(step(fn, "x"))
    assert len(calls) == 1


# --- against a real S3 endpoint ----------------------------------------------------------

@pytest.fixture()
def own_moto(monkeypatch):
    """A moto_server this test may stop: (endpoint, process)."""
    port = _free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for var, value in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(var, value)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    try:
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_s3_outage_is_transient(own_moto):
    import boto3

    url, proc = own_moto
    boto3.client("s3", endpoint_url=url).create_bucket(Bucket="outage")
    store = S3Store("s3://outage/p", settings=S3Settings(max_attempts=2))
    store.write_bytes("k", b"x")
    proc.terminate()
    proc.wait(timeout=10)
    for call in (lambda: store.read_bytes("k"), lambda: store.write_bytes("k", b"y"),
                 lambda: store.read_versioned("k"), lambda: store.exists("k")):
        with pytest.raises(StorageError, match="s3://outage/p/k failed: EndpointConnectionError") as info:
            call()
        assert is_transient_error(info.value)


def test_bad_bucket_and_403_are_permanent(s3_env):
    with pytest.raises(StorageError, match="NoSuchBucket") as info:
        S3Store(f"s3://{s3_env}-nope").read_bytes("k")
    assert not is_transient_error(info.value)

    store = S3Store(f"s3://{s3_env}", settings=S3Settings(missing_on_403=False))
    with Stubber(store._s3) as stub:
        stub.add_client_error("get_object", service_error_code="AccessDenied", http_status_code=403)
        with pytest.raises(StorageError, match="AccessDenied") as info:
            store.read_bytes("k")
    assert not is_transient_error(info.value)


def test_s3_throttling_is_transient(s3_env):
    store = S3Store(f"s3://{s3_env}", settings=S3Settings(max_attempts=1))
    with Stubber(store._s3) as stub:
        stub.add_client_error("put_object", service_error_code="SlowDown", http_status_code=503)
        with pytest.raises(StorageError, match="SlowDown") as info:
            store.write_bytes("k", b"x")
    assert is_transient_error(info.value)
