"""bench/scale.py: the data path and its floor are the fastest of several fresh processes; a run that
failed never stands in for one that worked, nor marks the process that went on to train as failed."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import scale  # noqa: E402

STEPS = ("ingest", "validate", "prepare")


def _run(seconds: tuple[float, float, float], peak: float = 100.0, **extra) -> dict:
    return {**{k: {"seconds": s, "peak_mib": peak} for k, s in zip(STEPS, seconds)}, **extra}


def test_the_fastest_whole_process_counts_with_the_highest_peak():
    slow, fast = _run((1.0, 1.0, 8.0), peak=300.0), _run((1.0, 1.0, 5.0), peak=200.0, train_lightning={"seconds": 3})
    got = scale._fastest_process([slow, fast], STEPS)
    assert got["prepare"]["seconds"] == 5.0 and got["train_lightning"] == {"seconds": 3}
    assert got["ingest"]["runs"] == [10.0, 7.0]
    assert all(got[k]["peak_mib"] == 300.0 for k in STEPS)


def test_a_failed_extra_run_is_named_but_does_not_replace_the_training_process():
    died = {"error": "worker data exited -9: killed"}
    trained = _run((1.0, 1.0, 5.0), train_lightning={"seconds": 3})
    got = scale._fastest_process([died, trained], STEPS)
    assert "error" not in got and got["train_lightning"] == {"seconds": 3}
    assert got["ingest"]["runs"] == ["failed", 7.0]
    pipe = {**trained, **got}
    assert scale._err(pipe, *STEPS) is None and scale._err(pipe, "train_lightning") is None


def test_when_every_run_fails_each_step_says_why():
    died = {"error": "worker data exited -9: killed"}
    half = _run((1.0, 1.0, 5.0))
    half["prepare"] = {"error": "MemoryError"}
    got = scale._fastest_process([died, half], STEPS)
    assert got == {k: {"error": "worker data exited -9: killed"} for k in STEPS}
    alone = scale._fastest_process([half], STEPS)
    assert alone["prepare"] == {"error": "MemoryError"} and alone["ingest"]["seconds"] == 1.0
