"""The DDP samplers, with the rank faked: disjoint per-rank draws, reproducible, exact val split."""

from __future__ import annotations

import pytest
import torch

import nightcast.tasks.forecast.train as train
from nightcast.tasks.forecast.train import RankBatchSampler, RankSlice


def _as_rank(monkeypatch: pytest.MonkeyPatch, rank: int, world: int) -> None:
    monkeypatch.setattr(train, "_rank", lambda: (rank, world))


def test_ranks_read_disjoint_slots_of_one_seeded_draw(monkeypatch):
    sampler = RankBatchSampler(n=1000, steps=5, batch_size=8, seed=42, world=2)
    per_rank = []
    for rank in (0, 1):
        _as_rank(monkeypatch, rank, 2)
        per_rank.append(torch.tensor(list(sampler)).view(5, 8))  # (steps, batch)
    draw = torch.randint(1000, (5, 2, 8), generator=torch.Generator().manual_seed(42 * 1_000_003))
    assert torch.equal(per_rank[0], draw[:, 0]) and torch.equal(per_rank[1], draw[:, 1])
    assert not torch.equal(per_rank[0], per_rank[1])
    assert len(sampler) == 5 * 8


def test_the_draw_is_reproducible_and_changes_with_the_epoch(monkeypatch):
    _as_rank(monkeypatch, 0, 2)
    a, b = RankBatchSampler(500, 3, 4, seed=7, world=2), RankBatchSampler(500, 3, 4, seed=7, world=2)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first


def test_a_sampler_refuses_a_group_of_another_size(monkeypatch):
    _as_rank(monkeypatch, 0, 4)
    with pytest.raises(RuntimeError, match="built for 2 ranks"):
        list(RankBatchSampler(10, 1, 2, seed=0, world=2))


def test_validation_windows_are_split_without_padding(monkeypatch):
    seen = []
    for rank in (0, 1, 2):
        _as_rank(monkeypatch, rank, 3)
        part = list(RankSlice(10))
        assert len(RankSlice(10)) == len(part)
        seen += part
    assert sorted(seen) == list(range(10))  # every window once: the reduced mean is exact


def test_auto_strategy_is_spawn_only_with_several_devices():
    from nightcast.schemas.params import TrainConfig

    assert train._strategy(TrainConfig()) == "auto"  # one device: the loop is exactly as before
    assert train._strategy(TrainConfig(devices=2)) == "ddp_spawn"
    assert train._strategy(TrainConfig(devices=2, strategy="ddp_fork")) == "ddp_fork"
