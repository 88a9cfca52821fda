"""TrainConfig: the learning-rate schedule shared by pooled and federated training."""

from __future__ import annotations

import itertools
import math

import pytest

from survfed.common.config import TrainConfig


def test_half_cosine_from_lr_towards_the_final_factor() -> None:
    cfg = TrainConfig(lr=1e-3, lr_final_factor=0.1)
    total = 30
    lrs = [cfg.lr_at(e, total) for e in range(total)]
    assert lrs[0] == pytest.approx(1e-3)
    assert lrs[15] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half-way: the mid value
    assert lrs[-1] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 29 / 30))))
    assert all(a > b for a, b in itertools.pairwise(lrs))  # strictly decreasing
    assert min(lrs) > 1e-4


def test_constant_when_the_factor_is_one_and_bad_values_are_refused() -> None:
    cfg = TrainConfig(lr_final_factor=1.0)
    assert {cfg.lr_at(e, 7) for e in range(7)} == {cfg.lr}
    with pytest.raises(ValueError, match="lr_final_factor"):
        TrainConfig(lr_final_factor=0.0)
    with pytest.raises(ValueError, match="epoch"):
        cfg.lr_at(7, 7)


def test_a_federation_follows_the_pooled_schedule_round_by_round() -> None:
    """Round r's local epoch e is pooled epoch (r - 1) * E + e of R * E."""
    from survfed.client.local_training import local_learning_rates

    cfg = TrainConfig(epochs=3)
    pooled = [cfg.lr_at(e, 30) for e in range(30)]
    federated = [lr for r in range(1, 11) for lr in local_learning_rates(cfg, r, 10)]
    assert federated == pooled
    assert local_learning_rates(cfg, 12, 10) == pooled[-3:]  # past the end: the last rates
    assert local_learning_rates(cfg, 1, None) == [cfg.lr_at(e, 3) for e in range(3)]
