"""Tests for tiled whole-scan inference, decoding and NMS."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from survfed.common.detection.config import cpu_preset
from survfed.common.detection.inference import decode_proposals, detect, output_map, tile_spans
from survfed.common.detection.nnet import build_nnet


class _LocalNet(nn.Module):
    """Test scaffolding: the N-Net's interface with a 4³ receptive field (one output cell) and
    a linear use of the location crop, so tiling must reproduce a whole-scan pass exactly."""

    def __init__(self, anchors: int = 3) -> None:
        super().__init__()
        self.a = anchors
        self.conv = nn.Conv3d(1, 5 * anchors, kernel_size=4, stride=4)
        self.loc = nn.Conv3d(3, 5 * anchors, kernel_size=1)

    def forward(self, x: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
        out = self.conv(x) + self.loc(coord)
        b, _, d, h, w = out.shape
        return out.view(b, self.a, 5, d, h, w).permute(0, 3, 4, 5, 1, 2)


class _MirrorNet(nn.Module):
    """Test scaffolding: a mirror-equivariant stand-in. Objectness and size are 4³ block means,
    each offset the central difference of the block means along its axis (odd under a flip),
    so a mirrored input gives the mirrored output with that axis' offset negated."""

    def __init__(self, anchors: int = 3) -> None:
        super().__init__()
        self.a = anchors

    def forward(self, x: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
        p = nn.functional.avg_pool3d(x, 4)[:, 0]  # (B, d, h, w)
        diffs = []
        for axis in (1, 2, 3):
            n = p.shape[axis]
            hi = p.index_select(axis, torch.arange(n).add(1).clamp(max=n - 1))
            lo = p.index_select(axis, torch.arange(n).sub(1).clamp(min=0))
            diffs.append(hi - lo)
        out = torch.stack([p, *diffs, 0.5 * p], dim=-1)  # (B, d, h, w, 5)
        return out[:, :, :, :, None].expand(-1, -1, -1, -1, self.a, -1)


def test_tile_spans_cover_the_padded_axis():
    spans = tile_spans(100, 48, 16)
    assert spans == [(0, 48, 0, 40), (32, 48, 8, 40), (64, 48, 8, 48)]
    kept = [(s + lo, s + hi) for s, _, lo, hi in spans]
    assert kept == [(0, 40), (40, 72), (72, 112)] and 112 == 16 * math.ceil(100 / 16)
    assert tile_spans(30, 208, 32) == [(0, 32, 0, 32)]  # a short axis: one shortened tile
    assert tile_spans(208, 208, 32) == [(0, 208, 0, 208)]


def test_stitched_tiles_equal_one_whole_pass():
    torch.manual_seed(0)
    model = _LocalNet()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (70, 90, 50), dtype=np.uint8)
    box = np.array([[5.0, 60.0], [0.0, 89.0], [10.0, 40.0]])
    tiled = output_map(model, image, cpu_preset(tile_size=32, tile_overlap=16), lung_box=box)
    whole = output_map(model, image, cpu_preset(tile_size=112, tile_overlap=16), lung_box=box)
    assert tiled.shape == (20, 24, 16, 3, 5)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-5)
    # and a different lung box changes the output (the location crop is used)
    other = output_map(model, image, cpu_preset(tile_size=32, tile_overlap=16))
    assert not torch.allclose(other, tiled)


def test_mirror_tta_maps_every_view_back():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (40, 70, 56), dtype=np.uint8)
    cfg = cpu_preset(tile_size=32, tile_overlap=16)  # several tiles on every axis
    plain = output_map(_MirrorNet(), image, cfg)
    # an equivariant network gains nothing from mirroring: every view, flipped back with its
    # offsets negated, is the plain output (a missing flip-back or sign would break this)
    tta = output_map(_MirrorNet(), image, cfg.replace(mirror_tta=True))
    assert plain[..., 2].abs().max() > 0.05 and plain[..., 3].abs().max() > 0.05
    torch.testing.assert_close(tta, plain, rtol=0, atol=1e-6)
    # a network that is not equivariant gets the average of four different views
    torch.manual_seed(0)
    model = _LocalNet()
    box = np.array([[0.0, 39.0], [5.0, 60.0], [3.0, 50.0]])
    local = output_map(model, image, cfg, lung_box=box)
    local_tta = output_map(model, image, cfg.replace(mirror_tta=True), lung_box=box)
    assert local_tta.shape == local.shape and not torch.allclose(local_tta, local, atol=1e-3)


