"""Runs started through the Prefect API may only use the worker's configured locations; secrets never travel
as flow parameters."""

from __future__ import annotations

import os

import pytest

import nightcast.flows.runtime as runtime
from nightcast.schemas.params import SAMPLE_DATA, RetrainParams, Settings, TuneParams


@pytest.fixture()
def worker(tmp_path, monkeypatch):
    store, data = tmp_path / "store", tmp_path / "in" / "obs.csv"
    data.parent.mkdir()
    data.write_text("series_id,timestamp,target\n")
    monkeypatch.setenv("NIGHTCAST_STORE", str(store))
    monkeypatch.setenv("NIGHTCAST_DATA", str(data))
    monkeypatch.delenv("NIGHTCAST_ALLOWED_ROOTS", raising=False)
    return tmp_path


@pytest.mark.parametrize("url, ok", [
    ("{root}/store", True), ("{root}/store/sub", True), ("{root}/in/other.csv", True), (SAMPLE_DATA, True),
    ("{root}/store/../elsewhere", False), ("{root}/store-evil", False), ("/etc/passwd", False),
    ("s3://bucket/x", False), ("{root}", False),
])
def test_locations_outside_the_configured_ones_are_refused(worker, url, ok):
    settings = Settings()
    url = url.format(root=worker)
    if ok:
        settings.check_location(url, "data")
    else:
        with pytest.raises(PermissionError, match="outside the locations this worker may use"):
            settings.check_location(url, "data")


def test_a_symlink_cannot_escape(worker, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (worker / "store").mkdir()
    os.symlink(outside, worker / "store" / "escape")
    with pytest.raises(PermissionError):
        Settings().check_location(str(worker / "store" / "escape" / "x.csv"), "data")


def test_allowed_roots_extend_the_list(worker, monkeypatch):
    monkeypatch.setenv("NIGHTCAST_ALLOWED_ROOTS", '["s3://lake/forecasting", "/srv/data"]')
    settings = Settings()
    settings.check_location("s3://lake/forecasting/2026/obs.parquet", "data")
    settings.check_location("/srv/data/x.csv", "data")
    for bad in ("s3://lake/forecasting-other/x", "s3://lake/forecasting/../secrets/x", "s3://other/forecasting"):
        with pytest.raises(PermissionError):
            settings.check_location(bad, "data")


def test_start_run_checks_only_runs_from_a_deployment(worker, monkeypatch):
    monkeypatch.setattr(runtime, "from_deployment", lambda: True)
    with pytest.raises(PermissionError, match="store '/tmp/evil'"):
        runtime.start_run("/tmp/evil")
    with pytest.raises(PermissionError, match="data '/etc/passwd'"):
        runtime.start_run(None, "/etc/passwd")
    runtime.start_run(None, None)  # the worker's own settings
    monkeypatch.setattr(runtime, "from_deployment", lambda: False)
    runtime.start_run(str(worker / "elsewhere"), "/etc/passwd")  # a direct call runs with its caller's rights


def test_no_flow_parameter_carries_a_storage_url_or_credentials():
    assert "storage" not in TuneParams.model_fields  # the Optuna URL: a setting or a Prefect Secret block
    with pytest.raises(ValueError):
        TuneParams(storage="postgresql://user:secret@db/optuna")
    with pytest.raises(ValueError, match="storage_secret"):
        TuneParams(storage_secret="postgresql://user:secret@db/optuna")
    names = set(RetrainParams.model_fields) | set(TuneParams.model_fields)
    assert not {n for n in names if any(w in n for w in ("password", "secret_key", "access_key", "token"))}
