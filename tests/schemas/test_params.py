"""Parameter contracts: names that would become keys are refused before any work."""

import pydantic
import pytest

from nightcast.schemas.params import RetrainParams, ScoreParams


@pytest.mark.parametrize("bad", ["../lstm", "a/b", ".hidden", "x" * 65, "", "a b"])
@pytest.mark.parametrize("model", [RetrainParams, ScoreParams])
def test_a_model_name_that_is_not_a_plain_key_part_is_refused(model, bad):
    with pytest.raises(pydantic.ValidationError, match="model_name"):
        model(model_name=bad)


@pytest.mark.parametrize("good", ["lstm", "lstm_", "LSTM-2", "a.b", "x" * 64])
def test_plain_names_pass(good):
    assert RetrainParams(model_name=good).model_name == good


def test_the_optuna_storage_password_never_prints_with_the_settings(monkeypatch):
    from nightcast.schemas.params import Settings

    url = "postgresql+psycopg2://nightcast:s3cr3t-pw@db:5432/optuna"
    monkeypatch.setenv("NIGHTCAST_OPTUNA_STORAGE", url)
    settings = Settings()
    assert "s3cr3t-pw" not in repr(settings) and "s3cr3t-pw" not in str(settings)
    assert "s3cr3t-pw" not in settings.model_dump_json()
    assert settings.optuna_storage.get_secret_value() == url  # what the tune flow opens
