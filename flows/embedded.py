"""A temporary Prefect API server for a CLI process that has no ``PREFECT_API_URL``.

Left alone, Prefect starts its own temporary server lazily, from whichever thread
first asks for a client, and waits 20 s for it: on a busy 2-core machine that
times out, and a killed CLI (SIGKILL, or SIGTERM, which skips ``atexit``) leaves
the server running for ever. Here the CLI starts the same application first, from
its main thread, through Prefect's public API only (``create_app(ephemeral=True)``
served by uvicorn, its URL set in the environment and the settings every client
reads), and watches it:

- the start-up wait is ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``
  when set (environment or Prefect profile), else 120 s, and a start that
  times out is stopped and tried once more;
- on Linux the server receives SIGTERM when this process dies
  (``PR_SET_PDEATHSIG``), so no orphan outlives a kill;
- its stdout and stderr go to the CLI's log file, not the terminal;
- the flow runs this process executes send no heartbeats (unless the user set their frequency):
  heartbeats exist so that a server which outlives a dead run can mark it crashed, and this server
  dies with the process; each flow run's end also waited up to a second for the heartbeat thread's
  sleep (measured: an empty flow took 1.07 s);
- starts that share a Prefect home take turns (a file lock held until the server answers): each
  start migrates the home's database, and two migrations of a fresh SQLite file at once fail
  (``duplicate column name``), which two CLI commands started together on a new machine would hit.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

DEFAULT_STARTUP_TIMEOUT_S = 120
"""Start-up wait when the user has not set Prefect's own (default 20 s, too short on a busy box)."""

START_ATTEMPTS = 2
TIMEOUT_MESSAGE = "Timed out while attempting to connect to ephemeral Prefect API server"
_PR_SET_PDEATHSIG = 1

log = logging.getLogger("nightcast.embedded")


def startup_timeout(settings: Any = None) -> int:
    """Seconds to wait for the temporary server: the user's Prefect setting if set, else 120."""
    from prefect.settings import get_current_settings

    ephemeral = (settings or get_current_settings()).server.ephemeral
    if "startup_timeout_seconds" in ephemeral.model_fields_set:
        return ephemeral.startup_timeout_seconds
    return DEFAULT_STARTUP_TIMEOUT_S


def needs_embedded_server() -> bool:
    """True when Prefect would start a temporary server: no API URL and ephemeral mode on."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    return not settings.api.url and settings.server.ephemeral.enabled


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive SIGTERM when this process dies (Linux only).

    The kernel sends it when the *thread* that forked ends, not the process: a child forked from a worker
    thread is killed as soon as that thread returns. Call Popen from the main thread (``ChildServer.start``
    refuses any other).
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # this process's own libc, looked up before the fork
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def stop_child(proc: subprocess.Popen[Any], group: bool = False, timeout: float = 20) -> None:
    """SIGTERM a child (its whole process group with ``group``: started with ``start_new_session``), wait up
    to ``timeout`` seconds, then SIGKILL it; nothing when it has already ended."""
    if proc.poll() is not None:
        return
    send = (lambda sig: os.killpg(proc.pid, sig)) if group else proc.send_signal
    send(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait()


class EmbeddedServerError(RuntimeError):
    """The temporary Prefect server did not come up."""


def ephemeral_app() -> Any:
    """The uvicorn factory of the temporary server: Prefect's API app in its ephemeral mode (the services
    an ephemeral server runs, no UI)."""
    from prefect.server.api.server import create_app

    return create_app(ephemeral=True, final=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (another process may take it before it is used: for
    servers nightcast starts itself, ``listening_socket``)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening_socket() -> socket.socket:
    """A TCP socket bound to a free port on 127.0.0.1 and listening: the port is this socket's from the
    start, so no other process can take it before the server serves it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    return sock


def serve_socket(fd: int) -> None:
    """The temporary server's process: uvicorn serving ``ephemeral_app`` on the listening socket ``fd`` that
    the parent bound and passed down (uvicorn's own ``--fd`` takes Unix sockets only)."""
    import uvicorn

    config = uvicorn.Config(ephemeral_app, factory=True, log_level="error", lifespan="on")
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=fd)])


