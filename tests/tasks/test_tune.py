"""Tuning: rolling-origin folds, the search space, the three samplers, pruning, failed trials."""

import optuna
import polars as pl
import pytest
from pydantic import ValidationError

import nightcast.tasks.forecast.tune as tune
from nightcast.schemas.params import Dimension, ModelConfig, TrainConfig, TuneParams, WindowConfig
from nightcast.tasks.data.clean import decide_calendar, regularize
from nightcast.tasks.data.prepare import prepare_training
from nightcast.tasks.forecast.tune import (TuneError, apply_overrides, grid_size, open_study, rolling_origin_folds, run_trial,
                        trials_table)
from nightcast.tasks.data.validate import ValidationResult, validate_observations
from nightcast.tasks.data.window import split_times
from tests.conftest import fast_params


@pytest.fixture(scope="module")
def checked(sample_raw):
    return validate_observations(sample_raw)


def _tiny(**kw) -> TuneParams:
    base = fast_params("-", train=TrainConfig(max_epochs=2, patience=2, batch_size=128),
                       model=ModelConfig(hidden_size=8, num_layers=1, dropout=0.0))
    args = dict(base=base, n_trials=2, folds=1, fold_fraction=0.08, seed=1,
                space={"model.hidden_size": Dimension(choices=[8, 16])})
    args.update(kw)
    return TuneParams(**args)


