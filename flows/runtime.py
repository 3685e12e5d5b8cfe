"""What every flow shares: settings and the store, step wrappers, retry policy, artifact keys."""

from __future__ import annotations

import datetime as dt
import errno
import functools
import re
import os
import socket
import sys
from typing import Any, Callable, TypeVar

import torch
from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import BaseAnnotation, opaque
from prefect.task_runners import ThreadPoolTaskRunner

from nightcast.schemas.params import Settings
from nightcast.tasks.ops.storage import Store, open_store

F = TypeVar("F", bound=Callable[..., Any])

STEP_NOTE = "nightcast step: "
"""Prefix of the note a failing step adds to its exception (the CLI prints the step)."""

RETRY_DELAYS_S = [3.0, 6.0, 12.0, 24.0]
"""Waits before an I/O step's 4 retries. With ``RETRY_JITTER`` each wait lands in
[0.75, 1.3] × its value, so a step keeps trying for at least 33 s (at most 59 s) plus
the time its own attempts take, botocore's retries inside each S3 request included
(``nightcast.tasks.ops.storage.S3Settings``): a 30 s outage of the store never fails a step."""
RETRY_JITTER = 0.3

# Error codes S3 (and AWS generally) answers when a later attempt may succeed.
_RETRY_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException", "RequestThrottled",
    "RequestLimitExceeded", "BandwidthLimitExceeded", "LimitExceededException", "SlowDown",
    "EC2ThrottledException", "PriorRequestNotComplete", "RequestTimeout", "RequestTimeoutException",
    "InternalError", "ServiceUnavailable", "TransactionInProgressException",
})
_NETWORK_ERRNOS = frozenset(getattr(errno, name) for name in (
    "ECONNRESET", "ECONNREFUSED", "ECONNABORTED", "ETIMEDOUT", "EPIPE", "EHOSTUNREACH",
    "ENETUNREACH", "ENETDOWN", "ENETRESET", "EHOSTDOWN") if hasattr(errno, name))


def start_run(store: str | None, data: str | None = None) -> tuple[Settings, Store]:
    """Build the settings (now, not at import) and open the store they name.

    In a run started through the Prefect API (a deployment: schedule, UI, ``prefect deployment run``)
    the ``store`` and ``data`` parameters must lie within the worker's configured locations
    (``Settings.check_location``): whoever can reach the API must not steer a worker to any path its
    credentials reach. Direct calls (the CLI, Python) run with their caller's own rights.
    """
    settings = Settings()
    if from_deployment():
        for url, what in ((store, "store"), (data, "data")):
            if url:
                settings.check_location(url, what)
    # Small LSTMs on few cores: more threads only add contention.
    torch.set_num_threads(settings.torch_threads)
    return settings, open_store(store or settings.store)


def task_runner(settings: Settings) -> Any:
    """Where a flow's tasks run: Prefect's thread pool in this process (the default; one thread per core, where
    Prefect's own default has no limit and would run every mapped shard at once), or a Dask
    cluster when ``settings.dask_address`` names one (``local``: a LocalCluster of processes
    started for the run; else an existing scheduler's address, e.g. ``tcp://10.0.0.5:8786``)."""
    if not settings.dask_address:  # as many threads as cores: mapped shards run that many at a time, not all at once
        from nightcast.models.classical import usable_cores

        return ThreadPoolTaskRunner(max_workers=usable_cores())
    from prefect_dask import DaskTaskRunner

    if settings.dask_address == "local":
        return DaskTaskRunner(cluster_class=local_cluster, cluster_kwargs={"n_workers": settings.dask_local_workers})
    return DaskTaskRunner(address=settings.dask_address)


