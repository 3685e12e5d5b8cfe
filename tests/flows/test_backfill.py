"""Backfill: one partition per date, no look-ahead, idempotent, bounded, never mixed."""

import datetime as dt
import io
import threading

import polars as pl
import pytest
from pydantic import ValidationError

from nightcast.flows.backfill import backfill_flow
from nightcast.tasks.serving.backfill import BackfillError, plan_versions
from nightcast.flows.retrain import retrain_flow
from nightcast.schemas.frames import Forecasts
from nightcast.schemas.params import BackfillParams, TrainConfig
from nightcast.tasks.data.ingest import load_observations
from nightcast.tasks.ops.registry import Decision, RegistryError, load_bundle, read_champion, set_champion
from nightcast.tasks.serving.score import forecast_from_bundle, partition_key
from nightcast.tasks.ops.storage import LocalStore, open_store
from nightcast.tasks.data.validate import validate_observations
from tests.conftest import fast_params

pytestmark = pytest.mark.usefixtures("prefect_harness")

DAYS = [dt.date(2026, 9, 10), dt.date(2026, 9, 11), dt.date(2026, 9, 12)]
"""Inside the sample's history (to 2026-09-14): the registry's models, trained today on all of it, have seen
these dates' future, so backfills of them say ``allow_look_ahead`` (or name a version) as a user must."""


@pytest.fixture(scope="module")
def registry(tmp_path_factory, sample_raw, prefect_harness):
    """A store with two bundle versions of the same model (different seeds)."""
    root = tmp_path_factory.mktemp("bf")
    csv = root / "in.csv"
    sample_raw.write_csv(csv)
    store = str(root / "store")
    first = retrain_flow(fast_params(str(csv)), store=store)
    second = retrain_flow(fast_params(str(csv), train=TrainConfig(max_epochs=15, patience=4, batch_size=64, seed=7, early_stopping=True)),
                          store=store)
    return store, str(csv), first["version"], second["version"]


def _read(store, day, name="lstm") -> pl.DataFrame:
    st = open_store(store)
    keys = st.list(partition_key(name, day) + "/")
    assert keys == [f"{partition_key(name, day)}/forecasts.parquet"]  # one whole object, nothing else
    return pl.read_parquet(io.BytesIO(st.read_bytes(keys[0])))


def _fresh_store(tmp_path, registry) -> str:
    """A copy of the registry (models only), so each test starts with no forecasts."""
    src, dst = LocalStore(registry[0]), LocalStore(tmp_path / "store")
    for key in src.list("models/"):
        dst.write_bytes(key, src.read_bytes(key))
    return dst.url


def test_backfill_writes_one_valid_partition_per_date(tmp_path, registry):
    store = _fresh_store(tmp_path, registry)
    out = backfill_flow(start=DAYS[0], end=DAYS[-1], data=registry[1], store=store, allow_look_ahead=True)
    assert (out["done"], out["skipped"], out["failed"]) == (3, 0, 0)
    champion = read_champion(open_store(store), "lstm")["version"]
    for day in DAYS:
        frame = _read(store, day)
        Forecasts.validate(frame)
        assert frame["as_of"].unique().to_list() == [day]
        assert frame["model_version"].unique().to_list() == [champion]
        # forecasts continue each series from its last observation on as_of (at most max_gap=3 hours stale)
        assert frame["timestamp"].min() > dt.datetime.combine(day, dt.time(20))
    assert "done" in out["summary"] and str(DAYS[1]) in out["summary"]


def test_each_date_sees_only_data_up_to_that_date(tmp_path, registry, sample_raw):
    full = _fresh_store(tmp_path / "a", registry)
    backfill_flow(start=DAYS[0], end=DAYS[0], data=registry[1], store=full, allow_look_ahead=True)
    # The same date from an input that ends on that date: identical forecasts.
    cut = tmp_path / "cut.csv"
    end = dt.datetime.combine(DAYS[0] + dt.timedelta(days=1), dt.time())
    sample_raw.filter(pl.col("timestamp").str.to_datetime(strict=False) < end).write_csv(cut)
    truncated = _fresh_store(tmp_path / "b", registry)
    backfill_flow(start=DAYS[0], end=DAYS[0], data=str(cut), store=truncated, allow_look_ahead=True)
    assert _read(full, DAYS[0]).equals(_read(truncated, DAYS[0]))


def test_rerun_skips_done_dates_and_finishes_the_rest(tmp_path, registry):
    store = _fresh_store(tmp_path, registry)
    backfill_flow(start=DAYS[0], end=DAYS[-1], data=registry[1], store=store, allow_look_ahead=True)
    st = open_store(store)
    before = {d: st.read_bytes(f"{partition_key('lstm', d)}/forecasts.parquet") for d in DAYS}
    st.delete(f"{partition_key('lstm', DAYS[1])}/forecasts.parquet")  # as if the run had crashed there
    out = backfill_flow(start=DAYS[0], end=DAYS[-1], data=registry[1], store=store, allow_look_ahead=True)
    assert (out["done"], out["skipped"]) == (1, 2)
    statuses = {r["as_of"]: r["status"] for r in out["table"]}
    assert statuses == {str(DAYS[0]): "skipped", str(DAYS[1]): "done", str(DAYS[2]): "skipped"}
    for d in (DAYS[0], DAYS[2]):  # untouched, byte for byte
        assert st.read_bytes(f"{partition_key('lstm', d)}/forecasts.parquet") == before[d]
    assert _read(store, DAYS[1]).equals(pl.read_parquet(io.BytesIO(before[DAYS[1]])))  # deterministic


