"""Seeds trained side by side in worker processes give the weights training them one after another gives."""

import os

import numpy as np
import pytest
import torch

from nightcast.schemas.params import TrainConfig
from nightcast.tasks.data.prepare import prepare_training
from nightcast.tasks.data.validate import validate_observations
from nightcast.tasks.forecast import seeds as seeds_mod
from nightcast.tasks.forecast.seeds import refit_seeds_models, seed_workers, train_seeds
from nightcast.tasks.forecast.train import best_steps
from tests.conftest import fast_params


@pytest.fixture(scope="module")
def prepared(sample_raw):
    params = fast_params("-", train=TrainConfig(max_steps=30, steps_per_epoch=10, batch_size=64))
    return params, prepare_training(validate_observations(sample_raw), params)


def _same_weights(a, b) -> None:
    sa, sb = a.net.state_dict(), b.net.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_worker_processes_train_exactly_what_the_flow_process_trains(prepared, monkeypatch):
    params, prep = prepared
    cfgs = [params.train.model_copy(update={"seed": params.train.seed + k}) for k in range(2)]
    monkeypatch.setenv("NIGHTCAST_TRAIN_WORKERS", "1")
    here = train_seeds(prep.index, params.model, cfgs, progress=False)
    monkeypatch.setenv("NIGHTCAST_TRAIN_WORKERS", "2")
    calls = []
    real = seeds_mod._in_workers
    monkeypatch.setattr(seeds_mod, "_in_workers", lambda *a: calls.append(a[1]) or real(*a))
    there = train_seeds(prep.index, params.model, cfgs, progress=False)
    assert calls == [2]  # it did run in 2 worker processes
    for a, b in zip(here, there):
        _same_weights(a, b)
        assert a.steps == b.steps and a.history.equals(b.history) and a.best_val_loss == b.best_val_loss
    first = [next(iter(t.net.parameters())) for t in here]
    assert not torch.equal(*first)  # two seeds, two networks

    steps = [best_steps(t) for t in here]
    args = [t.network_args for t in here]
    monkeypatch.setenv("NIGHTCAST_TRAIN_WORKERS", "1")
    refit_here = refit_seeds_models(prep.index, args, cfgs, steps, progress=False)
    monkeypatch.setenv("NIGHTCAST_TRAIN_WORKERS", "2")
    refit_there = refit_seeds_models(prep.index, args, cfgs, steps, progress=False)
    assert calls == [2, 2]
    for a, b in zip(refit_here, refit_there):
        _same_weights(a, b)


def test_an_error_in_a_worker_reaches_the_flow(prepared, monkeypatch):
    params, prep = prepared
    monkeypatch.setenv("NIGHTCAST_TRAIN_WORKERS", "2")
    bad = params.train.model_copy(update={"max_steps": 5})
    index = prep.index
    empty = type(index)(**{**index.__dict__, "splits": {**index.splits, "val": np.zeros(0, np.int64)}})
    with pytest.raises(ValueError, match="no val windows"):
        train_seeds(empty, params.model, [bad, bad], progress=False)


def test_how_many_workers():
    cfg = TrainConfig()
    assert seed_workers(1, cfg) == 1  # one seed: nothing to share
    assert seed_workers(3, cfg.model_copy(update={"devices": 2})) == 1  # DDP starts its own ranks
    assert seed_workers(3, cfg, accelerator="gpu") == 1


def test_worker_count_setting(monkeypatch):
    monkeypatch.setattr(seeds_mod, "usable_cores", lambda: 2)
    monkeypatch.setenv("NIGHTCAST_TRAIN_WORKERS", "0")
    assert seed_workers(3, TrainConfig()) == 3  # all 3 share the 2 cores: none idles at the end
    assert seed_workers(8, TrainConfig()) == 4  # at most two per core
    assert seed_workers(3, TrainConfig(), work=seeds_mod.MIN_WORK) == 3
    assert seed_workers(3, TrainConfig(), work=seeds_mod.MIN_WORK - 1) == 1  # too little training to pay
    monkeypatch.setattr(seeds_mod, "usable_cores", lambda: 1)
    assert seed_workers(3, TrainConfig()) == 1
    monkeypatch.setenv("NIGHTCAST_TRAIN_WORKERS", "2")  # asked for: whatever the size
    assert seed_workers(3, TrainConfig(), work=10) == 2
    monkeypatch.setenv("NIGHTCAST_TRAIN_WORKERS", "1")
    monkeypatch.setattr(seeds_mod, "usable_cores", lambda: 16)
    assert seed_workers(3, TrainConfig()) == 1


def _die(*_args) -> None:  # a job whose worker process is killed (as by the out-of-memory killer)
    os._exit(9)


def test_a_worker_that_dies_is_named_with_what_to_do(prepared, monkeypatch):
    _, prep = prepared
    monkeypatch.setattr(seeds_mod, "_script_hint", lambda: ". <the script hint>")
    with pytest.raises(seeds_mod.SeedWorkerError, match="NIGHTCAST_TRAIN_WORKERS=1") as raised:
        seeds_mod._in_workers(prep.index, 2, _die, [(), ()])
    assert str(raised.value).endswith("<the script hint>")


def test_the_hint_names_an_unguarded_script_spawn_imports_again(monkeypatch):
    import sys
    import types

    script = types.ModuleType("__main__")
    script.__file__ = "/somewhere/train_nightly.py"  # started as `python train_nightly.py`
    monkeypatch.setitem(sys.modules, "__main__", script)
    hint = seeds_mod._script_hint()
    assert "If /somewhere/train_nightly.py calls nightcast at import time" in hint
    assert 'if __name__ == "__main__":' in hint
    script.__file__ = "/venv/bin/nightcast"  # the CLI's entry point is guarded: no hint
    assert seeds_mod._script_hint() == ""
    del script.__file__  # interactive: nothing is imported again
    assert seeds_mod._script_hint() == ""
