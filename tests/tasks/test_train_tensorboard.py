"""Training writes a TensorBoard log (Lightning's TensorBoardLogger through tensorboardX) and returns it."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from nightcast.schemas.params import TrainConfig
from nightcast.tasks.data.prepare import prepare_training
from nightcast.tasks.forecast.train import train_model
from nightcast.tasks.data.validate import validate_observations
from tests.conftest import fast_params


def _scalars(event_file: bytes) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in a TFRecord event file: tag -> [(step, value)]."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    i = 0
    while i < len(event_file):
        (n,) = struct.unpack("<Q", event_file[i:i + 8])  # length, its CRC, the record, its CRC
        event = event_pb2.Event.FromString(event_file[i + 12:i + 12 + n])
        i += 12 + n + 4
        for value in event.summary.value:
            out.setdefault(value.tag, []).append((event.step, value.simple_value))
    assert i == len(event_file)
    return out


@pytest.fixture(scope="module")
def trained(sample_raw):
    params = fast_params("-", train=TrainConfig(max_epochs=4, patience=3, batch_size=128))
    prepared = prepare_training(validate_observations(sample_raw), params)
    return train_model(prepared.index, params.model, params.train, progress=False)


def test_the_event_file_comes_back_with_the_training_losses(trained):
    assert list(trained.tensorboard) == ["events.out.tfevents.nightcast"]  # a stable name, not host/pid/clock
    scalars = _scalars(trained.tensorboard["events.out.tfevents.nightcast"])
    assert {"train_loss", "val_loss"} <= set(scalars)
    val = [v for _, v in scalars["val_loss"]]
    assert len(val) == trained.history.height
    np.testing.assert_allclose(val, trained.history["val_loss"].to_numpy(), rtol=1e-5)
    steps = [s for s, _ in scalars["train_loss"]]
    assert steps == sorted(steps) and steps[-1] <= trained.steps
