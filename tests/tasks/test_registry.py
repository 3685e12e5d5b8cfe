import datetime as dt
import hashlib
import io
import json
import pickle

import pytest
import torch

from nightcast.models.network import LSTMForecaster
from nightcast.schemas.params import PromotionRule
from nightcast.tasks.ops.registry import (RegistryError, champion_as_of, decide_promotion, load_bundle, load_champion, promote,
                            read_champion, save_bundle, set_champion, sweep_incomplete, Decision)
from nightcast.tasks.ops.storage import LocalStore, S3Store
from tests.conftest import fork_child

ARGS = {"n_past": 2, "n_future": 0, "horizon": 3, "hidden_size": 4, "num_layers": 1}
CONFIG = {"params": {"window": {"lookback": 5, "horizon": 3}, "clean": {"max_bad_share": 0.05}},
          "network_args": ARGS, "calendar": {"frequency": "1h"}, "season_length": 24}


def _save(store, version="v1", name="m"):
    net = LSTMForecaster(2, 0, 3, hidden_size=4, num_layers=1)
    save_bundle(store, name, version, net=net, config=CONFIG, preprocessing={"p": 1},
                metrics={"x": 1}, history_csv="epoch\n0\n", manifest={"seed": 1})
    return net


def _tamper(store, fname: str, data: bytes, version: str = "v1") -> None:
    """What someone with write access to the bucket can do: replace a file and fix up the checksum."""
    prefix = f"models/m/versions/{version}"
    store.write_bytes(f"{prefix}/{fname}", data)
    manifest = json.loads(store.read_bytes(f"{prefix}/manifest.json"))
    manifest["files"][fname] = hashlib.sha256(data).hexdigest()
    store.write_bytes(f"{prefix}/manifest.json", json.dumps(manifest).encode())


class _Exploit:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))  # loading this pickle would create the file


def test_bundle_roundtrip_loads_weights_only(tmp_path):
    store = LocalStore(tmp_path)
    net = _save(store)
    b = load_bundle(store, "m", "v1")
    x = torch.randn(2, 5, 2)
    assert torch.equal(b.network()(x, torch.zeros(2, 3, 0)), net.eval()(x, torch.zeros(2, 3, 0)))
    assert set(b.manifest["files"]) == {"weights.pt", "config.json", "preprocessing.json", "metrics.json", "history.csv"}


def test_corrupt_or_incomplete_bundle_is_named(tmp_path):
    store = LocalStore(tmp_path)
    _save(store)
    store.write_bytes("models/m/versions/v1/weights.pt", b"garbage")
    with pytest.raises(RegistryError, match="weights.pt is corrupt"):
        load_bundle(store, "m", "v1")
    store.delete("models/m/versions/v1/manifest.json")
    with pytest.raises(RegistryError, match="missing or incomplete"):
        load_bundle(store, "m", "v1")


def test_champion_pointer_missing_corrupt_and_set(tmp_path):
    store = LocalStore(tmp_path)
    assert read_champion(store, "m") is None
    with pytest.raises(RegistryError, match="no champion"):
        load_champion(store, "m")
    store.write_bytes("models/m/champion.json", b"{not json")
    with pytest.raises(RegistryError, match="corrupt"):
        read_champion(store, "m")
    _save(store)
    set_champion(store, "m", "v1", Decision(True, "ok"), {"mase": 0.5})
    assert read_champion(store, "m")["version"] == "v1"
    assert len(store.list("models/m/champions/")) == 1
    assert load_champion(store, "m").version == "v1"


@pytest.mark.parametrize("new, snaive, champ, rule, promote, words", [
    (0.8, 0.9, None, PromotionRule(), True, "beats seasonal naive"),
    (0.95, 0.9, None, PromotionRule(), True, "first servable model"),  # never leave a name without a champion
    (0.95, 0.9, 0.99, PromotionRule(), False, "does not beat seasonal naive"),
    (0.8, 0.9, 0.7, PromotionRule(), False, "does not beat the champion"),
    (0.8, 0.9, 0.85, PromotionRule(), True, "beats the champion"),
    (0.8, 0.9, 0.81, PromotionRule(min_improvement=0.05), False, "does not beat the champion"),
    (0.95, 0.9, None, PromotionRule(beat_seasonal_naive=False), True, "promoted"),
])
def test_promotion_rule(new, snaive, champ, rule, promote, words):
    d = decide_promotion(rule, new, snaive, champ)
    assert d.promote is promote and words in d.reason