def _storage(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


def test_folds_expand_and_stay_before_the_final_test_span(checked):
    base = fast_params("-")
    folds = rolling_origin_folds(checked, base, 3, 0.08)
    assert len(folds) == 3
    for f in folds:
        assert f.train_end < f.val_end < f.end
    assert folds[0].train_end < folds[1].train_end < folds[2].train_end  # expanding window
    assert folds[0].end < folds[1].end < folds[2].end
    placed, _ = regularize(checked.valid, decide_calendar(checked.valid, base.clean))
    _, final_val_end = split_times(placed, base.window.val_fraction, base.window.test_fraction, base.window.horizon)
    assert folds[-1].end == final_val_end  # the final test span is never touched
    assert folds[1].train_end == folds[0].val_end  # blocks of equal length, back to back


def test_each_fold_fits_its_scaler_on_its_own_training_span(checked):
    base = fast_params("-")
    folds = rolling_origin_folds(checked, base, 2, 0.08)
    centers = []
    for f in folds:
        upto = ValidationResult(checked.valid.filter(pl.col("timestamp") <= f.end), checked.quarantine,
                                checked.n_rows, checked.exact_duplicates, checked.categorical, checked.numeric)
        prepared = prepare_training(upto, base, cuts=(f.train_end, f.val_end))
        train = prepared.clean.filter(pl.col("timestamp") <= f.train_end, pl.col("series_id") == "site-1",
                                      pl.col("observed"))
        center = prepared.state.target_stats["site-1"][0]
        assert center == pytest.approx(train["target"].mean())  # the training span, and only it
        assert len(prepared.index.splits["test"]) > 0
        centers.append(center)
    assert centers[0] != centers[1]


def test_too_many_folds_is_a_clear_error(checked):
    with pytest.raises(TuneError, match="too few for 20 folds"):
        rolling_origin_folds(checked, fast_params("-"), 20, 0.08)


@pytest.mark.parametrize("space, rule", [
    ({"model.hiden_size": {"choices": [1]}}, "unknown search-space field"),
    ({"data": {"choices": ["x"]}}, "unknown search-space field"),
    ({"train.learning_rate": {"low": 1e-2, "high": 1e-3}}, "low < high"),
    ({"train.learning_rate": {"low": 0.0, "high": 1e-3, "log": True}}, "low > 0"),
    ({"model.cell": {"choices": []}}, "non-empty choices"),
])
def test_bad_search_spaces_are_rejected(space, rule):
    with pytest.raises(ValidationError, match=rule):
        TuneParams(space=space)


def test_default_space_covers_the_issue_list():
    assert set(TuneParams().space) == {
        "model.num_layers", "model.hidden_size", "model.dropout", "model.cell", "model.bidirectional",
        "model.pooling", "model.skip", "train.learning_rate", "train.batch_size", "train.weight_decay", "train.l1"}


def test_the_first_trial_is_the_default_configuration(tmp_path, checked):
    params = _tiny(space={"model.hidden_size": Dimension(choices=[32, 16, 8]),  # base: 8, listed last
                          "train.learning_rate": Dimension(low=1e-4, high=1e-2, log=True)})  # base: 3e-3
    folds = rolling_origin_folds(checked, params.base, 1, 0.08)
    run_trial(params, params.base, checked, folds, _storage(tmp_path), "d")
    first = open_study(params, _storage(tmp_path), "d").trials[0]
    base = params.base.model_dump()
    for name, value in first.params.items():
        node = base
        for part in name.split("."):
            node = node[part]
        assert value == node, name
    assert set(first.params) == {"model.hidden_size", "train.learning_rate"}


def test_overrides_are_validated():
    base = fast_params("-")
    run = apply_overrides(base, {"model.pooling": "attention", "window.lookback": 12, "train.l1": 1e-5})
    assert (run.model.pooling, run.window.lookback, run.train.l1) == ("attention", 12, 1e-5)
    assert base.model.pooling == "last"  # a copy
    with pytest.raises(ValidationError):
        apply_overrides(base, {"model.dropout": 2.0})


def test_grid_sampler_visits_each_point_once(tmp_path, checked):
    params = _tiny(sampler="grid", pruning=False, space={"model.hidden_size": Dimension(choices=[8, 16]),
                                          "model.cell": Dimension(choices=["lstm", "gru"])})
    assert grid_size(params) == 4
    folds = rolling_origin_folds(checked, params.base, 1, 0.08)
    results = [run_trial(params, params.base, checked, folds, _storage(tmp_path), "g") for _ in range(4)]
    assert [r["state"] for r in results] == ["COMPLETE"] * 4
    seen = {(r["params"]["model.hidden_size"], r["params"]["model.cell"]) for r in results}
    assert seen == {(8, "lstm"), (8, "gru"), (16, "lstm"), (16, "gru")}


@pytest.mark.parametrize("sampler, cls", [("random", optuna.samplers.RandomSampler),
                                          ("tpe", optuna.samplers.TPESampler)])
def test_random_and_tpe_samplers_run_complete_trials(tmp_path, checked, sampler, cls):
    params = _tiny(sampler=sampler, space={"train.learning_rate": Dimension(low=1e-3, high=1e-2, log=True),
                                           "model.pooling": Dimension(choices=["last", "attention"])})
    assert isinstance(tune.make_sampler(params, 0), cls)
    folds = rolling_origin_folds(checked, params.base, 2, 0.05)
    results = [run_trial(params, params.base, checked, folds, _storage(tmp_path), "s") for _ in range(2)]
    assert all(r["state"] == "COMPLETE" and r["value"] > 0 for r in results)
    assert all(1e-3 <= r["params"]["train.learning_rate"] <= 1e-2 for r in results)
    study = open_study(params, _storage(tmp_path), "s")
    assert len(study.trials[0].user_attrs["fold_scores"]) == 2  # the objective is the mean over the folds
    table = trials_table(study)
    assert table.height == 2 and "param:train.learning_rate" in table.columns


def test_pruning_stops_a_trial_from_lightnings_validation_loss(tmp_path, checked, monkeypatch):
    monkeypatch.setattr(tune, "make_pruner", lambda params: optuna.pruners.ThresholdPruner(upper=-1.0))
    params = _tiny(base=fast_params("-", train=TrainConfig(max_epochs=10, patience=10, batch_size=128)))
    folds = rolling_origin_folds(checked, params.base, 1, 0.08)
    result = run_trial(params, params.base, checked, folds, _storage(tmp_path), "p")
    assert result["state"] == "PRUNED"
    trial = open_study(params, _storage(tmp_path), "p").trials[0]
    assert list(trial.intermediate_values) == [0]  # val_loss of epoch 0, then training stopped


def test_a_configuration_that_cannot_train_is_a_failed_trial(tmp_path, checked):
    params = _tiny(space={"window.horizon": Dimension(choices=[5000])})
    folds = rolling_origin_folds(checked, params.base, 1, 0.08)
    result = run_trial(params, params.base, checked, folds, _storage(tmp_path), "f")
    assert result["state"] == "FAIL" and "WindowError" in result["detail"]
    trial = open_study(params, _storage(tmp_path), "f").trials[0]
    assert "WindowError" in trial.user_attrs["error"]


def test_list_valued_choices_work_with_the_grid_sampler(tmp_path, checked):
    params = _tiny(sampler="grid", pruning=False, space={"features.seasonal_lags": Dimension(choices=[[], [3]])})
    folds = rolling_origin_folds(checked, params.base, 1, 0.08)
    results = [run_trial(params, params.base, checked, folds, _storage(tmp_path), "l") for _ in range(2)]
    assert [r["state"] for r in results] == ["COMPLETE", "COMPLETE"]
    assert sorted(r["params"]["features.seasonal_lags"] for r in results) == [[], [3]]
    best = tune.summarize(open_study(params, _storage(tmp_path), "l"), params, _storage(tmp_path), folds)
    assert best["best_params"]["features.seasonal_lags"] in ([], [3])  # decoded back to a list



def test_tuned_values_never_replace_what_the_run_was_given():
    from nightcast.schemas.params import ModelConfig, RetrainParams, TrainConfig
    from nightcast.tasks.forecast.tune import tuned_for

    tuned = {"best_params": {"model.hidden_size": 128, "train.learning_rate": 0.005, "model.dropout": 0.2},
             "horizon": 12, "frequency": None}
    given = RetrainParams(model=ModelConfig(hidden_size=16), train=TrainConfig(max_steps=50))
    applied, kept, refused = tuned_for(given, tuned)
    assert refused is None and kept == {"model.hidden_size": 128}
    assert applied == {"train.learning_rate": 0.005, "model.dropout": 0.2}
    applied, kept, _ = tuned_for(RetrainParams(), tuned)  # nothing given: every tuned value applies
    assert kept == {} and applied == tuned["best_params"]
    # the CLI passes only the flags typed: --hidden-size kept, the rest tuned
    from nightcast.flows.cli import _retrain_params, build_parser

    args = build_parser().parse_args(["retrain", "--data", "x.csv", "--hidden-size", "16"])
    assert tuned_for(_retrain_params(args, args.data), tuned)[1] == {"model.hidden_size": 128}
    args = build_parser().parse_args(["retrain", "--data", "x.csv"])
    assert tuned_for(_retrain_params(args, args.data), tuned)[1] == {}
    # tuned for another horizon or frequency: refused whole, with the reason
    _, _, refused = tuned_for(RetrainParams(window=WindowConfig(horizon=24)), tuned)
    assert refused == "it was tuned for horizon 12, this run has horizon 24"
    _, _, refused = tuned_for(RetrainParams(), {**tuned, "frequency": "1d"} | {"horizon": 12})
    assert refused is None  # this run infers its frequency: nothing to compare


def test_a_fold_is_judged_by_the_combination_it_would_serve(checked):
    """The default objective is the served combination (weights from the fold's validation windows), not the
    network alone; both are measured on the same evaluation windows, with the same trained network."""
    import torch

    params = _tiny()
    fold = rolling_origin_folds(checked, params.base, 1, 0.08)[0]
    torch.manual_seed(0)
    served = tune.score_fold(checked, params.base, fold)
    torch.manual_seed(0)
    alone = tune.score_fold(checked, params.base, fold, objective="network")
    assert served["model"] == served["served"] and alone["model"] == alone["network"]
    assert served["network"] == pytest.approx(alone["network"])  # the same network (seeded) both times
    assert served["served"] != pytest.approx(served["network"])  # the combination is its own forecast
    assert served["served"] < served["seasonal_naive"]


def test_a_study_holds_trials_of_one_model_horizon_data_and_objective(tmp_path, checked):
    from nightcast.tasks.data.prepare import fingerprint

    params = _tiny()
    scope = tune.study_scope(params.base, fingerprint(checked.valid), "served")
    name = tune.default_study_name(scope)
    assert name == f"nightcast-lstm-h{params.base.window.horizon}-{scope['fingerprint'][:12]}"
    study = open_study(params, _storage(tmp_path), name)
    tune.claim_study(study, scope)
    assert open_study(params, _storage(tmp_path), name).user_attrs["scope"] == scope
    tune.claim_study(open_study(params, _storage(tmp_path), name), scope)  # the same terms: fine
    newer = {**scope, "fingerprint": "f" * 64}
    assert tune.default_study_name(newer) != name  # new data: a new study by default
    with pytest.raises(TuneError, match=r"fingerprint .* in the study, f{12} in this run"):
        tune.claim_study(open_study(params, _storage(tmp_path), name), newer)
    with pytest.raises(TuneError, match="objective served in the study, network in this run"):
        tune.claim_study(open_study(params, _storage(tmp_path), name), {**scope, "objective": "network"})
    # a study from before scopes, with trials: its trials cannot be placed, so it is refused too
    old = open_study(params, _storage(tmp_path), "old")
    old.enqueue_trial({"model.hidden_size": 8})
    with pytest.raises(TuneError, match="records no data fingerprint"):
        tune.claim_study(open_study(params, _storage(tmp_path), "old"), scope)


def test_a_study_whose_storage_another_worker_is_creating_is_opened_again(tmp_path, monkeypatch):
    """Workers starting together on a fresh database race to create Optuna's schema; the loser's
    duplicate-type error (optuna #1092) is retried and the study opens. Any other database error is not."""
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError

    monkeypatch.setattr("time.sleep", lambda s: None)  # the retry's wait
    real, calls = optuna.create_study, []

    def racing(**kw):
        calls.append(kw["study_name"])
        if len(calls) == 1:
            raise IntegrityError("CREATE TYPE studydirection", {}, Exception(
                'duplicate key value violates unique constraint "pg_type_typname_nsp_index"'))
        return real(**kw)

    monkeypatch.setattr(optuna, "create_study", racing)
    params = TuneParams(n_trials=1)
    assert open_study(params, _storage(tmp_path), "race").study_name == "race" and calls == ["race", "race"]

    def refused(**kw):
        raise OperationalError("connect", {}, Exception("password authentication failed"))

    monkeypatch.setattr(optuna, "create_study", refused)
    with pytest.raises(OperationalError, match="password"):
        open_study(params, _storage(tmp_path), "other")
