"""Steps pass their arguments to Prefect unwalked: the contents of a bundle or a catalogue are never
visited element by element, while the task that produced an argument is still recorded as its input."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from prefect import flow, get_client
from prefect.futures import wait

from nightcast.flows.runtime import step, unwalked

pytestmark = pytest.mark.usefixtures("prefect_harness")


class CountingDict(dict):
    """A per-series table that counts how often anything walks its entries."""

    walks = 0

    def items(self):  # noqa: ANN201 - dict's own
        CountingDict.walks += 1
        return super().items()


@dataclasses.dataclass
class Catalogue:
    per_series: CountingDict


def _make() -> Catalogue:
    return Catalogue(CountingDict({f"s{i}": [float(i)] * 3 for i in range(1000)}))


def _use(catalogue: Catalogue, day: dt.date, name: str) -> tuple[int, int, str]:
    return id(catalogue), len(catalogue.per_series), f"{name} {day}"


make = step(_make, "make")
use = step(_use, "use").with_options(task_run_name="use-{name}-{day}")


def test_a_step_gets_its_argument_itself_unwalked_and_its_producer_is_recorded():
    @flow(name="unwalked-probe")
    def probe():
        catalogue = make()
        CountingDict.walks = 0
        state = use(catalogue, dt.date(2026, 1, 2), name="x", return_state=True)
        submitted = use.submit(catalogue, dt.date(2026, 1, 3), "y")
        wait([submitted])
        return id(catalogue), state, submitted.state, CountingDict.walks

    made, called, submitted, walks = probe()
    assert walks == 0  # Prefect walked none of the 1,000 entries, on the call or the submission
    for state, day in ((called, "2026-01-02"), (submitted, "2026-01-03")):
        got_id, n, label = state.result()
        assert got_id == made and n == 1000 and label.endswith(day)  # the object itself, not a copy
    # run names are formatted from the arguments (the server may first hold the default name)
    run = _recorded(called.state_details.task_run_id, lambda r: r.name == "use-x-2026-01-02")
    assert run.name == "use-x-2026-01-02"
    producer = {r.id for r in run.task_inputs["catalogue"]}
    assert len(producer) == 1 and _recorded(next(iter(producer))).name.startswith("make")


def _recorded(task_run_id, ready=lambda run: True):  # noqa: ANN001, ANN202
    """A task run as the API stores it once ``ready``: the server records task runs from their events, a
    moment later, and updates them as further events arrive."""
    import time

    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while True:
            try:
                run = client.read_task_run(task_run_id)
                if ready(run) or time.monotonic() > deadline:
                    return run
            except ObjectNotFound:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.2)


def test_a_plain_task_call_walks_every_entry():
    """The cost the wrapper avoids: the same call through the bare Prefect task walks the table."""
    @flow(name="walked-probe")
    def probe():
        catalogue = _make()
        CountingDict.walks = 0
        use.task(catalogue, dt.date(2026, 1, 2), name="x")
        return CountingDict.walks

    assert probe() >= 1


def test_scalars_and_annotations_pass_as_they_are():
    from prefect.utilities.annotations import opaque, unmapped

    for value in ("a", 1, 2.5, True, None, dt.date(2026, 1, 1), dt.datetime(2026, 1, 1), b"x"):
        assert unwalked(value) is value
    marked = unmapped([1, 2])
    assert unwalked(marked) is marked
    assert isinstance(unwalked({"a": 1}), opaque) and isinstance(unwalked([1]), opaque)


def test_a_step_pickles_as_dask_ships_it():
    """Dask pickles what a mapped task's run refers to, steps included (a delegating ``__getattr__``
    recursed while unpickling: every Dask run failed)."""
    import cloudpickle

    again = cloudpickle.loads(cloudpickle.dumps(use))
    assert again.name == "use" and again.task.name == "use"
    assert again.fn(_make(), dt.date(2026, 1, 2), "x")[1:] == (1000, "x 2026-01-02")


def test_an_unwalked_argument_pickles_to_the_same_wrapper():
    """Prefect's own annotations unpickle as a wrapper of a 1-tuple (a Dask submission would hand the task
    ``(value,)``); the step's wrapper round-trips."""
    import pickle

    import cloudpickle
    from prefect.utilities.annotations import opaque

    wrapped = unwalked({"a": [1, 2]})
    for dumps, loads in ((pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)):
        again = loads(dumps(wrapped))
        assert isinstance(again, opaque) and again.unwrap() == {"a": [1, 2]}