def test_a_tampered_weights_file_runs_nothing_and_names_the_file(tmp_path):
    store = LocalStore(tmp_path / "s")
    _save(store)
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"encoder.weight_ih_l0": _Exploit(str(marker))}, buf)
    _tamper(store, "weights.pt", buf.getvalue())
    with pytest.raises(RegistryError) as err:
        load_bundle(store, "m", "v1")
    assert not marker.exists()
    msg = str(err.value)
    assert "weights.pt" in msg and "models/m/versions/v1" in msg and "weights_only=False" not in msg
    _tamper(store, "weights.pt", pickle.dumps(_Exploit(str(marker))))  # a bare pickle, not torch's zip
    with pytest.raises(RegistryError, match="weights.pt is not a plain tensor state dict"):
        load_bundle(store, "m", "v1")
    assert not marker.exists()


@pytest.mark.parametrize("fname, data, words", [
    ("config.json", json.dumps({**CONFIG, "network_args": {**ARGS, "evil": 1}}).encode(),
     "config.json does not match the bundle schema: network_args.evil: Extra inputs are not permitted"),
    ("config.json", json.dumps({**CONFIG, "network_args": {**ARGS, "hidden_size": -4}}).encode(),
     "config.json does not match the bundle schema: network_args.hidden_size"),
    ("config.json", b"{not json", "config.json does not match the bundle schema"),
    ("metrics.json", b"[1, 2", "metrics.json is not valid JSON"),
    ("preprocessing.json", b"[]", "preprocessing.json is not a JSON object"),
    ("config.json", json.dumps({**CONFIG, "network_args": {**ARGS, "hidden_size": 8}}).encode(),
     "weights.pt does not fit network_args in config.json"),
])
def test_malformed_bundle_files_are_named(tmp_path, fname, data, words):
    store = LocalStore(tmp_path)
    _save(store)
    _tamper(store, fname, data)
    with pytest.raises(RegistryError) as err:
        load_bundle(store, "m", "v1")
    assert words in str(err.value) and "models/m/versions/v1" in str(err.value)


def test_a_manifest_without_the_weights_is_refused(tmp_path):
    store = LocalStore(tmp_path)
    _save(store)
    manifest = json.loads(store.read_bytes("models/m/versions/v1/manifest.json"))
    del manifest["files"]["weights.pt"]
    store.write_bytes("models/m/versions/v1/manifest.json", json.dumps(manifest).encode())
    with pytest.raises(RegistryError, match="manifest.json does not list weights.pt"):
        load_bundle(store, "m", "v1")


def _better(metric_of):
    """A decide function: promote when this model's metric beats the pointer's."""
    def make(mine):
        def decide(current):
            theirs = None if current is None else current["metric"]["mase"]
            ok = theirs is None or mine < theirs
            return Decision(ok, f"{mine} vs {theirs}"), {"mase": mine}
        return decide
    return make


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_the_better_model_wins_a_promotion_race_whoever_writes_last(tmp_path, kind, request):
    if kind == "s3":
        bucket = request.getfixturevalue("s3_env")
        store = S3Store(f"s3://{bucket}/store")
    else:
        store = LocalStore(tmp_path)
    for v in ("good", "bad"):
        _save(store, v)
    judge = _better(None)
    calls = []

    def slow_bad(current):
        # the bad model read "no champion"; while it decides, the good one is promoted
        calls.append(None if current is None else current["version"])
        if len(calls) == 1:
            assert promote(store, "m", "good", judge(0.10))[1]["version"] == "good"
        return judge(0.83)(current)

    decision, pointer = promote(store, "m", "bad", slow_bad)
    assert calls == [None, "good"]  # the swap failed, so it judged again against the new champion
    assert not decision.promote and pointer["version"] == "good"
    assert read_champion(store, "m")["version"] == "good"
    assert [json.loads(store.read_bytes(k))["version"] for k in store.list("models/m/champions/")] == ["good"]