@contextlib.contextmanager
def start_lock(home: Path) -> Iterator[None]:
    """Hold ``<PREFECT_HOME>/nightcast-server-start.lock`` exclusively: one server start (and database
    migration) at a time per Prefect home. The kernel drops the lock when its holder exits, killed or not."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "nightcast-server-start.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class ChildServer:
    """The temporary server as a child process that dies with this one."""

    def __init__(self, output: Path | None = None) -> None:
        self.output = output
        self.port = 0
        self.process: subprocess.Popen[Any] | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: int, meanwhile: Callable[[], None] | None = None) -> None:
        """Launch the server and wait until ``/api/health`` answers; RuntimeError (``TIMEOUT_MESSAGE``) when it
        does not within ``timeout`` seconds, or with the log's tail when the process ends first. Waits first
        for any other start in the same Prefect home (``start_lock``); that wait is not part of ``timeout``.
        ``meanwhile`` runs once the child is launched, before the wait (its time is not part of ``timeout``
        either); if it raises, the child is stopped."""
        import threading

        from prefect.settings import get_current_settings

        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("the temporary Prefect server must be started from the main thread: its parent-death "
                               "signal follows the thread that starts it, which would stop it when that thread ends")
        settings = get_current_settings()
        env = {**os.environ, **settings.to_environment_variables(exclude_unset=True), "PREFECT_UI_ENABLED": "0"}
        env.pop("PREFECT_API_URL", None)
        with start_lock(Path(env.get("PREFECT_HOME") or settings.home).expanduser()):
            self._launch(env, timeout, meanwhile)

    def _launch(self, env: dict[str, str], timeout: int, meanwhile: Callable[[], None] | None) -> None:
        import httpx

        # The child serves a socket this process bound and passes down (``serve_socket``), not a port number
        # it would bind later: a port picked free and bound afterwards can be taken in between by another
        # process (another CLI, another test worker), and this start would then wait on a server that is not
        # its own, on another Prefect home.
        listener = listening_socket()
        self.port = listener.getsockname()[1]
        out = open(self.output, "ab") if self.output else subprocess.DEVNULL  # noqa: SIM115 - the child keeps a copy
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(listener.fileno())],
                env=env, stdout=out, stderr=out, pass_fds=(listener.fileno(),), preexec_fn=die_with_parent())
        finally:
            listener.close()  # the child holds its own copy
            if self.output:
                out.close()
        try:
            if meanwhile is not None:
                meanwhile()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the temporary Prefect server exited with code {self.process.returncode}"
                                       + (f"; its log: {self.output}" if self.output else ""))
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                        return
                time.sleep(0.25)
        except BaseException as exc:  # the work given failed, or Ctrl-C: no child left behind
            if not isinstance(exc, RuntimeError):  # a timed-out start is stopped (and retried) by the caller
                self.stop()
            raise
        raise RuntimeError(f"{TIMEOUT_MESSAGE} at {self.api_url} after {timeout} s")

    def stop(self) -> None:
        if self.process is not None:
            stop_child(self.process)


@contextlib.contextmanager
def _pointed_at(url: str) -> Iterator[None]:
    """Every Prefect client of this process uses ``url``: ``PREFECT_API_URL`` in the environment, the
    process-wide settings rebuilt from it (what new threads read) and this context's settings."""
    from prefect.context import refresh_global_settings_context
    from prefect.settings import PREFECT_API_URL, temporary_settings

    before = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    refresh_global_settings_context()
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield
    finally:
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before
        refresh_global_settings_context()


@contextlib.contextmanager
def without_heartbeats() -> Iterator[None]:
    """Flow runs this process executes send no heartbeats (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` unset),
    unless the user set that frequency (environment or profile). Runs that ``nightcast serve`` starts
    in child processes keep Prefect's default: None does not travel through their environment."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings

    if "heartbeat_frequency" in get_current_settings().flows.model_fields_set:
        yield
        return
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@contextlib.contextmanager
def embedded_server(output: Path | None = None, meanwhile: Callable[[], None] | None = None) -> Iterator[str | None]:
    """Start a temporary Prefect server for this process when it needs one; yield its API URL.

    Yields None (and starts nothing) when a server is configured. ``output``
    receives the server's stdout and stderr. The server is stopped on exit; if
    this process is killed instead, the kernel sends the server SIGTERM (Linux).
    ``meanwhile`` (once, when a server is started) runs while the server boots: the CLI imports
    its flows there (torch, Lightning, polars: about 4 s, as long as the server's own start).
    """
    if not needs_embedded_server():
        yield None
        return
    timeout = startup_timeout()
    for attempt in range(1, START_ATTEMPTS + 1):
        server = ChildServer(output)
        try:
            server.start(timeout=timeout, meanwhile=meanwhile)
            break
        except RuntimeError as exc:
            meanwhile = None  # it ran before the wait that failed: a second attempt only waits for its server
            server.stop()  # a timed-out start leaves its process running
            if TIMEOUT_MESSAGE not in str(exc):
                raise
            if attempt == START_ATTEMPTS:
                raise EmbeddedServerError(
                    f"the temporary Prefect server did not answer within {timeout} s, {attempt} times\n"
                    "set PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS to wait longer, or PREFECT_API_URL "
                    f"to use a running Prefect server\n{exc}") from exc
            log.warning("the temporary Prefect server did not answer within %d s; starting it again "
                        "(set PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS to wait longer, "
                        "or PREFECT_API_URL to use a running server)", timeout)
    try:
        with _pointed_at(server.api_url), without_heartbeats():
            try:
                yield server.api_url
            finally:
                _drain_to(server)
    finally:
        server.stop()


def _drain_to(server: Any) -> None:
    """Send the logs and events still queued before the server goes (as prefect_test_harness does)."""
    import inspect

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        with contextlib.suppress(RuntimeError):  # the worker never started
            if inspect.isawaitable(result := APILogWorker.instance().drain()):
                await result
        if inspect.isawaitable(result := EventsWorker.drain_all()):
            await result

    if server.running:
        run_coro_as_sync(drain())


if __name__ == "__main__":  # the child ``ChildServer`` starts: python -m nightcast.flows.embedded FD
    serve_socket(int(sys.argv[1]))