def test_overwrite_rescores_with_the_model_given(tmp_path, registry):
    store = _fresh_store(tmp_path, registry)
    _, data, first, second = registry
    backfill_flow(start=DAYS[0], end=DAYS[1], data=data, store=store, model=first)
    out = backfill_flow(start=DAYS[0], end=DAYS[1], data=data, store=store, model=second, overwrite=True)
    assert out["done"] == 2
    for d in DAYS[:2]:
        assert _read(store, d)["model_version"].unique().to_list() == [second]


def test_dates_that_fail_are_reported_and_the_rest_are_written(tmp_path, registry):
    store = _fresh_store(tmp_path, registry)
    last = dt.date(2026, 9, 14)  # the sample's last date; the next two are unknown
    with pytest.raises(BackfillError) as exc:
        backfill_flow(start=last, end=last + dt.timedelta(days=2), data=registry[1], store=store, max_parallel=3)
    msg = str(exc.value)
    assert msg.startswith("2 of 3 dates failed")
    assert "2026-09-15: ScoreError: unknown as_of 2026-09-15" in msg and "2026-09-16" in msg
    _read(store, last)  # the good date is written
    assert not open_store(store).list(partition_key("lstm", last + dt.timedelta(days=1)))


def test_a_slow_date_does_not_hold_back_the_others(tmp_path, registry, monkeypatch):
    """Two at a time, four dates, the first one slow: the third and fourth start while it runs (a sliding
    window), rather than waiting for it as a batch would. The slow date waits for the last date to start,
    so it finishes only if that happens."""
    import nightcast.flows.backfill
    from nightcast.flows.runtime import step

    store = _fresh_store(tmp_path, registry)
    days = [dt.date(2026, 9, d) for d in (11, 12, 13, 14)]
    last_started = threading.Event()
    started: list[dt.date] = []
    real = nightcast.flows.backfill.forecast_and_write

    def forecast(store, bundle, observations, as_of, model_name, zone):  # noqa: ANN001 - the step's arguments
        started.append(as_of)
        if as_of == days[-1]:
            last_started.set()
        if as_of == days[0]:
            assert last_started.wait(60), "the other dates waited for the slow one"
        return real(store, bundle, observations, as_of, model_name, zone=zone)

    monkeypatch.setattr(nightcast.flows.backfill, "score_date", step(forecast, "score-date", io=True))
    out = backfill_flow(start=days[0], end=days[-1], data=registry[1], store=store, max_parallel=2,
                        model=registry[3])
    assert (out["done"], out["failed"]) == (4, 0), out["summary"]
    assert started[0] in days[:2] and set(started) == set(days)


class Lockstep:
    """Makes two runs meet at every store call on the partitions they share.

    A run's k-th call (write, list, delete) under a shared partition waits until the other run
    reaches its k-th call there, so the two runs replace each shared partition at the same time,
    step by step, instead of one finishing before the other starts.
    """

    def __init__(self, prefixes: list[str], timeout: float = 60.0) -> None:
        self.barriers = {p: threading.Barrier(2, timeout=timeout) for p in prefixes}
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def wrap(self, name: str, method):
        def call(store, key="", *args, **kwargs):
            barrier = next((b for p, b in self.barriers.items() if key.startswith(p)), None)
            if barrier is not None:
                barrier.wait()  # a broken barrier (the runs' calls did not pair up) fails the run
                with self.lock:
                    self.calls.append((name, key))
            return method(store, key, *args, **kwargs)

        return call


def _single_run(store, data, version, day) -> pl.DataFrame:
    """The forecasts one run of ``version`` computes for ``day``, straight from the plain functions."""
    bundle = load_bundle(open_store(store), "lstm", version)
    valid = validate_observations(load_observations(data), bundle.config["params"]["clean"]["max_bad_share"]).valid
    return forecast_from_bundle(bundle, valid, day)[0]