def test_concurrent_promotions_in_processes_leave_the_best(tmp_path):
    import multiprocessing as mp

    store = LocalStore(tmp_path)
    metrics = [0.9, 0.3, 0.7, 0.5, 0.2, 0.8]
    ctx = mp.get_context("fork")  # the child only touches files: fork is safe and quick
    barrier = ctx.Barrier(len(metrics))
    procs = [ctx.Process(target=fork_child(_race_one), args=(str(tmp_path), f"v{i}", m, barrier)) for i, m in enumerate(metrics)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert read_champion(store, "m")["version"] == "v4"  # mase 0.2
    history = [json.loads(store.read_bytes(k)) for k in store.list("models/m/champions/")]
    chain = [h["metric"]["mase"] for h in history]
    assert chain == sorted(chain, reverse=True) and chain[-1] == 0.2  # every promotion improved on the last


def _race_one(root, version, metric, barrier):
    store = LocalStore(root)
    barrier.wait()
    promote(store, "m", version, _better(None)(metric))


def test_promote_is_idempotent_under_retry(tmp_path):
    store = LocalStore(tmp_path)
    _save(store)
    first = promote(store, "m", "v1", lambda c: (Decision(True, "first"), {"mase": 1.0}))[1]
    again = promote(store, "m", "v1", lambda c: pytest.fail("a retried promotion must not decide again"))[1]
    assert again == first
    assert len(store.list("models/m/champions/")) == 1


def test_history_and_pointer_agree_after_a_crash_between_the_writes(tmp_path):
    store = LocalStore(tmp_path)
    set_champion(store, "m", "v1", Decision(True, "ok"), {}, now=dt.datetime(2026, 9, 1, tzinfo=dt.timezone.utc))
    # a promotion whose process died after the pointer swap, before its history record
    got = store.read_versioned("models/m/champion.json")
    pointer = {"name": "m", "version": "v2", "promoted_at": "2026-09-03T00:00:00+00:00", "reason": "r", "metric": {}}
    assert store.write_if("models/m/champion.json", json.dumps(pointer).encode(), got[1])
    assert len(store.list("models/m/champions/")) == 1
    assert champion_as_of(store, "m", dt.date(2026, 9, 4))["version"] == "v2"  # the pointer counts as history
    assert champion_as_of(store, "m", dt.date(2026, 9, 2))["version"] == "v1"
    promote(store, "m", "v3", lambda c: (Decision(False, "worse"), {}))  # the next run repairs the record
    assert [json.loads(store.read_bytes(k))["version"] for k in store.list("models/m/champions/")] == ["v1", "v2"]


def test_incomplete_bundles_are_swept_after_a_grace_period(tmp_path):
    """Aged by when their files were last written, not by the version stamp (the run's start): a long
    run's bundle, stamped a day ago and being written now, is never swept by a concurrent run."""
    import os

    store = LocalStore(tmp_path)
    now = dt.datetime(2026, 9, 10, 12, tzinfo=dt.timezone.utc)
    old, fresh, done = "20260909T000000000000Z-aaaa", "20260909T100000000000Z-bbbb", "20260901T000000000000Z-cccc"
    for v, written in ((old, now - dt.timedelta(hours=30)), (fresh, now - dt.timedelta(minutes=5))):
        store.write_bytes(f"models/m/versions/{v}/weights.pt", b"partial")
        os.utime(tmp_path / f"models/m/versions/{v}/weights.pt", (written.timestamp(),) * 2)
    _save(store, done)
    store.write_bytes("models/m/versions/hand-made/notes.txt", b"not ours")
    assert sweep_incomplete(store, "m", now=now) == [old]
    left = {k.split("/")[3] for k in store.list("models/m/versions/")}
    assert left == {fresh, done, "hand-made"}
    with pytest.raises(RegistryError, match="missing or incomplete"):
        load_bundle(store, "m", fresh)  # never a candidate while it is being written


def test_rollback_command_moves_the_pointer_to_a_sound_bundle_and_refuses_a_damaged_one(tmp_path, capsys):
    from nightcast.flows.cli import main
    from nightcast.tasks.ops.storage import LocalStore

    store = LocalStore(str(tmp_path))
    for v in ("v1", "v2", "v3"):
        _save(store, v)
    promote(store, "m", "v1", lambda _c: (Decision(True, "first"), {}))
    promote(store, "m", "v2", lambda _c: (Decision(True, "better"), {}))
    assert main(["rollback", "v1", "--store", str(tmp_path), "--model-name", "m", "--reason", "v2 drifts"]) == 0
    pointer = read_champion(store, "m")
    assert (pointer["version"], pointer["previous"]) == ("v1", "v2")
    assert pointer["reason"] == "rollback by an operator: v2 drifts"
    assert "champion of m: v2 -> v1" in capsys.readouterr().out
    _tamper(store, "weights.pt", b"not weights", version="v3")
    assert main(["rollback", "v3", "--store", str(tmp_path), "--model-name", "m"]) == 1
    assert main(["rollback", "v9", "--store", str(tmp_path), "--model-name", "m"]) == 1
    err = capsys.readouterr().err
    assert "rollback failed" in err and "v3" in err and "v9" in err and "missing or incomplete" in err
    assert read_champion(store, "m")["version"] == "v1"  # neither moved it
