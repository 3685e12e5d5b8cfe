"""Real components as processes: ``prefect server start``, ``nightcast serve``, workers, PostgreSQL.

Every test here is ``slow``: `make test-slow` (and CI) runs them.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import httpx
import pytest

from nightcast.flows.embedded import stop_child
from tests.conftest import _free_port, _wait_http

REPO = Path(__file__).resolve().parents[2]
FINISHED = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
BIN = Path(sys.executable).parent

# Small, fast training for runs triggered through the API (same as tests.conftest.fast_params).
FAST_RETRAIN = {"params": {"window": {"lookback": 24, "horizon": 6},
                           "model": {"hidden_size": 32, "num_layers": 1, "dropout": 0.0},
                           "train": {"max_epochs": 15, "patience": 4, "batch_size": 64, "early_stopping": True},
                           "serve": {"seeds": 1, "classical": "theta"}}}


@dataclass
class Processes:
    """Child processes started by a fixture, stopped in reverse order (workers before the server)."""

    procs: list[tuple[str, subprocess.Popen, Path]] = field(default_factory=list)

    def start(self, name: str, cmd: list[str], env: dict[str, str], log_dir: Path, cwd: Path = REPO) -> subprocess.Popen:
        log = log_dir / f"{name}.log"
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append((name, proc, log))
        return proc

    def log(self, name: str) -> str:
        return next(p[2] for p in self.procs if p[0] == name).read_text(errors="replace")

    def stop(self) -> None:
        for _, proc, _ in reversed(self.procs):
            stop_child(proc, group=True)
        self.procs.clear()


@dataclass
class Stack:
    """A Prefect server, the S3 endpoint, and the environment every child process gets."""

    api_url: str
    ui_url: str
    env: dict[str, str]
    bucket: str
    store: str
    data: str
    procs: Processes
    logs: Path

    def prefect(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run the ``prefect`` CLI against this server, as a user would."""
        return subprocess.run([str(BIN / "prefect"), *args], env=self.env, cwd=REPO, capture_output=True,
                              text=True, timeout=timeout)

    def run_deployment(self, name: str, *args: str, timeout: float) -> dict:
        """``prefect deployment run NAME ARGS`` as a user would, then the run's final record from the API.

        The state is polled over REST rather than followed with ``--watch``: the CLI's watcher follows the
        server's event stream, and on a loaded CI machine it once missed a run's terminal event (the run
        had completed a minute earlier; the watch timed out after 300 s)."""
        created = subprocess.run([str(BIN / "prefect"), "deployment", "run", name, *args],
                                 env={**self.env, "NO_COLOR": "1"}, cwd=REPO, capture_output=True, text=True,
                                 timeout=600)
        found = re.findall(r"UUID: ([0-9a-f-]{36})", created.stdout)
        assert created.returncode == 0 and len(found) == 1, created.stdout[-3000:] + created.stderr[-3000:]
        run_id = found[0]

        def final() -> dict | None:
            try:
                run = httpx.get(f"{self.api_url}/flow_runs/{run_id}", timeout=10).json()
            except (httpx.HTTPError, ValueError):  # not answering, or not JSON (a 5xx page): ask again
                return None
            return run if run.get("state_type") in FINISHED else None

        run = wait_for(final, timeout, f"flow run {run_id} of {name} to finish", interval=2)
        run["state"]["message"] = run["state"].get("message") or ""  # the tests add it to their messages
        return run

    def keys(self, prefix: str) -> list[str]:
        s3 = boto3.client("s3", endpoint_url=self.env["AWS_ENDPOINT_URL"])
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"store/{prefix}")
        return sorted(o["Key"].removeprefix("store/") for p in pages for o in p.get("Contents", []))

    def read(self, key: str) -> bytes:
        s3 = boto3.client("s3", endpoint_url=self.env["AWS_ENDPOINT_URL"])
        return s3.get_object(Bucket=self.bucket, Key=f"store/{key}")["Body"].read()


