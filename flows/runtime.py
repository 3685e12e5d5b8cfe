"""What every flow shares: settings and the store, step wrappers, retry policy, artifact keys."""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, TypeVar

import torch
from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from schemas.params import Settings
from tasks.storage import Store, open_store

F = TypeVar("F", bound=Callable[..., Any])

STEP_NOTE = "nightcast step: "
"""Prefix of the note a failing step adds to its exception (the CLI prints the step)."""

# Errors that another attempt cannot fix: bad input, a missing or corrupt model, a bad request.
_PERMANENT = (ValueError, TypeError, KeyError, LookupError, FileNotFoundError, PermissionError)


def start_run(store: str | None) -> tuple[Settings, Store]:
    """Build the settings (now, not at import) and open the store they name."""
    settings = Settings()
    # Small LSTMs on few cores: more threads only add contention.
    torch.set_num_threads(settings.torch_threads)
    return settings, open_store(store or settings.store)


def is_transient(task: Task, task_run: Any, state: Any) -> bool:
    """Retry condition: retry I/O hiccups, never deterministic failures."""
    from tasks.registry import RegistryError

    exc = state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and not isinstance(exc, (*_PERMANENT, RegistryError))


def step(fn: F, name: str, *, io: bool = False, timeout_s: float | None = None) -> Task:
    """A pipeline step as a Prefect task.

    ``io`` steps (storage reads and writes) retry three times with exponential
    backoff and jitter (2, 4, 8 s ± 50 %) on transient errors. ``timeout_s``
    bounds long steps. A failure carries a note naming the step, which the
    CLI prints; the Prefect UI shows the failed task run by the same name.
    """

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            note = STEP_NOTE + name
            if note not in getattr(exc, "__notes__", ()):
                exc.add_note(note)
            raise

    retry: dict[str, Any] = {}
    if io:
        retry = dict(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2),
                     retry_jitter_factor=0.5, retry_condition_fn=is_transient)
    return task(run, name=name, cache_policy=NO_CACHE, timeout_seconds=timeout_s, **retry)


def failed_step(exc: BaseException) -> str | None:
    """The step a failure came from, when a step wrapper noted it."""
    for note in getattr(exc, "__notes__", ()):
        if note.startswith(STEP_NOTE):
            return note[len(STEP_NOTE):]
    return None


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]
