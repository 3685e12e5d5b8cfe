"""Where a CLI run's output goes: its log on stdout, a failure on stderr, everything in a log file.

Prefect configures logging when ``prefect.main`` loads (any ``from prefect import
flow``), from ``prefect/logging/logging.yml``:
one ``PrefectConsoleHandler`` on stderr serves the root logger, and its engines
log every failed task and flow run at ERROR with the whole traceback. For the
command line that buries the one line that matters. ``cli_logging`` adjusts
that configuration for one command, and undoes it afterwards:

- Prefect's console handlers write to stdout, beside the progress bar and the
  summary, so stderr holds only what went wrong: the CLI's ``error:`` line
  first, then its details. Python warnings join the log instead of stderr.
  stdout is line-buffered meanwhile, so ``> run.log 2>&1`` keeps the order.
- On the terminal a record prints without its traceback (one line per failed
  task or flow run), unless ``verbose``.
- Every record, tracebacks included, also goes to a log file, and so does the
  temporary Prefect server's own output.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator

LOG_DIR_ENV = "NIGHTCAST_LOG_DIR"
DEFAULT_LOG_DIR = "nightcast-logs"
"""Beside the default ``./nightcast-store``, not in it: a store holds data, and may be S3."""

FILE_ONLY = "nightcast_file_only"
"""Set on a record (``extra={FILE_ONLY: True}``) that belongs in the log file, not on the terminal."""

_FILE_FORMAT = "%(asctime)s | %(levelname)-7s | %(name)s - %(message)s"


class WithoutTraceback(logging.Formatter):
    """Formats like ``inner`` but leaves out the traceback and stack of a record."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            record = copy.copy(record)  # the log file still formats the original, traceback and all
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return self.inner.format(record)


def not_file_only(record: logging.LogRecord) -> bool:
    """Console filter: drop the records meant only for the log file."""
    return not getattr(record, FILE_ONLY, False)


def log_dir() -> Path:
    """``$NIGHTCAST_LOG_DIR``, else ``./nightcast-logs``."""
    return Path(os.environ.get(LOG_DIR_ENV) or DEFAULT_LOG_DIR)


def open_log_file(command: str) -> logging.FileHandler | None:
    """A handler on a new ``<command>-<UTC stamp>-<pid>.log``; falls back to the temp dir, else None."""
    name = f"{command}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{os.getpid()}.log"
    for folder in (log_dir(), Path(tempfile.gettempdir()) / DEFAULT_LOG_DIR):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(folder / name, encoding="utf-8")
        except OSError:
            continue
        handler.setFormatter(_file_formatter())
        return handler
    return None


def _file_formatter() -> logging.Formatter:
    from prefect.logging.formatters import PrefectFormatter

    return PrefectFormatter(_FILE_FORMAT,
                            flow_run_fmt="%(asctime)s | %(levelname)-7s | Flow run %(flow_run_name)r - %(message)s",
                            task_run_fmt="%(asctime)s | %(levelname)-7s | Task run %(task_run_name)r - %(message)s")


def _console_handlers() -> list[tuple[logging.Logger, logging.StreamHandler]]:
    """Every (logger, handler) pair where a handler writes to stderr: Prefect's console and debug handlers."""
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    return [(lg, h) for lg in loggers for h in lg.handlers
            if type(h) is not logging.FileHandler and isinstance(h, logging.StreamHandler)
            and h.stream in (sys.stderr, sys.__stderr__)]


def _retarget(handler: logging.StreamHandler, stream: object) -> None:
    handler.setStream(stream)
    if console := getattr(handler, "console", None):  # PrefectConsoleHandler prints through rich
        console.file = stream


def _line_buffering(stream: object, on: bool) -> bool | None:
    """Set a text stream's line buffering; return what it was (None for a stream that cannot)."""
    try:
        was = stream.line_buffering  # type: ignore[attr-defined]
        stream.reconfigure(line_buffering=on)  # type: ignore[attr-defined]
    except (AttributeError, ValueError, OSError):
        return None
    return was


@contextlib.contextmanager
def cli_logging(command: str, verbose: bool = False) -> Iterator[Path | None]:
    """Configure logging for one CLI command; yield the log file's path (None if none could be made)."""
    import prefect.main  # noqa: F401 - runs Prefect's logging setup, which this adjusts
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()

    root = logging.getLogger()
    file_handler = open_log_file(command)
    pairs = _console_handlers()
    saved = {id(h): (h, h.stream, h.formatter) for _, h in pairs}
    with_file = [lg for lg, _ in pairs if lg is root or not lg.propagate]
    if file_handler and root not in with_file:
        with_file.append(root)
    line_buffered = None
    try:
        for handler, _, formatter in saved.values():
            _retarget(handler, sys.stdout)
            handler.addFilter(not_file_only)
            if not verbose:
                handler.setFormatter(WithoutTraceback(formatter))
        if file_handler:
            for lg in dict.fromkeys(with_file):
                lg.addHandler(file_handler)
        logging.captureWarnings(True)
        line_buffered = _line_buffering(sys.stdout, True)
        yield Path(file_handler.baseFilename) if file_handler else None
    finally:
        if line_buffered is not None:
            _line_buffering(sys.stdout, line_buffered)
        logging.captureWarnings(False)
        for handler, stream, formatter in saved.values():
            _retarget(handler, stream)
            handler.removeFilter(not_file_only)
            handler.setFormatter(formatter)
        if file_handler:
            for lg in dict.fromkeys(with_file):
                lg.removeHandler(file_handler)
            file_handler.close()
