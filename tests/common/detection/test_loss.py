"""Tests for the N-Net loss and its hard negative mining."""

from __future__ import annotations

import math

import pytest
import torch

from survfed.common.detection.loss import nnet_loss


def _targets(labels, deltas=None):
    labels = torch.as_tensor(labels, dtype=torch.int8)
    if deltas is None:
        deltas = torch.zeros((*labels.shape, 4))
    return {"labels": labels, "deltas": deltas}


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _bce(logit, y):
    p = 1 / (1 + math.exp(-logit))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_hand_example():
    # one patch, a 1×1×2 grid with 2 anchors: 4 anchors (positive, negative, negative, ignored)
    out = torch.zeros((1, 1, 1, 2, 2, 5))
    out[0, 0, 0, 0, 0] = torch.tensor([2.0, 0.5, -0.2, 0.0, 3.0])  # positive
    out[0, 0, 0, 0, 1, 0] = 1.0  # negative, confident: the hard one
    out[0, 0, 0, 1, 0, 0] = -3.0  # negative, easy
    out[0, 0, 0, 1, 1, 0] = 5.0  # ignored
    labels = torch.tensor([[[[[1, 0], [0, -1]]]]])
    deltas = torch.zeros((1, 1, 1, 2, 2, 4))
    deltas[0, 0, 0, 0, 0] = torch.tensor([0.0, 0.0, 0.0, 0.5])
    targets = _targets(labels, deltas)

    def run(num_hard, weighting):
        return nnet_loss(
            out, targets, num_hard=num_hard, neg_pool=10, generator=_gen(), weighting=weighting
        )

    # smooth-L1: 0.5²/2 + 0.2²/2 + 0 + (|3 − 0.5| − 0.5)
    reg = 0.125 + 0.02 + 0.0 + 2.0
    pos, hard, easy = _bce(2.0, 1), _bce(1.0, 0), _bce(-3.0, 0)
    loss, stats = run(1, "anchors")  # mean over the 2 selected anchors
    assert float(loss) == pytest.approx((pos + hard + reg) / 2, rel=1e-6)
    assert stats["n_pos"] == 1 and stats["n_neg"] == 1
    assert stats["cls"] + stats["reg"] == pytest.approx(stats["loss"])
    assert stats["reg"] == pytest.approx(reg / 2)
    assert stats["pos_correct"] == 1 and stats["neg_correct"] == 0
    loss, stats = run(1, "balanced")  # ½ positives + ½ negatives + regression per positive
    assert float(loss) == pytest.approx(0.5 * pos + 0.5 * hard + reg, rel=1e-6)
    assert stats["reg"] == pytest.approx(reg)
    # with two hard negatives the easy one joins
    loss, stats = run(2, "anchors")
    assert stats["n_neg"] == 2
    assert float(loss) == pytest.approx((pos + hard + easy + reg) / 3, rel=1e-6)
    loss, _ = run(2, "balanced")
    assert float(loss) == pytest.approx(0.5 * pos + 0.5 * (hard + easy) / 2 + reg, rel=1e-6)


def test_hard_negatives_per_patch_are_the_most_confident_of_the_pool():
    torch.manual_seed(0)
    out = torch.randn((3, 4, 4, 4, 3, 5))
    labels = torch.zeros((3, 4, 4, 4, 3), dtype=torch.int8)  # 192 negatives per patch
    _, stats = nnet_loss(out, _targets(labels), num_hard=5, neg_pool=192, generator=_gen())
    assert stats["n_neg"] == 15 and stats["n_pos"] == 0
    # pool = all negatives: the loss is the mean BCE of each patch's top-5 logits
    top = out[..., 0].reshape(3, -1).topk(5, dim=1).values.flatten()
    ref = torch.nn.functional.binary_cross_entropy_with_logits(top, torch.zeros_like(top))
    loss, _ = nnet_loss(out, _targets(labels), num_hard=5, neg_pool=192, generator=_gen())
    assert float(loss) == pytest.approx(0.5 * float(ref), rel=1e-6)  # balanced: ½ negatives
    loss, _ = nnet_loss(
        out, _targets(labels), num_hard=5, neg_pool=192, generator=_gen(), weighting="anchors"
    )
    assert float(loss) == pytest.approx(float(ref), rel=1e-6)
    # a small pool is a random subset: the mined negatives are less confident on average
    small = [
        float(nnet_loss(out, _targets(labels), num_hard=5, neg_pool=8, generator=_gen(s))[0])
        for s in range(5)
    ]
    assert max(small) < 0.5 * float(ref)
    assert len(set(small)) > 1  # the pool depends on the generator


def test_patch_without_nodules_is_finite_negatives_only():
    out = torch.randn((2, 2, 2, 2, 3, 5), requires_grad=True)
    labels = torch.zeros((2, 2, 2, 2, 3), dtype=torch.int8)
    loss, stats = nnet_loss(out, _targets(labels), num_hard=2, neg_pool=800, generator=_gen())
    assert math.isfinite(float(loss.detach())) and stats["reg"] == 0 and stats["n_pos"] == 0
    loss.backward()
    assert out.grad is not None and torch.isfinite(out.grad).all()
    assert int((out.grad[..., 1:] != 0).sum()) == 0  # no regression without positives


def test_no_negatives_and_all_ignored():
    out = torch.randn((1, 1, 1, 2, 1, 5), requires_grad=True)
    targets = _targets([[[[[1], [-1]]]]])
    bce = _bce(float(out[0, 0, 0, 0, 0, 0].detach()), 1)
    reg = float(
        torch.nn.functional.smooth_l1_loss(
            out[0, 0, 0, 0, 0, 1:].detach(), torch.zeros(4), reduction="sum"
        )
    )
    for weighting, expected in (("anchors", bce + reg), ("balanced", 0.5 * bce + reg)):
        loss, stats = nnet_loss(
            out, targets, num_hard=2, neg_pool=4, generator=_gen(), weighting=weighting
        )
        assert stats["n_neg"] == 0 and stats["n_pos"] == 1
        assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss, stats = nnet_loss(
        out, _targets([[[[[-1], [-1]]]]]), num_hard=2, neg_pool=4, generator=_gen()
    )
    assert float(loss.detach()) == 0.0 and stats["n_pos"] == 0 and stats["n_neg"] == 0
    loss.backward()
    assert out.grad is not None and (out.grad == 0).all()


def test_input_checks():
    out = torch.zeros((1, 2, 2, 2, 3, 5))
    with pytest.raises(ValueError, match="labels"):
        nnet_loss(
            out, _targets(torch.zeros((1, 2, 2, 2, 2))), num_hard=1, neg_pool=2, generator=_gen()
        )
    with pytest.raises(ValueError, match="num_hard"):
        nnet_loss(
            out, _targets(torch.zeros((1, 2, 2, 2, 3))), num_hard=3, neg_pool=2, generator=_gen()
        )
    with pytest.raises(ValueError, match="weighting"):
        nnet_loss(
            out,
            _targets(torch.zeros((1, 2, 2, 2, 3))),
            num_hard=1,
            neg_pool=2,
            generator=_gen(),
            weighting="mean",
        )
    with pytest.raises(TypeError, match="generator"):
        nnet_loss(out, _targets(torch.zeros((1, 2, 2, 2, 3))), num_hard=1, neg_pool=2, generator=0)
