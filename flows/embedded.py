"""Prefect's temporary API server for a CLI process that has no ``PREFECT_API_URL``.

Left alone, Prefect starts this server lazily, from whichever thread first asks
for a client, and waits 20 s for it: on a busy 2-core machine that times out,
and a killed CLI (SIGKILL, or SIGTERM, which skips ``atexit``) leaves the
server running for ever. Here the CLI starts the very same server first, from
its main thread, registered where Prefect looks for it, so every later client
reuses it. The differences are how it is started and watched:

- the start-up wait is ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``
  when set (environment or Prefect profile), else 120 s, and a start that
  times out is stopped and tried once more;
- on Linux the server is asked to receive SIGTERM when this process dies
  (``PR_SET_PDEATHSIG``), so no orphan outlives a kill;
- its stdout and stderr go to the CLI's log file, not the terminal.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import signal
import subprocess
import sys
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

    The signal follows the thread that forks, so call Popen from the main thread.
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


class EmbeddedServerError(RuntimeError):
    """The temporary Prefect server did not come up."""


@functools.cache
def _server_class() -> type:
    from prefect.server.api.server import SubprocessASGIServer

    class ChildServer(SubprocessASGIServer):
        """Prefect's temporary server, started as a child that dies with this process."""

        output: Path | None = None

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            # Prefect 3.8.8's own command and environment (SubprocessASGIServer._run_uvicorn_command);
            # tests/flows/test_cli_errors.py checks they still match. Only preexec_fn and the output differ.
            import prefect
            from prefect.settings import get_current_settings

            server_env = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
            out = open(self.output, "ab") if self.output else None  # noqa: SIM115 - the child keeps its own copy
            try:
                return subprocess.Popen(
                    args=[sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent),
                          "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
                          "--port", str(self.port), "--log-level", "error", "--lifespan", "on"],
                    env={**os.environ, **server_env,
                         **get_current_settings().to_environment_variables(exclude_unset=True)},
                    stdout=out, stderr=out, preexec_fn=die_with_parent(),
                )
            finally:
                if out:
                    out.close()

    return ChildServer


@contextlib.contextmanager
def embedded_server(output: Path | None = None) -> Iterator[str | None]:
    """Start Prefect's temporary server for this process when it needs one; yield its API URL.

    Yields None (and starts nothing) when a server is configured or one is
    already running here. ``output`` receives the server's stdout and stderr.
    The server is stopped on exit; if this process is killed instead, the
    kernel sends the server SIGTERM (Linux).
    """
    from prefect.server.api.server import SubprocessASGIServer

    existing = SubprocessASGIServer._instances.get(None)
    if not needs_embedded_server() or (existing is not None and existing.running):
        yield None
        return
    timeout = startup_timeout()
    server = None
    for attempt in range(1, START_ATTEMPTS + 1):
        server = _server_class()()  # registered under Prefect's default key: its clients find it
        server.output = output
        try:
            server.start(timeout=timeout)
            break
        except RuntimeError as exc:
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
        yield server.api_url
    finally:
        _drain_to(server)
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
