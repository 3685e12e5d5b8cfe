"""tune_flow end to end: trials as Prefect tasks, outputs in the store, retrain picks the best up."""

import json

import optuna
import pytest

import nightcast.tasks.forecast.tune
from nightcast.flows.retrain import retrain_flow
from nightcast.flows.tune import tune_flow
from nightcast.schemas.params import Dimension, ModelConfig, TrainConfig, TuneParams
from nightcast.tasks.ops.registry import load_bundle
from nightcast.tasks.ops.storage import open_store
from tests.conftest import fast_params

pytestmark = pytest.mark.usefixtures("prefect_harness")


class PruneFrom(optuna.pruners.BasePruner):
    """A pruner with a known outcome: trials numbered ``first`` or later stop at their first report."""

    def __init__(self, first: int) -> None:
        self.first = first

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number >= self.first


@pytest.fixture(scope="module")
def known_pruner():
    """Trials 0 and 1 (the first batch of two) complete; 2 and 3 are pruned after their first epoch."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nightcast.tasks.forecast.tune, "make_pruner", lambda params: PruneFrom(2))
        yield


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, sample_raw, prefect_harness, known_pruner):
    root = tmp_path_factory.mktemp("tune")
    csv = root / "in.csv"
    sample_raw.write_csv(csv)
    base = fast_params(str(csv), train=TrainConfig(max_epochs=6, patience=3, batch_size=64, early_stopping=True),
                       model=ModelConfig(hidden_size=8, num_layers=1, dropout=0.0))
    params = TuneParams(base=base, sampler="random", n_trials=4, folds=2, fold_fraction=0.05, parallel=2,
                        space={"model.hidden_size": Dimension(choices=[8, 32]),
                               "train.learning_rate": Dimension(low=1e-3, high=1e-2, log=True),
                               "model.pooling": Dimension(choices=["last", "attention"])})
    store = str(root / "store")
    with pytest.MonkeyPatch.context() as mp:  # the study's URL is a setting, never a flow parameter
        mp.setenv("NIGHTCAST_OPTUNA_STORAGE", f"sqlite:///{root / 'optuna.db'}")
        yield params, store, tune_flow(params, store=store)


def test_tune_runs_the_trials_and_saves_the_best_configuration(tuned):
    params, store, out = tuned
    by_number = {t["number"]: t for t in out["trials"]}
    assert {n: t["state"] for n, t in by_number.items()} == {0: "COMPLETE", 1: "COMPLETE", 2: "PRUNED", 3: "PRUNED"}
    assert out["best"]["trials"] == {"COMPLETE": 2, "PRUNED": 2}
    assert out["table"].sort("number")["state"].to_list() == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]
    for n in (2, 3):  # stopped by Lightning's pruning callback at the first epoch's validation
        assert by_number[n]["detail"] == "Trial was pruned at epoch 0."
    assert out["best"]["best_trial"] in (0, 1)  # only complete trials compete
    st = open_store(store)
    best = json.loads(st.read_bytes("models/lstm/tuning/best.json"))
    assert best["study_name"] == out["study_name"] == f"nightcast-lstm-h6-{best['fingerprint'][:12]}"
    assert best["sampler"] == "random" and best["metric"] == "mase" and best["objective"] == "served"
    assert best["best_value"] == best["served"] != best["network"]  # judged by what would be served
    assert set(best["best_params"]) == set(params.space) and len(best["fold_scores"]) == 2
    assert best["best_value"] == min(t["value"] for t in out["trials"] if t["state"] == "COMPLETE")
    keys = set(st.list("models/lstm/tuning/"))
    assert {"models/lstm/tuning/trials.csv", "models/lstm/tuning/optimization_history.png"} <= keys
    assert st.read_bytes("models/lstm/tuning/optimization_history.png")[:8] == b"\x89PNG\r\n\x1a\n"


def test_retrain_uses_the_tuned_configuration_and_carries_the_search(tuned):
    params, store, out = tuned
    best = out["best"]["best_params"]
    assert (out["best"]["horizon"], out["best"]["frequency"]) == (params.base.window.horizon, None)
    # the base gives the model section but not its tuned fields: those come from the study
    base = params.base.model_copy(update={"model": ModelConfig(num_layers=1, dropout=0.0)})
    run = retrain_flow(base, store=store)
    bundle = load_bundle(open_store(store), "lstm", run["version"])
    used = bundle.config["params"]
    assert used["model"]["hidden_size"] == best["model.hidden_size"]
    assert used["model"]["pooling"] == best["model.pooling"]
    assert used["train"]["learning_rate"] == pytest.approx(best["train.learning_rate"])
    assert bundle.manifest["tuning"]["study_name"] == out["study_name"] and bundle.manifest["tuning"]["kept"] == {}
    # a value the run was given wins over the tuned one, and the manifest says so
    given = base.model_copy(update={"model": ModelConfig(hidden_size=12, num_layers=1, dropout=0.0)})
    mine = load_bundle(open_store(store), "lstm", retrain_flow(given, store=store)["version"])
    assert mine.config["params"]["model"]["hidden_size"] == 12
    assert mine.manifest["tuning"]["kept"] == {"model.hidden_size": best["model.hidden_size"]}
    # tuned for another horizon: not used at all
    other = load_bundle(open_store(store), "lstm", retrain_flow(
        base.model_copy(update={"window": params.base.window.model_copy(update={"horizon": 4})}), store=store)["version"])
    assert other.manifest["tuning"] is None and other.config["params"]["model"]["hidden_size"] == 64
    assert "tuning/optimization_history.png" in bundle.manifest["files"]  # checksummed with the rest
    # use_tuned=false ignores it
    plain = retrain_flow(params.base.model_copy(update={"use_tuned": False}), store=store)
    plain_cfg = load_bundle(open_store(store), "lstm", plain["version"])
    assert plain_cfg.config["params"]["model"]["hidden_size"] == params.base.model.hidden_size
    assert plain_cfg.manifest["tuning"] is None


def test_a_grid_study_stops_when_the_grid_is_exhausted(tmp_path, tuned):
    params, store, _ = tuned
    grid = params.model_copy(update={"sampler": "grid", "n_trials": 5, "parallel": 1, "pruning": False,
                                     "study_name": "grid", "space": {"model.hidden_size": Dimension(choices=[8, 16])}})
    first = tune_flow(grid, store=str(tmp_path / "s"))
    assert sorted(t["params"]["model.hidden_size"] for t in first["trials"]) == [8, 16]
    again = tune_flow(grid, store=str(tmp_path / "s"))
    assert again["trials"] == [] and again["best"]["trials"] == {"COMPLETE": 2}


def test_a_study_is_never_continued_on_other_data(tmp_path, tuned, sample_raw):
    """Next week's data: by default a new study (trial 0 the defaults again); naming last week's study fails
    before any trial runs, naming the fingerprints."""
    import polars as pl

    from nightcast.tasks.forecast.tune import TuneError

    params, store, out = tuned
    csv = tmp_path / "next-week.csv"
    sample_raw.filter(pl.col("timestamp") < pl.col("timestamp").max().over("series_id")).write_csv(csv)
    nxt = params.model_copy(update={"base": params.base.model_copy(update={"data": str(csv)}), "n_trials": 1,
                                    "parallel": 1, "study_name": out["study_name"]})
    with pytest.MonkeyPatch.context() as mp:  # the storage that holds last week's study
        mp.setenv("NIGHTCAST_OPTUNA_STORAGE", out["best"]["storage"])
        with pytest.raises(TuneError, match="fingerprint"):
            tune_flow(nxt, store=str(tmp_path / "s"))
        fresh = tune_flow(nxt.model_copy(update={"study_name": None}), store=str(tmp_path / "s"))
    assert fresh["study_name"] != out["study_name"] and fresh["study_name"].startswith("nightcast-lstm-h6-")
    assert [t["number"] for t in fresh["trials"]] == [0]


def test_pruned_trials_show_no_objective_value(tuned):
    """A pruned trial's Optuna value is a validation loss: it must not sit in the MASE column."""
    _, _, out = tuned
    assert [t["value"] is None for t in sorted(out["trials"], key=lambda t: t["number"])] == [False, False, True, True]
    table = out["table"].sort("number")
    assert table["value"].is_null().to_list() == [False, False, True, True]