def test_nnet_tile_differences_are_a_seam_effect_with_voxel_norm():
    # the N-Net's receptive field is far wider than half the overlap, so tiles differ from a
    # whole pass; with per-voxel normalisation the difference is confined to the seam
    torch.manual_seed(0)
    model = build_nnet(cpu_preset(width=4, norm="voxel")).eval()
    for module in model.modules():  # undo the zero-γ start, so every residual branch is used
        if hasattr(module, "norm2"):
            torch.nn.init.ones_(module.norm2.weight)
    image = np.random.default_rng(1).integers(20, 80, (32, 96, 32), dtype=np.uint8)
    whole = output_map(model, image, cpu_preset(tile_size=96, tile_overlap=32))
    tiled = output_map(model, image, cpu_preset(tile_size=64, tile_overlap=32))
    # y tiles (0, 64) and (32, 96) meet at output y = 12 (input 48)
    diff = (tiled - whole)[..., 0].abs().amax(dim=(0, 2, 3))  # per output y
    seam, far = float(diff[10:14].max()), float(torch.cat([diff[:2], diff[-2:]]).max())
    assert far < 0.1 * seam
    assert far < 0.05 * float(whole[..., 0].abs().max())


def _map_with(cells, shape=(8, 8, 8), anchors=3):
    out = torch.zeros((*shape, anchors, 5))
    out[..., 0] = -10.0  # confidence ~ 0 everywhere
    for (a, b, c), k, logit, deltas in cells:
        out[a, b, c, k, 0] = logit
        out[a, b, c, k, 1:] = torch.tensor(deltas)
    return out


def test_decode_and_nms_remove_duplicates():
    cfg = cpu_preset(anchors_mm=(10.0, 30.0, 60.0), spacing_mm=2.5)  # anchors 4, 12, 24 vox
    # two neighbouring cells predicting the same 12-voxel cube at (13.5, 13.5, 15.5), and a
    # separate nodule far away
    out = _map_with(
        [
            ((3, 3, 3), 1, 3.0, [0.0, 0.0, 2 / 12, 0.0]),  # anchor centre 13.5 → x 15.5
            ((3, 3, 4), 1, 2.0, [0.0, 0.0, -2 / 12, 0.0]),  # anchor centre 17.5 → x 15.5
            ((6, 1, 6), 0, 1.0, [0.25, 0.0, 0.0, math.log(1.5)]),
        ]
    )
    props = decode_proposals(out, cfg, (32, 32, 32))
    assert props.shape == (2, 5)
    np.testing.assert_allclose(props[0, :4], [13.5, 13.5, 15.5, 12.0], atol=1e-5)
    np.testing.assert_allclose(props[1, :4], [26.5, 5.5, 25.5, 6.0], atol=1e-5)
    np.testing.assert_allclose(props[:, 4], 1 / (1 + np.exp(-np.array([3.0, 1.0]))), rtol=1e-6)
    # without NMS both duplicates would stay
    assert len(decode_proposals(out, cfg.replace(nms_iou=1.0), (32, 32, 32))) == 3
    # below the score threshold nothing is proposed; outside the scan neither
    assert len(decode_proposals(out, cfg.replace(score_threshold=0.99), (32, 32, 32))) == 0
    assert len(decode_proposals(out, cfg, (20, 32, 32))) == 1
    assert len(decode_proposals(out, cfg.replace(max_proposals=1), (32, 32, 32))) == 1


def test_detect_on_cpu_returns_sorted_proposals(small_scan):
    torch.manual_seed(0)
    cfg = cpu_preset(width=4, tile_size=48, tile_overlap=16, score_threshold=0.0, max_proposals=20)
    model = build_nnet(cfg)
    props = detect(model, small_scan.image, cfg, device="cpu", amp=True)  # amp: no-op on CPU
    assert props.shape == (20, 5) and props.dtype == np.float64
    assert (np.diff(props[:, 4]) <= 0).all()
    assert (props[:, :3] >= -0.5).all() and (props[:, :3] < np.array(small_scan.shape) - 0.5).all()
    assert model.training  # restored
    with pytest.raises(ValueError, match="uint8"):
        detect(model, small_scan.image.astype(np.float32), cfg)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_output_map_matches_the_cpu(small_scan):
    """The stitched N-Net output on CUDA, in float32 (TF32 off) and under bf16 autocast, is the
    CPU's float32 output within rounding (float32 far under 1e-3, bf16 operands ~1e-2)."""
    torch.manual_seed(0)
    cfg = cpu_preset(width=8, tile_size=32, tile_overlap=16)  # several tiles on every axis
    model = build_nnet(cfg)
    reference = output_map(model, small_scan.image, cfg)
    model = model.cuda()
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        fp32 = output_map(model, small_scan.image, cfg, device="cuda")
    bf16 = output_map(model, small_scan.image, cfg, device="cuda", amp=True)

    def relative(out: torch.Tensor) -> float:
        assert out.device.type == "cpu" and out.dtype == torch.float32
        assert torch.isfinite(out).all()
        return float((out - reference).norm() / reference.norm())

    assert relative(fp32) < 1e-4
    assert relative(bf16) < 5e-2
    proposals = detect(model, small_scan.image, cfg, device="cuda", amp=True)
    assert proposals.ndim == 2 and proposals.shape[1] == 5 and proposals.shape[0] >= 1