def local_cluster(n_workers: int = 1, **kwargs: Any) -> Any:
    """A ``LocalCluster`` of ``n_workers`` processes of one thread each, each worker's polars pool sized to
    its share of the cores (``POLARS_MAX_THREADS`` = cores ÷ workers, at least 1), as Dask itself sizes the
    OpenMP, MKL and OpenBLAS pools of its workers: two workers on two cores then run one polars thread each
    instead of two each. The variable goes through ``distributed.nanny.pre-spawn-environ``, so it is in a
    worker's environment before its Python starts (a nanny's ``env`` is applied after the spawned process
    has re-imported the main module, which may already have sized polars' pool: under the ``nightcast``
    command it had). A ``POLARS_MAX_THREADS`` already set here is kept (the workers inherit it). What
    ``NIGHTCAST_DASK_ADDRESS=local`` starts (``task_runner``); ``kwargs`` go to ``LocalCluster``."""
    import dask
    from distributed import LocalCluster

    from nightcast.models.classical import usable_cores

    kwargs = {"threads_per_worker": 1, "processes": True, "dashboard_address": None, **kwargs}
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    if "POLARS_MAX_THREADS" not in os.environ:
        environ["POLARS_MAX_THREADS"] = str(max(1, usable_cores() // max(1, n_workers)))
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        return LocalCluster(n_workers=n_workers, **kwargs)


def worker_slots() -> int:
    """Tasks the running flow's task runner runs at once: the worker threads of its Dask cluster as the
    run starts (at least 1; an adaptive cluster counts the workers it has then), else the cores of this
    process (Prefect's thread pool runs tasks in its threads, and more threads than cores add nothing)."""
    from prefect.context import FlowRunContext

    from nightcast.models.classical import usable_cores

    ctx = FlowRunContext.get()
    runner = ctx.task_runner if ctx is not None else None
    dask = sys.modules.get("prefect_dask")  # a run on Dask has imported it; a thread-pool run need not
    if dask is not None and isinstance(runner, dask.DaskTaskRunner):
        try:
            return max(1, sum(runner.client.nthreads().values()))
        except Exception:  # noqa: BLE001 - a scheduler that does not answer: one at a time
            return 1
    return usable_cores()


class SettingsTaskRunner(ThreadPoolTaskRunner):
    """The task runner the settings ask for, decided when each flow run starts, not at import.

    Prefect starts every run with ``flow.task_runner.duplicate()``; this one returns
    ``task_runner(Settings())`` there. A deployment's runs therefore go to Dask when the worker (or
    the deployment's ``job_variables.env``) sets ``NIGHTCAST_DASK_ADDRESS``, with no code change,
    and to Prefect's thread pool when nothing is set.
    """

    def duplicate(self) -> Any:
        return task_runner(Settings())


def from_deployment() -> bool:
    """Whether this flow run was created from a deployment (by a schedule, the UI or the API)."""
    from prefect.runtime import deployment

    try:
        return deployment.id is not None
    except Exception:  # outside a flow run
        return False


def _transient_here(exc: BaseException) -> bool:
    """One exception, without its chain: is it a network, timeout, throttling or 5xx failure?"""
    from botocore.exceptions import (ClientError, ConnectionClosedError, ConnectTimeoutError,
                                     EndpointConnectionError, IncompleteReadError, ReadTimeoutError,
                                     ResponseStreamingError)
    from prefect.task_engine import TaskRunTimeoutError

    if isinstance(exc, TaskRunTimeoutError):  # the step ran past its own limit: not a hiccup
        return False
    if isinstance(exc, (ConnectionError, TimeoutError, EndpointConnectionError, ConnectTimeoutError,
                        ReadTimeoutError, ConnectionClosedError, ResponseStreamingError,
                        IncompleteReadError)):
        return True
    if isinstance(exc, socket.gaierror):  # DNS: only "try again" is temporary
        return exc.errno == socket.EAI_AGAIN
    if isinstance(exc, OSError):
        return exc.errno in _NETWORK_ERRNOS
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return code in _RETRY_CODES or status == 429 or status >= 500 or code.isdigit() and int(code) >= 500
    try:
        import httpx
    except ImportError:
        return False
    return isinstance(exc, httpx.TransportError)


def is_transient_error(exc: BaseException) -> bool:
    """Whether another attempt may succeed: an allow-list, everything else fails at once.

    Connection and timeout errors (builtin, socket, botocore, httpx), an ``OSError``
    with a network errno, and S3 answers for throttling, request timeouts and 5xx
    are transient, wherever they sit in the ``__cause__`` / ``__context__`` chain:
    a ``StorageError`` wrapping a refused connection is retried, one for a bad URL,
    a 403 or a missing bucket is not. Bad input, a corrupt bundle
    (``UnpicklingError``), a missing object and a step's own timeout are permanent.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _transient_here(current):
            return True
        # The chain as a traceback shows it: an explicit cause, else the unsuppressed context.
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return False


def is_transient(task: Task, task_run: Any, state: Any) -> bool:
    """Retry condition for Prefect: retry only what ``is_transient_error`` allows."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and is_transient_error(exc)


_SCALARS = (str, bytes, int, float, bool, type(None), dt.date, dt.datetime, dt.timedelta)


class Unwalked(opaque):
    """Prefect's ``opaque`` that survives pickling (a Dask submission): Prefect's annotations are tuple
    subclasses without ``__reduce__``, and unpickled they wrap a 1-tuple of the value."""

    def __reduce__(self) -> tuple:
        return Unwalked, (self.unwrap(),)


def unwalked(value: Any) -> Any:
    """``value`` as a task argument that Prefect resolves but does not walk into (``opaque``).

    Before a task runs, Prefect visits every element of every argument twice (to resolve futures and to
    record which task produced what): every dict entry, list item and dataclass field. A bundle, a
    prepared catalogue or a backtest carries per-series tables, so at 10,000 series that walk took 7.4 s
    of a 30 s retrain and 0.9 s of each scoring run, growing with the catalogue. ``opaque`` keeps what
    the walk is for at the top level (a future is still resolved; the task that made the object is
    still recorded as an input) and skips the contents: a future or a task's result *inside* a list or
    dict is neither resolved nor recorded, so a step's arguments are values, or futures passed as
    arguments themselves. Scalars pass as they are (nothing to walk)."""
    return value if isinstance(value, (BaseAnnotation, *_SCALARS)) else Unwalked(value)


def unwalked_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """Every value of ``parameters`` ``unwalked`` (keyword arguments, a task runner's parameters)."""
    return {k: unwalked(v) for k, v in parameters.items()}


class Step:
    """A step's Prefect task whose calls and submissions pass their arguments ``unwalked``.

    Everything else (``map``, ``fn``, ``name``, ...) is the task's own; ``task`` is the Prefect task
    itself, for APIs that take one (a task runner's ``submit``). Mapped calls are left alone: their
    arguments are per-shard values and ``unmapped`` scalars, and mapping needs to see the iterables."""

    def __init__(self, task: Task) -> None:
        self.task = task

    def __call__(self, *args: Any, return_state: bool = False, wait_for: Any = None, **kwargs: Any) -> Any:
        return self.task(*map(unwalked, args), return_state=return_state, wait_for=wait_for,
                         **unwalked_parameters(kwargs))

    def submit(self, *args: Any, return_state: bool = False, wait_for: Any = None, **kwargs: Any) -> Any:
        return self.task.submit(*map(unwalked, args), return_state=return_state, wait_for=wait_for,
                                **unwalked_parameters(kwargs))

    def with_options(self, **options: Any) -> Step:
        return Step(self.task.with_options(**options))

    def __repr__(self) -> str:
        return f"Step({self.task.name!r})"

    def __getattr__(self, name: str) -> Any:
        if name == "task" or name.startswith("__"):  # unpickling asks before ``task`` is set
            raise AttributeError(name)
        return getattr(self.task, name)


def step(fn: F, name: str, *, io: bool = False, timeout_s: float | None = None) -> Step:
    """A pipeline step as a Prefect task (wrapped in ``Step``: its arguments are not walked).

    ``io`` steps (storage reads and writes) retry four times, after
    ``RETRY_DELAYS_S`` with jitter, on transient errors only (``is_transient_error``);
    anything else fails at once. ``timeout_s``
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
        retry = dict(retries=len(RETRY_DELAYS_S), retry_delay_seconds=list(RETRY_DELAYS_S),
                     retry_jitter_factor=RETRY_JITTER, retry_condition_fn=is_transient)
    return Step(task(run, name=name, cache_policy=NO_CACHE, timeout_seconds=timeout_s, **retry))


def failed_step(exc: BaseException) -> str | None:
    """The step a failure came from, when a step wrapper noted it."""
    for note in getattr(exc, "__notes__", ()):
        if note.startswith(STEP_NOTE):
            return note[len(STEP_NOTE):]
    return None


def publish_markdown(key: str, description: str, title: str, facts: list[str],
                     sections: dict[str, list[str]] | None = None) -> None:
    """A Prefect markdown artifact: a title, a bullet list of facts, then titled bullet lists (empty ones left out)."""
    from prefect.artifacts import create_markdown_artifact

    body = f"# {title}\n\n" + "".join(f"- {f}\n" for f in facts)
    for heading, items in (sections or {}).items():
        if items:
            body += f"\n## {heading}\n" + "".join(f"- {i}\n" for i in items)
    create_markdown_artifact(key=key, description=description, markdown=body)


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]
