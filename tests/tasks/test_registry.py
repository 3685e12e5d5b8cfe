import json

import pytest
import torch

from models.network import LSTMForecaster
from schemas.params import PromotionRule
from tasks.registry import (RegistryError, decide_promotion, load_bundle, load_champion, read_champion,
                            save_bundle, set_champion, Decision)
from tasks.storage import LocalStore


def _save(store, version="v1"):
    net = LSTMForecaster(2, 0, 3, hidden_size=4, num_layers=1)
    args = {"n_past": 2, "n_future": 0, "horizon": 3, "hidden_size": 4, "num_layers": 1}
    save_bundle(store, "m", version, net=net, config={"network_args": args}, preprocessing={"p": 1},
                metrics={"x": 1}, history_csv="epoch\n0\n", manifest={"seed": 1})
    return net


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
