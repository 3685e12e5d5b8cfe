"""bench/accuracy.py --merge: a dataset re-measured in a later file replaces its earlier rows and note."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import accuracy  # noqa: E402


def _row(dataset: str, model: str, mase: float) -> dict:
    return {"dataset": dataset, "model": model, "mase": mase, "lo": mase, "hi": mase, "runs": 1, "seconds": 1.0}


def test_a_later_file_replaces_a_re_measured_dataset(tmp_path):
    old = accuracy.render([_row("a", "nightcast served", 1.5), _row("a", "seasonal naive", 1.0),
                           _row("b", "nightcast served", 0.5), _row("b", "seasonal naive", 1.0)],
                          {"a": {"series": 1, "horizon": 6, "note": "- **a** old"}, "b": {"series": 1, "horizon": 6, "note": "- **b** kept"}}, 1, 2.0)
    new = accuracy.render([_row("a", "nightcast served", 0.8), _row("a", "seasonal naive", 1.0)],
                          {"a": {"series": 1, "horizon": 6, "note": "- **a** new"}}, 1, 3.0)
    (tmp_path / "old.md").write_text(old)
    (tmp_path / "new.md").write_text(new)
    text = accuracy.merge([str(tmp_path / "old.md"), str(tmp_path / "new.md")], str(tmp_path / "out.md"))
    served = [line for line in text.splitlines() if line.startswith("| a |") and "nightcast served" in line]
    assert len(served) == 1 and "| 0.800 |" in served[0]
    assert "- **a** new" in text and "- **a** old" not in text and "- **b** kept" in text
    assert "in 5.0 min (process minutes)" in text


def test_a_references_only_file_adds_its_rows_and_keeps_the_served_ones(tmp_path):
    """``--seeds 0 --neuralforecast`` on a dataset already measured adds the reference, nothing else moves."""
    old = accuracy.render([_row("a", "nightcast served", 0.9), _row("a", "no refit", 1.1),
                           _row("a", "seasonal naive", 1.0)], {"a": {"series": 1, "horizon": 6, "note": "- **a** old"}},
                          3, 2.0)
    new = accuracy.render([_row("a", "neuralforecast LSTM", 1.2), _row("a", "seasonal naive", 1.0)],
                          {"a": {"series": 1, "horizon": 6, "note": "- **a** refs"}}, 1, 1.0)
    (tmp_path / "old.md").write_text(old)
    (tmp_path / "new.md").write_text(new)
    text = accuracy.merge([str(tmp_path / "old.md"), str(tmp_path / "new.md")], str(tmp_path / "out.md"))
    rows = [line for line in text.splitlines() if line.startswith("| a |")]
    assert {line.split("|")[4].strip() for line in rows} == {"nightcast served", "no refit", "seasonal naive",
                                                             "neuralforecast LSTM"}
    assert len(rows) == 4 and "- **a** old" in text and "- **a** refs" not in text


def test_importing_the_bench_leaves_the_environment_alone(monkeypatch):
    """A test that imports the bench must not quiet Prefect for the CLI subprocesses of later tests."""
    import importlib
    import os

    for key in ("PREFECT_LOGGING_LEVEL", "NIGHTCAST_PROGRESS"):
        monkeypatch.delenv(key, raising=False)
    before = dict(os.environ)
    importlib.reload(accuracy)
    assert dict(os.environ) == before
