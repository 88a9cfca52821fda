"""Tests for the N-Net: shapes, size and cost of the paper model, normalisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from survfed.common.detection.config import DetectorConfig, cpu_preset
from survfed.common.detection.nnet import NNet, VoxelNorm, build_nnet, scaled_channels


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_paper_width_parameters_and_flops():
    model = build_nnet(DetectorConfig())
    n = _count(model)
    assert abs(n - 5.4e6) / 5.4e6 < 0.15, n
    assert model.feature_channels == 128
    # the left combining unit takes 64 + 64 + 3 = 131 channels (seed 003 §IV-B)
    assert model.combine_left[0].conv1.in_channels == 131
    meta = model.to("meta")
    counter = FlopCounterMode(display=False)
    with counter:
        x = torch.zeros((1, 1, 128, 128, 128), device="meta")
        coord = torch.zeros((1, 3, 32, 32, 32), device="meta")
        meta(x, coord).sum().backward()
    tflop = counter.get_total_flops() / 1e12
    assert 0.9 < tflop < 1.2, tflop  # ≈ 1.0 TFLOP forward + backward per 128³ patch


def test_channels_scale_with_width():
    assert [scaled_channels(c, 24) for c in (24, 32, 64, 128)] == [24, 32, 64, 128]
    assert [scaled_channels(c, 8) for c in (24, 32, 64, 128)] == [8, 12, 20, 44]
    assert build_nnet(cpu_preset()).feature_channels == 44


@pytest.mark.parametrize("norm", ["group", "voxel"])
def test_output_and_feature_shapes(norm):
    torch.manual_seed(0)
    model = NNet(width=4, num_anchors=2, norm=norm, dropout=0.0).eval()
    x = torch.randn(2, 1, 32, 48, 16)
    coord = torch.randn(2, 3, 8, 12, 4)
    out = model(x, coord)
    assert out.shape == (2, 8, 12, 4, 2, 5)
    feats = model.features(x, coord)
    assert feats.shape == (2, model.feature_channels, 8, 12, 4)
    torch.testing.assert_close(model.head_output(feats), out)
    # per-sample normalisation: a sample's output does not depend on the rest of the batch
    torch.testing.assert_close(model(x[:1], coord[:1]), out[:1], rtol=1e-4, atol=1e-5)


def test_output_layout_is_anchor_then_regressor():
    model = NNet(width=4, num_anchors=3, dropout=0.0).eval()
    x, coord = torch.randn(1, 1, 16, 16, 16), torch.randn(1, 3, 4, 4, 4)
    raw = model.head(model.features(x, coord))  # (1, 15, 4, 4, 4)
    out = model(x, coord)
    # channel a * 5 + j of the last conv is anchor a, value j
    torch.testing.assert_close(out[0, 1, 2, 3, 2, 4], raw[0, 2 * 5 + 4, 1, 2, 3])


def test_residual_units_start_as_their_shortcut():
    model = NNet(width=4)
    units = [m for m in model.modules() if hasattr(m, "norm2")]
    assert len(units) == 4 * 3 + 2 * 3
    assert all(bool((u.norm2.weight == 0).all()) for u in units)


def test_voxel_norm_is_channel_layer_norm():
    torch.manual_seed(1)
    norm = VoxelNorm(6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.normal_()
    x = torch.randn(2, 6, 3, 4, 5)
    ref = F.layer_norm(x.movedim(1, -1), (6,), norm.weight, norm.bias, eps=1e-5).movedim(-1, 1)
    torch.testing.assert_close(norm(x), ref)


def test_input_checks():
    model = NNet(width=4)
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.zeros(1, 1, 24, 16, 16), torch.zeros(1, 3, 6, 4, 4))
    with pytest.raises(ValueError, match="coord must have shape"):
        model(torch.zeros(1, 1, 16, 16, 16), torch.zeros(1, 3, 8, 8, 8))
    with pytest.raises(ValueError, match="norm"):
        NNet(norm="batch")
