"""What a failure looks like in the terminal, and the temporary Prefect server of a CLI process.

The command-line tests run ``python -m nightcast.flows.cli`` as a user would: its own
process, no PREFECT_API_URL, so each starts Prefect's temporary server.
"""

from __future__ import annotations

import contextlib

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import prefect.main  # noqa: F401 - Prefect's logging set-up binds the streams of now, not of a test's capsys
import pytest

from nightcast.flows import console, embedded

REPO = Path(__file__).resolve().parents[2]


# --- helpers: the CLI as a subprocess, processes seen through /proc -------------------------------

def cli_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The user's environment with no Prefect server configured and a private Prefect home."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_API_URL", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", console.LOG_DIR_ENV)
           and not k.startswith("PREFECT_LOGGING_")}  # Prefect's default log levels, whatever ran before
    env.update(PREFECT_HOME=str(tmp / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               NIGHTCAST_PROGRESS="false", PYTHONUNBUFFERED="1", **extra)
    return env


def nightcast(*args: str) -> list[str]:
    return [sys.executable, "-m", "nightcast.flows.cli", *args]


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat fields after the command name (state first), or None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def children(pid: int) -> dict[int, str]:
    """Direct children of ``pid``: {child pid: start time}, to tell a reused pid apart."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and fields[1] == str(pid):
            found[int(entry.name)] = fields[19]
    return found


def alive(pid: int, started: str) -> bool:
    """Still running: present, the same process, and not a zombie."""
    fields = _stat(pid)
    return fields is not None and fields[19] == started and fields[0] != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def wait_until(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


@pytest.fixture()
def tiny_csv(tmp_path: Path) -> str:
    from nightcast.tasks.data.sample import make_sample

    path = tmp_path / "tiny.csv"
    make_sample(n_series=2, days=10, seed=3).write_csv(path)
    return str(path)


# --- a failing command: the error line first, tracebacks in the log file ----------------------------

@dataclass
class Run:
    cwd: Path
    stdout: str
    stderr: str
    returncode: int

    @property
    def first_error_line(self) -> str:
        return next(line for line in self.stderr.splitlines() if line.strip())

    @property
    def log_file(self) -> Path:
        last = self.stderr.strip().splitlines()[-1]
        assert last.startswith("full log: "), self.stderr[-2000:]
        path = Path(last.removeprefix("full log: ").split(" (or run")[0])
        return path if path.is_absolute() else self.cwd / path


@pytest.fixture(scope="module")
def failed_runs(tmp_path_factory) -> dict[str, Run]:
    """``retrain`` on a file that does not exist, plainly and with ``--verbose``, both at once."""
    tmp = tmp_path_factory.mktemp("cli-errors")
    missing = str(tmp / "missing.csv")
    commands = {"plain": nightcast("retrain", "--data", missing, "--store", "store"),
                "verbose": nightcast("--verbose", "retrain", "--data", missing, "--store", "store")}
    procs = {}
    for name, cmd in commands.items():
        cwd = tmp / name
        cwd.mkdir()
        procs[name] = (cwd, subprocess.Popen(cmd, cwd=cwd, env=cli_env(tmp), text=True,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    runs = {}
    for name, (cwd, proc) in procs.items():
        out, err = proc.communicate(timeout=600)
        runs[name] = Run(cwd, out, err, proc.returncode)
    return runs


def test_a_failure_shows_the_error_line_first_and_no_traceback(failed_runs):
    run = failed_runs["plain"]
    assert run.returncode == 1, run.stderr[-3000:]
    assert run.first_error_line.startswith("error: step ingest failed: IngestError: input not found:")
    assert "Traceback" not in run.stdout + run.stderr
    assert len(run.stderr.strip().splitlines()) == 2  # the error and where the log is
    # Prefect's run log still shows, one line per record, on stdout
    assert "Beginning flow run" in run.stdout and "Finished in state Failed" in run.stdout
    # the whole story, tracebacks included, is in the log file: by default ./nightcast-logs/retrain-*.log
    assert run.log_file.parent == run.cwd / "nightcast-logs" and run.log_file.name.startswith("retrain-")
    text = run.log_file.read_text()
    assert "Traceback (most recent call last)" in text and "IngestError: input not found" in text
    assert "Beginning flow run" in text


def test_verbose_shows_the_tracebacks_after_the_error_line(failed_runs):
    run = failed_runs["verbose"]
    assert run.returncode == 1, run.stderr[-3000:]
    assert run.first_error_line.startswith("error: step ingest failed: IngestError:")
    assert "Traceback (most recent call last)" in run.stderr  # the CLI's own
    assert "Traceback (most recent call last)" in run.stdout  # Prefect's, in its run log
    assert "Traceback (most recent call last)" in run.log_file.read_text()


def test_a_bad_flag_exits_2_before_anything_starts(tmp_path):
    run = subprocess.run(nightcast("retrain", "--horizon", "soon"), cwd=tmp_path, env=cli_env(tmp_path),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "invalid int value: 'soon'" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "nightcast-logs").exists()


# --- logging set-up, in process ---------------------------------------------------------------------

def test_the_console_formatter_drops_the_traceback_but_not_for_the_file():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, "failed: %s", ("x",),
                                   sys.exc_info())
    short = console.WithoutTraceback(logging.Formatter("%(levelname)s %(message)s")).format(record)
    assert short == "ERROR failed: x"
    assert record.exc_info is not None  # the record itself is untouched ...
    assert "Traceback" in logging.Formatter().format(record)  # ... so the log file gets it all


def test_cli_logging_moves_console_handlers_to_stdout_and_restores_them(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(console.LOG_DIR_ENV, str(tmp_path / "logs"))
    logger = logging.getLogger("nightcast.test.console")
    handler = logging.StreamHandler(sys.stderr)  # what Prefect's console handler is: a stream on stderr
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    monkeypatch.setattr(logger, "propagate", False)
    monkeypatch.setattr(logger, "level", logging.INFO)
    try:
        with console.cli_logging("retrain") as path:
            logger.info("progress")
            try:
                raise RuntimeError("deep down")
            except RuntimeError:
                logger.exception("step failed")
            logger.error("for the file only", extra={console.FILE_ONLY: True})
        logger.info("after")
    finally:
        logger.removeHandler(handler)
    out, err = capsys.readouterr()
    assert out.splitlines() == ["INFO progress", "ERROR step failed"]
    assert err.splitlines() == ["INFO after"]
    assert path.parent == tmp_path / "logs" and path.name.startswith("retrain-") and path.suffix == ".log"
    text = path.read_text()
    assert "progress" in text and "RuntimeError: deep down" in text and "for the file only" in text
    assert "after" not in text
    assert handler.stream is sys.stderr and not handler.filters


def test_verbose_keeps_tracebacks_on_the_console(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(console.LOG_DIR_ENV, str(tmp_path / "logs"))
    logger = logging.getLogger("nightcast.test.verbose")
    handler = logging.StreamHandler(sys.stderr)
    logger.addHandler(handler)
    monkeypatch.setattr(logger, "propagate", False)
    try:
        with console.cli_logging("score", verbose=True):
            try:
                raise RuntimeError("deep down")
            except RuntimeError:
                logger.exception("step failed")
    finally:
        logger.removeHandler(handler)
    assert "Traceback" in capsys.readouterr().out


def test_log_file_falls_back_to_the_temp_dir(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv(console.LOG_DIR_ENV, str(blocker / "logs"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    handler = console.open_log_file("tune")
    try:
        assert Path(handler.baseFilename).parent == tmp_path / "tmp" / "nightcast-logs"
    finally:
        handler.close()


# --- the temporary server: start-up wait, retry, public Prefect API, dies with its parent ------------

def test_startup_wait_is_120s_unless_the_user_set_prefects_own(monkeypatch):
    from prefect.settings import Settings

    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    assert Settings().server.ephemeral.startup_timeout_seconds == 20  # Prefect's own default
    assert embedded.startup_timeout(Settings()) == embedded.DEFAULT_STARTUP_TIMEOUT_S == 120
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "20")
    assert embedded.startup_timeout(Settings()) == 20  # set by the user, even to the default: kept


@pytest.fixture()
def fake_server(monkeypatch):
    """The CLI's server with start/stop recorded instead of run; ``fail`` lists errors to raise."""
    monkeypatch.setattr(embedded, "needs_embedded_server", lambda: True)
    monkeypatch.setattr(embedded, "startup_timeout", lambda: 5)
    calls: list[str] = []
    fail: list[Exception] = []

    def start(self, timeout=None, meanwhile=None):
        calls.append(f"start {timeout}")
        if meanwhile is not None:  # the real start runs it between the launch and the wait
            meanwhile()
        if fail:
            raise fail.pop(0)
        self.port = 4321

    monkeypatch.setattr(embedded.ChildServer, "start", start)
    monkeypatch.setattr(embedded.ChildServer, "stop", lambda self: calls.append("stop"))
    monkeypatch.setattr(embedded, "_drain_to", lambda server: calls.append("drain"))
    return calls, fail


def test_a_start_that_times_out_is_stopped_and_tried_once_more(fake_server):
    calls, fail = fake_server
    fail.append(RuntimeError(embedded.TIMEOUT_MESSAGE + "."))
    with embedded.embedded_server() as url:
        assert url == "http://127.0.0.1:4321/api"
    assert calls == ["start 5", "stop", "start 5", "drain", "stop"]


def test_work_given_for_the_start_runs_once_even_when_the_start_is_tried_again(fake_server):
    calls, fail = fake_server
    fail.append(RuntimeError(embedded.TIMEOUT_MESSAGE + "."))
    with embedded.embedded_server(meanwhile=lambda: calls.append("meanwhile")):
        pass
    assert calls == ["start 5", "meanwhile", "stop", "start 5", "drain", "stop"]


def test_the_cli_imports_its_flows_while_the_server_boots(tmp_path, monkeypatch):
    """A real start: the work given runs while the child server is alive and before it answers is awaited;
    work that fails stops the child."""
    import psutil
    from prefect.context import refresh_global_settings_context
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL, temporary_settings

    def servers() -> list:
        return [p for p in psutil.Process().children() if "nightcast.flows.embedded" in " ".join(p.cmdline())]

    def fail() -> None:
        raise ImportError("no such flow")

    home = tmp_path / "home"
    monkeypatch.setattr(embedded, "needs_embedded_server", lambda: True)
    with monkeypatch.context() as env:
        env.setenv("PREFECT_HOME", str(home))
        env.delenv("PREFECT_API_URL", raising=False)
        refresh_global_settings_context()
        # the home's own database, not the one the session's shared test server may have left in the settings
        database = f"sqlite+aiosqlite:///{home / 'prefect.db'}"
        try:
            with temporary_settings(updates={PREFECT_SERVER_DATABASE_CONNECTION_URL: database}):
                seen: list[int] = []
                with embedded.embedded_server(meanwhile=lambda: seen.append(len(servers()))) as url:
                    assert url is not None
                assert seen == [1]
                with pytest.raises(ImportError, match="no such flow"):
                    with embedded.embedded_server(meanwhile=fail):
                        pass
        finally:
            env.undo()
            refresh_global_settings_context()
    psutil.wait_procs(servers(), timeout=30)
    assert servers() == []


def test_the_cli_gives_its_flow_imports_to_the_server_start(monkeypatch, tmp_path, capsys):
    import contextlib

    from nightcast.flows import cli

    given = []

    @contextlib.contextmanager
    def recording(output=None, meanwhile=None):
        given.append(meanwhile)
        raise RuntimeError("stop here")
        yield

    monkeypatch.setattr(embedded, "embedded_server", recording)
    monkeypatch.setenv("NIGHTCAST_LOG_DIR", str(tmp_path))
    assert cli.main(["score", "--data", str(tmp_path / "none.csv")]) == 1
    (imports,) = given
    assert imports.func is cli._import_flows and imports.args == ("score",)



def test_two_timeouts_give_up_with_a_clear_error(fake_server):
    calls, fail = fake_server
    fail.extend([RuntimeError(embedded.TIMEOUT_MESSAGE + "."), RuntimeError(embedded.TIMEOUT_MESSAGE + ".")])
    with pytest.raises(embedded.EmbeddedServerError, match="did not answer within 5 s, 2 times"):
        with embedded.embedded_server():
            pass
    assert calls == ["start 5", "stop", "start 5", "stop"]


def test_other_start_errors_are_not_retried(fake_server):
    calls, fail = fake_server
    fail.append(RuntimeError("Unable to find an available port after multiple attempts"))
    with pytest.raises(RuntimeError, match="available port"):
        with embedded.embedded_server():
            pass
    assert calls == ["start 5", "stop"]


def _heartbeats():  # noqa: ANN202
    from prefect.settings import get_current_settings

    return get_current_settings().flows.heartbeat_frequency


@contextlib.contextmanager
def _prefect_default_heartbeats():  # noqa: ANN202
    """Settings as a fresh process reads them (Prefect's default frequency, not set by anyone), whatever an
    earlier test's session harness left in this process's context."""
    from prefect.context import SettingsContext
    from prefect.settings import Settings

    saved = os.environ.pop("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", None)
    try:
        with SettingsContext(profile=SettingsContext.get().profile, settings=Settings()):
            assert _heartbeats() is not None  # Prefect's default sends them
            yield
    finally:
        if saved is not None:
            os.environ["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = saved


def test_nothing_is_started_when_a_server_is_configured(monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with _prefect_default_heartbeats(), temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert not embedded.needs_embedded_server()
        before = _heartbeats()
        with embedded.embedded_server() as url:
            assert url is None
            assert _heartbeats() == before  # a server that outlives the run can act on heartbeats: kept


def test_flow_runs_served_by_the_temporary_server_send_no_heartbeats(fake_server):
    """The temporary server dies with the process, so no heartbeat could ever mark a run crashed; each run's
    end waited for the heartbeat thread's one-second sleep."""
    with _prefect_default_heartbeats():
        before = _heartbeats()
        with embedded.embedded_server():
            assert _heartbeats() is None
        assert _heartbeats() == before


def test_a_heartbeat_frequency_the_user_set_is_kept(fake_server):
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 60}):
        with embedded.embedded_server():
            assert _heartbeats() == 60


def test_the_temporary_server_answers_and_every_client_of_the_process_uses_it(tmp_path, monkeypatch):
    """A real start: Prefect's app answers on its port, clients in this thread and in new threads (which read
    the environment) reach it, and nothing of it is left after the block."""
    import threading

    from prefect.settings import PREFECT_API_URL, get_current_settings

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(embedded, "needs_embedded_server", lambda: True)
    log_file = tmp_path / "server.log"
    with embedded.embedded_server(output=log_file) as url:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/api")
        assert PREFECT_API_URL.value() == url
        seen: list[str] = []
        worker = threading.Thread(target=lambda: seen.append(get_current_settings().api.url))
        worker.start()
        worker.join()
        assert seen == [url]
        import httpx

        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    assert os.environ.get("PREFECT_API_URL") is None
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/health", timeout=2)
    assert log_file.exists()


def test_server_starts_in_one_prefect_home_take_turns(tmp_path, monkeypatch):
    """Each start migrates the home's database, and two migrations of a fresh SQLite file at once fail
    (``duplicate column name``): a start waits while another holds the home's start lock, then starts."""
    from prefect.context import refresh_global_settings_context
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL, temporary_settings

    home = tmp_path / "home"
    with monkeypatch.context() as env:
        env.setenv("PREFECT_HOME", str(home))
        env.delenv("PREFECT_API_URL", raising=False)
        refresh_global_settings_context()  # what the start reads in its thread: this home
        # the home's own database, whatever this worker's session set before: the session's shared test server
        # (prefect_harness, entered by an earlier file on the same worker) leaves its database in the settings
        database = f"sqlite+aiosqlite:///{home / 'prefect.db'}"
        try:
            with temporary_settings(updates={PREFECT_SERVER_DATABASE_CONNECTION_URL: database}):
                _take_turns(home, tmp_path)
        finally:
            env.undo()
            refresh_global_settings_context()


def _take_turns(home: Path, tmp_path: Path) -> None:
    import threading

    import httpx
    import psutil

    server = embedded.ChildServer(tmp_path / "server.log")
    held, seen_while_held = threading.Event(), []

    def another_start() -> None:  # holds the home's start lock a while, as a start in progress does
        with embedded.start_lock(home):
            held.set()
            time.sleep(3)
            seen_while_held.append(server.process)

    holder = threading.Thread(target=another_start)
    holder.start()
    try:
        assert held.wait(30)
        server.start(timeout=120)  # the main thread, as the CLI: the server's parent-death signal follows it
        holder.join(30)
        assert seen_while_held == [None]  # nothing was launched while the other start held the lock
        assert httpx.get(f"{server.api_url}/health", timeout=10).status_code == 200
        assert (home / "prefect.db").exists()  # the database it migrated is the home's
        # the port that answered is the child's own socket (bound here before the child started, so no other
        # process could take it in between: two servers on one port once made this test pass on the wrong one)
        listening = [c.laddr.port for c in psutil.Process(server.process.pid).net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN]
        assert listening == [server.port]
        time.sleep(1)  # still serving after a moment: a start from a thread that then ended was once stopped here
        assert server.running and httpx.get(f"{server.api_url}/health", timeout=10).status_code == 200
    finally:
        holder.join(30)
        server.stop()


def test_the_server_is_started_only_from_the_main_thread(tmp_path):
    """The kernel's parent-death signal follows the thread that forked: a server started from a worker thread
    was stopped (SIGTERM) as soon as that thread returned, while the CLI still used it."""
    import threading

    server, errors = embedded.ChildServer(tmp_path / "server.log"), []

    def start() -> None:
        try:
            server.start(timeout=5)
        except RuntimeError as exc:
            errors.append(str(exc))

    worker = threading.Thread(target=start)
    worker.start()
    worker.join(30)
    assert server.process is None and len(errors) == 1 and "main thread" in errors[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_started_with_die_with_parent_ends_when_the_parent_is_killed(tmp_path):
    script = ("import subprocess, time; from nightcast.flows.embedded import die_with_parent; "
              "p = subprocess.Popen(['sleep', '120'], preexec_fn=die_with_parent()); "
              "print(p.pid, flush=True); time.sleep(120)")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    started = _stat(child)[19]
    try:
        assert alive(child, started)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        assert wait_until(lambda: not alive(child, started), 10)
    finally:
        if alive(child, started):
            os.kill(child, signal.SIGKILL)
        parent.stdout.close()


# --- real runs: SIGKILL mid-run, two at once on a saturated machine (slow) --------------------------

@pytest.mark.slow
def test_no_prefect_server_outlives_a_killed_cli(tmp_path, tiny_csv):
    log = (tmp_path / "out.txt").open("w")
    proc = subprocess.Popen(nightcast("retrain", "--data", tiny_csv, "--store", str(tmp_path / "store"),
                                      "--max-steps", "20", "--horizon", "6"),
                            cwd=tmp_path, env=cli_env(tmp_path), stdout=log, stderr=subprocess.STDOUT)
    kids: dict[int, str] = {}
    try:
        assert wait_until(lambda: "Beginning flow run" in (tmp_path / "out.txt").read_text(), 300), \
            (tmp_path / "out.txt").read_text()[-3000:]
        kids = children(proc.pid)
        servers = [pid for pid in kids if f"-m {embedded.__name__} " in cmdline(pid)]
        assert servers, {pid: cmdline(pid) for pid in kids}
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL  # killed mid-run, not finished
        survivors = lambda: [pid for pid, t in kids.items() if alive(pid, t)]  # noqa: E731
        assert wait_until(lambda: not survivors(), 60), {pid: cmdline(pid) for pid in survivors()}
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid, t in kids.items():  # never leave one behind, whatever the test found
            if alive(pid, t):
                os.kill(pid, signal.SIGKILL)
        log.close()


@pytest.mark.slow
def test_two_cli_retrains_at_once_on_a_saturated_machine_both_succeed(tmp_path, tiny_csv):
    """Before: both failed with "Timed out while attempting to connect to ephemeral Prefect API server"."""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    runs = []
    try:
        env = cli_env(tmp_path)  # one Prefect home, as two runs of one user share ~/.prefect
        for name in ("a", "b"):
            runs.append(subprocess.Popen(
                nightcast("retrain", "--data", tiny_csv, "--store", str(tmp_path / f"store-{name}"),
                          "--max-steps", "20", "--horizon", "6"),
                cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        results = [proc.communicate(timeout=800) for proc in runs]
    finally:
        for proc in busy + runs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, (out, err) in zip(runs, results):
        assert proc.returncode == 0, out[-2000:] + err[-3000:]
        assert "Beginning flow run" in out and "decision " in out and "done in" in out
        assert not err.strip()  # stderr is for failures only