def test_overlapping_backfills_never_mix_a_partition(tmp_path, registry, monkeypatch):
    store = _fresh_store(tmp_path, registry)
    _, data, first, second = registry
    later = DAYS[2] + dt.timedelta(days=1)
    runs = {first: DAYS, second: [DAYS[1], DAYS[2], later]}  # they share DAYS[1] and DAYS[2]
    shared = [DAYS[1], DAYS[2]]
    lockstep = Lockstep([partition_key("lstm", d) + "/" for d in shared])
    errors, outs = [], {}

    def run(version):
        try:
            days = runs[version]
            outs[version] = backfill_flow(start=days[0], end=days[-1], data=data, store=store, model=version,
                                          overwrite=True, max_parallel=3)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    with monkeypatch.context() as mp:
        for name in ("write_bytes", "list", "delete"):
            mp.setattr(LocalStore, name, lockstep.wrap(name, getattr(LocalStore, name)))
        threads = [threading.Thread(target=run, args=(v,)) for v in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    for version, days in runs.items():
        assert [(r["as_of"], r["status"], r["model_version"]) for r in outs[version]["table"]] == [
            (str(d), "done", version) for d in days]
    for day in shared:  # both runs really replaced it, at the same time
        assert [n for n, k in lockstep.calls if k.startswith(partition_key("lstm", day))].count("write_bytes") == 2
    expected = {v: {d: _single_run(store, data, v, d) for d in days} for v, days in runs.items()}
    for day in DAYS + [later]:
        frame = _read(store, day)  # exactly one object
        Forecasts.validate(frame)
        versions = frame["model_version"].unique().to_list()
        assert len(versions) == 1  # never a mix of the two runs' rows
        if day not in shared:  # written by one run only
            assert versions == [first if day == DAYS[0] else second]
        # and whole: exactly the rows one run of that version writes, nothing missing, nothing extra
        assert frame.equals(expected[versions[0]][day])


def test_champion_of_each_date_from_the_promotion_history(tmp_path):
    st = open_store(str(tmp_path / "s"))
    promoted = Decision(True, "test")
    set_champion(st, "m", "v-old", promoted, {}, now=dt.datetime(2026, 9, 5, 12, tzinfo=dt.timezone.utc))
    set_champion(st, "m", "v-new", promoted, {}, now=dt.datetime(2026, 9, 8, 0, 30, tzinfo=dt.timezone.utc))
    params = BackfillParams(start=dt.date(2026, 9, 3), end=dt.date(2026, 9, 9), model_name="m")
    plan = plan_versions(st, params)
    assert plan[dt.date(2026, 9, 3)] == "v-new"  # before any recorded promotion: the current champion
    assert plan[dt.date(2026, 9, 5)] == "v-old"  # promoted during that day: in force at its end
    assert plan[dt.date(2026, 9, 7)] == "v-old"
    assert plan[dt.date(2026, 9, 8)] == "v-new"
    assert set(plan_versions(st, params.model_copy(update={"model": "v-x"})).values()) == {"v-x"}


def test_dates_before_the_champions_data_end_are_refused(tmp_path, registry):
    """No look-ahead by default: the current champion was fitted on data to 2026-09-14 23:00, so scoring
    2026-09-10..12 with it would use their future. Refused before anything is written; the last date of its
    data is fine; a named version or allow_look_ahead is the user's explicit choice."""
    from nightcast.tasks.serving.backfill import LookAheadError

    store = _fresh_store(tmp_path, registry)
    with pytest.raises(LookAheadError, match=r"3 date\(s\) \(2026-09-10\.\.2026-09-12\) come before the end of the "
                                             r"data .* data to 2026-09-14 23:00:00.*--allow-look-ahead"):
        backfill_flow(start=DAYS[0], end=DAYS[-1], data=registry[1], store=store)
    assert open_store(store).list("forecasts/") == []
    last = dt.date(2026, 9, 14)
    assert backfill_flow(start=last, end=last, data=registry[1], store=store)["done"] == 1
    named = backfill_flow(start=DAYS[0], end=DAYS[0], data=registry[1], store=store, model=registry[2])
    assert named["done"] == 1 and named["table"][0]["model_version"] == registry[2]


def test_no_champion_is_a_clear_error(tmp_path):
    with pytest.raises(RegistryError, match="has no champion"):
        plan_versions(open_store(str(tmp_path)), BackfillParams(start=DAYS[0], end=DAYS[0]))


@pytest.mark.parametrize("bad, rule", [
    (dict(start=DAYS[1], end=DAYS[0]), "is before start"),
    (dict(start=DAYS[0], end=DAYS[0], max_parallel=0), "greater than or equal to 1"),
    (dict(start=DAYS[0], end=DAYS[0], model="../etc"), "should match pattern"),
    (dict(start="2026-13-01", end=DAYS[0]), "month value is outside expected range"),
])
def test_bad_backfill_parameters_are_rejected(bad, rule):
    with pytest.raises(ValidationError, match=rule):
        BackfillParams(**bad)


def test_runs_publish_artifacts(tmp_path, registry):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    store = _fresh_store(tmp_path, registry)
    backfill_flow(start=DAYS[0], end=DAYS[0], data=registry[1], store=store, allow_look_ahead=True)
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["backfill-lstm", "retrain-lstm", "bundle-lstm"])))
    by_key = {}
    for a in found:
        by_key.setdefault(a.key, []).append(a)
    assert set(by_key) == {"backfill-lstm", "retrain-lstm", "bundle-lstm"}
    assert any(str(DAYS[0]) in str(a.data) for a in by_key["backfill-lstm"])
    assert any("mase" in str(a.data).lower() for a in by_key["retrain-lstm"])
    assert any("manifest.json" in str(a.data) for a in by_key["bundle-lstm"])
