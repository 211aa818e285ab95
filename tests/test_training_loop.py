"""The training loop's learning-rate schedule (stage.lr_schedule)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from fedehr.config import Stage1Config
from fedehr.training.loop import TrainConfig, train_local


def test_constant_schedule_keeps_lr():
    tc = TrainConfig(epochs=3, lr=0.01)
    assert [tc.lr_at(e) for e in range(3)] == [0.01] * 3


def test_cosine_spans_the_whole_stage_across_rounds():
    stage = Stage1Config(lr=1.0, lr_schedule="cosine")
    # 2 rounds × 2 epochs: round 1 continues where round 0 stopped.
    r0 = TrainConfig.from_stage(stage, epochs=2, epoch_offset=0, total_epochs=4)
    r1 = TrainConfig.from_stage(stage, epochs=2, epoch_offset=2, total_epochs=4)
    got = [r0.lr_at(0), r0.lr_at(1), r1.lr_at(0), r1.lr_at(1)]
    want = [0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    assert got == pytest.approx(want)
    assert got[0] == 1.0 and all(a > b for a, b in itertools.pairwise(got))
    # Without a stage length the call's own epochs are the stage.
    assert TrainConfig(epochs=2, lr=1.0, lr_schedule="cosine").lr_at(1) == pytest.approx(0.5)


def test_unknown_schedule_raises():
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(epochs=1, lr_schedule="step").lr_at(0)


def test_train_local_applies_the_schedule_per_epoch():
    seen: list[float] = []
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=123.0)

    def objective(m, batch, gen):
        seen.append(opt.param_groups[0]["lr"])
        return (m(batch["x"]) ** 2).squeeze(-1), {}

    tc = TrainConfig(epochs=3, lr=0.1, lr_schedule="cosine", epoch_offset=1, total_epochs=4)
    train_local(model, objective, lambda e: [{"x": torch.ones(2, 2)}], tc, generator=None, optimizer=opt)
    assert seen == pytest.approx([tc.lr_at(e) for e in range(3)])
    assert seen == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in (1, 2, 3)])


def test_for_round_reads_a_tasks_position():
    stage = Stage1Config(lr=0.5, lr_schedule="cosine")
    tc = TrainConfig.for_round(stage, {"epochs": 3, "epoch_offset": 6, "total_epochs": 9})
    assert (tc.epochs, tc.epoch_offset, tc.total_epochs, tc.lr, tc.lr_schedule) == (3, 6, 9, 0.5, "cosine")
    whole = TrainConfig.for_round(stage, {"epochs": 4})  # no position: the call is the whole stage
    assert (whole.epoch_offset, whole.total_epochs) == (0, 0) and whole.lr_at(0) == 0.5