def start_stack(tmp: Path, moto_endpoint: str, sample_raw, db_url: str | None = None) -> Stack:
    """Start ``prefect server start`` (SQLite in a temp PREFECT_HOME unless ``db_url``) and seed S3."""
    import uuid

    home = tmp / "prefect-home"
    home.mkdir()
    port = _free_port()
    aws = {"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    bucket = f"nc-{uuid.uuid4().hex[:12]}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "NIGHTCAST_", "AWS_"))},
        **aws,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "NIGHTCAST_STORE": f"s3://{bucket}/store",
        "NIGHTCAST_DATA": f"s3://{bucket}/in/obs.csv",
        "NIGHTCAST_PROGRESS": "false",
    }
    if db_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = db_url
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="in/obs.csv", Body=sample_raw.write_csv().encode())
    procs = Processes()
    procs.start("server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                env, tmp)
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/health", timeout=120)
    except RuntimeError:
        procs.stop()
        raise RuntimeError("prefect server did not start:\n" + (tmp / "server.log").read_text()[-3000:])
    return Stack(env["PREFECT_API_URL"], f"http://127.0.0.1:{port}", env, bucket, f"s3://{bucket}/store",
                 env["NIGHTCAST_DATA"], procs, tmp)


@pytest.fixture(scope="module")
def aws_for_tests(moto_endpoint: str) -> Iterator[None]:
    """boto3 in the test process talks to the same moto endpoint."""
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION")}
    os.environ.update({"AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def wait_for(predicate, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def postgres_binaries() -> Path | None:
    """Debian's PostgreSQL server binaries (``initdb``, ``pg_ctl``), when installed."""
    found = shutil.which("pg_ctl")
    if found and Path(found).with_name("initdb").exists():
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(candidates[-1]).parent if candidates else None


@pytest.fixture()
def postgres_url() -> Iterator[str]:
    """A private PostgreSQL cluster (initdb + pg_ctl on a free port), removed afterwards."""
    bindir = postgres_binaries()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not installed (Debian: apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="nightcast-pg-"))
    data, port = root / "data", _free_port()
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run the cluster as the postgres user
        import pwd

        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "nightcast", "-A", "trust"],
                   check=True, capture_output=True)
    subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "pg.log"), "-w", "start",
                    "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1"], check=True, capture_output=True)
    try:
        yield f"postgresql+asyncpg://nightcast@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


class TcpProxy:
    """A loopback TCP proxy in front of one port, to cut a service off mid-run (fault injection).

    ``cut()`` resets every open connection and stops listening, so a new connection is refused at
    once (as when a host or its service goes away); ``restore()`` listens on the same port again.
    ``hold_on(pattern)`` stalls the next request whose first bytes match a regular expression (say,
    ``rb"PUT [^ ]*/manifest.json"``) until the next cut, so it is in flight when the cut comes:
    unforwarded, or, with ``body_bytes``, after its head and that many bytes of its body.
    """

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        import threading

        self.host, self.target = host, target_port
        self.port = _free_port()
        self.url = f"http://{host}:{self.port}"
        self._lock = threading.Lock()
        self._conns: set = set()
        self._listener = None
        self._hold: list | None = None  # [compiled regex, body_bytes, threading.Event, matches to let through]
        self.accepted = 0
        self.held: bytes | None = None  # the request line of the last request stalled by ``hold_on``

    def __enter__(self) -> "TcpProxy":
        self.restore()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()

    def restore(self) -> None:
        """Listen (again) on the proxy's port."""
        import socket
        import threading

        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(64)
            listener.settimeout(0.2)
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Reset every open connection and stop listening: new connections are refused from now on."""
        import socket
        import struct

        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, set()
            self._hold = None
        if listener is not None:
            listener.close()
        for sock in conns:
            try:  # linger 0: close() sends RST, as a dropped link or a dead peer does
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def hold_on(self, pattern: bytes, body_bytes: int | None = None, skip: int = 0):  # noqa: ANN201
        """Stall the next request matching ``pattern`` after letting ``skip`` such requests through;
        the returned ``threading.Event`` is set once one is stalled."""
        import re
        import threading

        event = threading.Event()
        with self._lock:
            self._hold = [re.compile(pattern), body_bytes, event, skip]
        return event

    def _accept(self, listener) -> None:  # noqa: ANN001
        import socket
        import threading

        while True:
            with self._lock:
                if self._listener is not listener:
                    return
            try:
                client, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection((self.host, self.target), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # cut while connecting
                    client.close()
                    upstream.close()
                    return
                self._conns |= {client, upstream}
                self.accepted += 1
            for src, dst, watch in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, watch), daemon=True).start()

    def _held(self, data: bytes):  # noqa: ANN202
        """``(bytes to forward before stalling, event)`` when ``data`` starts the request to hold."""
        with self._lock:
            hold = self._hold
            if hold is None or not hold[0].match(data):
                return None
            if hold[3] > 0:
                hold[3] -= 1
                return None
            self._hold = None
            self.held = data.split(b"\r\n", 1)[0]
        _, body_bytes, event, _ = hold
        if body_bytes is None:
            return 0, event
        head = data.find(b"\r\n\r\n")
        return (len(data) if head < 0 else head + 4 + body_bytes), event

    def _pump(self, src, dst, watch: bool) -> None:  # noqa: ANN001
        import socket

        budget, event = None, None
        try:
            while data := src.recv(65536):
                if watch and budget is None and (held := self._held(data)):
                    budget, event = held
                if budget is not None:
                    dst.sendall(data[:budget])
                    budget -= min(budget, len(data))
                    if budget == 0:
                        event.set()
                        return  # stalled: nothing more is forwarded; the cut resets both ends
                    continue
                dst.sendall(data)
        except OSError:
            pass
        with self._lock:
            ours = src in self._conns
            self._conns -= {src, dst}
        if ours:  # one side ended on its own: end the other too
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
