"""Tests for the leaky noisy-OR case classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from survfed.common.detection.classifier import (
    CaseClassifier,
    build_case_classifier,
    case_bce,
    leaky_noisy_or,
    noisy_or_log_complement,
    pick_proposals,
    proposal_crops,
)
from survfed.common.detection.config import cpu_preset
from survfed.common.detection.nnet import build_nnet


def _logit(p):
    return torch.log(p) - torch.log1p(-p)


def test_closed_form_and_no_nodule_gives_the_leak():
    p = torch.tensor([[0.2, 0.5, 0.9], [0.3, 0.0, 1.0], [0.7, 0.7, 0.7]], dtype=torch.float64)
    present = torch.tensor([[True, True, False], [True, True, False], [False, False, False]])
    b = torch.tensor(-1.0, dtype=torch.float64)
    pd = torch.sigmoid(b)
    out = leaky_noisy_or(p, present, b)
    expected = [1 - (1 - pd) * 0.8 * 0.5, 1 - (1 - pd) * 0.7 * 1.0, pd]
    torch.testing.assert_close(out, torch.stack(expected))
    # the logit form gives the same log(1 - P)
    z = _logit(p.clamp(1e-12, 1 - 1e-12))
    log_c = noisy_or_log_complement(z, present, b)
    torch.testing.assert_close(-torch.expm1(log_c), out, rtol=1e-9, atol=1e-9)


def test_tiny_probabilities_keep_their_precision():
    p = torch.full((1, 5), 1e-9)
    out = leaky_noisy_or(p, torch.ones(1, 5, dtype=torch.bool), torch.tensor(-30.0))
    # the product form in float32 would round 1 - 1e-9 to 1 and give 0
    assert float(out) == pytest.approx(5e-9 + float(torch.sigmoid(torch.tensor(-30.0))), rel=1e-4)


def test_monotone_in_each_nodule_probability():
    torch.manual_seed(0)
    present = torch.ones(1, 4, dtype=torch.bool)
    b = torch.tensor(-2.0)
    base = torch.rand(1, 4) * 0.8
    for i in range(4):
        up = base.clone()
        up[0, i] += 0.1
        assert float(leaky_noisy_or(up, present, b)) > float(leaky_noisy_or(base, present, b))
    absent = present.clone()
    absent[0, 0] = False
    up = base.clone()
    up[0, 0] = 0.99  # an absent slot does not matter
    torch.testing.assert_close(leaky_noisy_or(up, absent, b), leaky_noisy_or(base, absent, b))


def test_gradients_finite_at_zero_and_one():
    p = torch.tensor([[0.0, 1.0, 0.5], [1.0 - 1e-7, 1e-7, 0.3]], requires_grad=True)
    b = torch.tensor(-1.0, requires_grad=True)
    present = torch.ones(2, 3, dtype=torch.bool)
    leaky_noisy_or(p, present, b).sum().backward()
    assert torch.isfinite(p.grad).all() and torch.isfinite(b.grad)
    pd = float(torch.sigmoid(torch.tensor(-1.0)))
    # dP/dP_i = (1 - P_d) Π_{j≠i} (1 - P_j): for row 0, slot 0: (1 - pd) * 0 * 0.5 = 0
    assert float(p.grad[0, 0]) == pytest.approx(0.0, abs=1e-7)
    assert float(p.grad[0, 1]) == pytest.approx((1 - pd) * 1.0 * 0.5, rel=1e-5)
    z = torch.tensor([[-40.0, 40.0, 0.0]], requires_grad=True)
    case_bce(noisy_or_log_complement(z, present[:1], b), torch.tensor([1.0])).backward()
    assert torch.isfinite(z.grad).all()


def test_case_bce_leaves_unknown_labels_out():
    log_c = torch.log(torch.tensor([0.8, 0.3, 0.5]))  # P = 0.2, 0.7, 0.5
    labels = torch.tensor([1.0, 0.0, float("nan")])
    expected = -(np.log(0.2) + np.log(0.3)) / 2
    assert float(case_bce(log_c, labels)) == pytest.approx(expected, rel=1e-6)
    zero = case_bce(log_c.requires_grad_(), torch.full((3,), float("nan")))
    assert float(zero.detach()) == 0.0 and zero.requires_grad
    with pytest.raises(ValueError, match="labels must hold"):
        case_bce(log_c, torch.tensor([2.0, 0.0, 1.0]))


def test_pick_proposals_top_k_and_sampled():
    props = np.array([[i, i, i, 5, c] for i, c in enumerate([0.1, 0.9, 0.5, 0.3, 0.8, 0.05])])
    assert pick_proposals(props, 3)[:, 4].tolist() == [0.9, 0.8, 0.5]
    assert len(pick_proposals(props[:2], 5)) == 2
    rng = np.random.default_rng(0)
    counts = np.zeros(6)
    for _ in range(300):
        picked = pick_proposals(props, 2, rng)
        assert (np.diff(picked[:, 4]) <= 0).all()
        counts[picked[:, 0].astype(int)] += 1
    assert counts[1] > counts[3] > counts[5]  # more confident proposals are picked more often


def test_case_classifier_shapes_features_and_blanks(small_scan):
    torch.manual_seed(0)
    cfg = cpu_preset(width=4, crop_size=32, top_k=3)
    model = build_case_classifier(build_nnet(cfg), cfg)
    assert isinstance(model, CaseClassifier) and model.mlp[0].in_features == 20
    props = np.c_[small_scan.nodules, [0.9, 0.8, 0.7]]
    one = proposal_crops(small_scan.image, props[:2], cfg)
    assert one["crops"].shape == (3, 1, 32, 32, 32) and one["coord"].shape == (3, 3, 8, 8, 8)
    assert one["present"].tolist() == [True, True, False]
    # the crop is centred on the proposal: the nodule is bright in the middle
    assert float(one["crops"][0, 0, 16, 16, 16]) > 0.1
    none = proposal_crops(small_scan.image, np.zeros((0, 5)), cfg)
    crops = torch.stack([one["crops"], none["crops"]])
    coord = torch.stack([one["coord"], none["coord"]])
    present = torch.stack([one["present"], none["present"]])
    model.eval()
    out = model(crops, coord, present)
    assert out.p_case.shape == (2,) and out.p_nodule.shape == (2, 3)
    assert torch.isnan(out.p_nodule[0, 2]) and torch.isnan(out.p_nodule[1]).all()
    pd = torch.sigmoid(model.leak_logit)
    torch.testing.assert_close(out.p_case[1], pd)  # no proposal: the leak alone
    ref = 1 - (1 - pd) * (1 - out.p_nodule[0, :2]).prod()
    torch.testing.assert_close(out.p_case[0], ref)
    feats = model.nodule_features(one["crops"][:1], one["coord"][:1])
    full = model.nnet.features(one["crops"][:1], one["coord"][:1])
    torch.testing.assert_close(feats[0], full[0, :, 3:5, 3:5, 3:5].amax(dim=(1, 2, 3)))
    # training step: gradients reach the shared backbone and the leak
    model.train()
    loss = case_bce(model(crops, coord, present).log_complement, torch.tensor([1.0, 0.0]))
    loss.backward()
    assert model.leak_logit.grad is not None
    assert model.nnet.pre[0].weight.grad is not None
    assert torch.isfinite(model.nnet.pre[0].weight.grad).all()
