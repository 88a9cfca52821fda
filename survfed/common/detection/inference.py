"""Whole-scan inference of the N-Net: overlapping tiles, decoding and NMS (seed 003 §IV-G).

**Tiles.** Along each axis of a ``(Z, Y, X)`` scan, tiles of ``T`` = ``tile_size`` voxels start
at ``0, T − O, 2(T − O), …`` (``O`` = ``tile_overlap``) until one reaches the end; the last one
is shortened to the next multiple of 16 past the end, and a scan shorter than ``T`` is one tile
of that length. Voxels beyond the scan are 170. Since tiles start at multiples of 16, their
pooling grids line up with that of the whole (padded) scan. Each tile gets its own location
crop (its place in the scan), so every tile sees what a whole-scan pass would see there.

**Stitching.** The output map of the scan has ``ceil16(Z) / 4 × …`` voxels; each is taken from
the tile in which it lies farthest from the tile's faces: two neighbours split their overlap in
the middle, so every kept output voxel is at least ``O / 2`` input voxels inside its tile (except
at the scan's own faces). With a network whose receptive field is covered by ``O / 2`` the result
equals one whole-scan pass exactly (the tests check this); the N-Net's receptive field is far
larger, so the paper's 32-voxel overlap removes most, not all, of the tile border effect.

**Mirroring** (``mirror_tta``). Each tile also runs mirrored along y, along x and along both —
the flips the training sampler applies, the location crop mirrored with the tile — and each
output is mirrored back (its spatial axes flipped, the offsets ``dy``/``dx`` of a flipped axis
negated) before the four are averaged, logits included. Tiles are multiples of the stride, so a
mirrored tile's anchors land exactly on the original ones.

**Proposals.** Confidence ``σ(logit)``; candidates above ``score_threshold`` whose centres lie
in the scan, at most ``pre_nms`` of the best, decoded with the anchor coder, then NMS
(``monai.data.box_utils.non_max_suppression`` on the cubes, IoU ``nms_iou``) keeping at most
``max_proposals``.
"""

from __future__ import annotations

import itertools
import math
from contextlib import nullcontext

import numpy as np
import torch
from monai.data.box_utils import non_max_suppression
from torch import nn

from survfed.common.detection.anchors import anchor_grid, cubes_to_corners, decode_cubes
from survfed.common.detection.config import DetectorConfig
from survfed.common.detection.sampling import extract_block
from survfed.common.detection.scan import (
    check_image,
    check_lung_box,
    location_crop,
    normalise_intensity,
)

__all__ = ["decode_proposals", "detect", "mirror_views", "output_map", "tile_spans"]

_MAX_STRIDE = 16


def _ceil16(n: int) -> int:
    return _MAX_STRIDE * math.ceil(n / _MAX_STRIDE)


def tile_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Tiles along one axis: ``(start, size, keep_lo, keep_hi)`` in input voxels.

    ``keep_lo``/``keep_hi`` bound (relative to ``start``) the part of the tile whose outputs are
    kept; consecutive tiles' kept parts are contiguous and cover ``[0, ceil16(length))``.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    step = tile - overlap
    n = 1 + math.ceil(max(0, length - tile) / step)
    spans = []
    for k in range(n):
        start = k * step
        size = min(tile, _ceil16(length - start))
        lo = 0 if k == 0 else overlap // 2
        hi = size if k == n - 1 else tile - overlap // 2
        spans.append((start, size, lo, hi))
    return spans


def mirror_views(config: DetectorConfig) -> tuple[tuple[int, ...], ...]:
    """Spatial axes (0 = z, 1 = y, 2 = x) flipped in each test-time view: one plain view, or
    four with ``mirror_tta`` (each costs a network pass)."""
    return ((), (1,), (2,), (1, 2)) if config.mirror_tta else ((),)


def _tile_output(
    model: nn.Module, x: torch.Tensor, coord: torch.Tensor, views: tuple[tuple[int, ...], ...]
) -> torch.Tensor:
    """``(d, h, w, A, 5)`` output of one tile ``x`` ``(1, 1, D, H, W)`` with its location crop
    ``coord`` ``(1, 3, d, h, w)``, averaged over the mirrored ``views``."""
    total: torch.Tensor | None = None
    for axes in views:
        dims = [2 + a for a in axes]
        out = (model(x.flip(dims), coord.flip(dims)) if axes else model(x, coord))[0].float()
        if axes:  # back to the tile's orientation; a flipped axis' offset changes sign
            sign = torch.ones(out.shape[-1], dtype=out.dtype, device=out.device)
            sign[[1 + a for a in axes]] = -1.0  # (logit, dz, dy, dx, dr)
            out = out.flip(list(axes)) * sign
        total = out if total is None else total + out
    assert total is not None
    return total / len(views)


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def output_map(
    model: nn.Module,
    image: np.ndarray,
    config: DetectorConfig,
    *,
    device: str | torch.device = "cpu",
    amp: bool = False,
    lung_box: np.ndarray | None = None,
) -> torch.Tensor:
    """The stitched network output over a whole scan.

    Args:
        model: maps ``(B, 1, D, H, W)`` + location crop ``(B, 3, D/4, H/4, W/4)`` to
            ``(B, D/4, H/4, W/4, A, 5)`` (an :class:`~survfed.common.detection.nnet.NNet`);
            on ``device``. Put in eval mode for the call and restored afterwards.
        image: uint8 ``(Z, Y, X)`` preprocessed scan.
        config: ``tile_size``, ``tile_overlap``, ``stride``, ``mirror_tta``.
        device: where the network runs.
        amp: bf16 autocast on CUDA (ignored on CPU).
        lung_box: ``(3, 2)`` lung ends for the location crop; ``None`` = the scan's extent.

    Returns:
        float32 CPU tensor ``(ceil16(Z)/4, ceil16(Y)/4, ceil16(X)/4, A, 5)`` of raw outputs
        ``(logit, dz, dy, dx, dr)``.
    """
    image = check_image(image)
    box = check_lung_box(lung_box, image.shape)
    device = torch.device(device)
    s = config.stride
    spans = [tile_spans(n, config.tile_size, config.tile_overlap) for n in image.shape]
    full = tuple(_ceil16(n) // s for n in image.shape)
    views = mirror_views(config)
    result: torch.Tensor | None = None
    was_training = model.training
    model.eval()
    try:
        for tile in itertools.product(*spans):
            start = tuple(t[0] for t in tile)
            size = tuple(t[1] for t in tile)
            x = normalise_intensity(extract_block(image, start, size))[None, None].to(device)
            coord = location_crop(start, tuple(n // s for n in size), box, stride=s)[None]
            with _autocast(device, amp):
                out = _tile_output(model, x, coord.to(device), views)
            if result is None:
                result = torch.zeros((*full, *out.shape[3:]), dtype=torch.float32)
            src = tuple(slice(t[2] // s, t[3] // s) for t in tile)
            dst = tuple(slice((t[0] + t[2]) // s, (t[0] + t[3]) // s) for t in tile)
            result[dst] = out[src].float().cpu()
    finally:
        model.train(was_training)
    if result is None:  # unreachable: every axis has at least one tile
        raise RuntimeError("no tile was processed")
    return result


def decode_proposals(
    out: torch.Tensor, config: DetectorConfig, scan_shape: tuple[int, int, int]
) -> np.ndarray:
    """Output map → proposals after thresholding, decoding and NMS.

    Args:
        out: ``(d, h, w, A, 5)`` raw outputs (from :func:`output_map`).
        config: anchors, ``score_threshold``, ``pre_nms``, ``nms_iou``, ``max_proposals``.
        scan_shape: ``(Z, Y, X)``; proposals centred outside the scan are dropped.

    Returns:
        float64 ``(n, 5)`` ``(z, y, x, diameter, confidence)`` in voxels, highest confidence
        first.
    """
    if out.ndim != 5 or out.shape[-1] != 5 or out.shape[3] != config.num_anchors:
        raise ValueError(
            f"out must have shape (d, h, w, {config.num_anchors}, 5), got {tuple(out.shape)}"
        )
    anchors = anchor_grid(tuple(out.shape[:3]), config.anchors_vox, config.stride)
    flat = out.reshape(-1, 5).float()
    conf = torch.sigmoid(flat[:, 0])
    keep = (conf > config.score_threshold).nonzero().flatten()
    if keep.numel() > config.pre_nms:
        keep = keep[conf[keep].topk(config.pre_nms).indices]
    cubes = decode_cubes(flat[keep, 1:], anchors[keep])
    limit = torch.tensor(scan_shape, dtype=torch.float32) - 0.5
    inside = ((cubes[:, :3] >= -0.5) & (cubes[:, :3] < limit)).all(dim=1)
    cubes, scores = cubes[inside], conf[keep][inside]
    if cubes.shape[0] == 0:
        return np.zeros((0, 5), dtype=np.float64)
    picked = non_max_suppression(
        cubes_to_corners(cubes), scores, config.nms_iou, max_proposals=config.max_proposals
    )
    picked = torch.as_tensor(picked, dtype=torch.long)
    result = torch.cat([cubes[picked], scores[picked, None]], dim=1)
    return result.double().numpy()


def detect(
    model: nn.Module,
    image: np.ndarray,
    config: DetectorConfig,
    *,
    device: str | torch.device = "cpu",
    amp: bool = False,
    lung_box: np.ndarray | None = None,
) -> np.ndarray:
    """Nodule proposals of one preprocessed scan.

    Args:
        model: a trained :class:`~survfed.common.detection.nnet.NNet` on ``device``.
        image: uint8 ``(Z, Y, X)`` preprocessed scan (see :mod:`survfed.common.detection.scan`).
        config: the detector's config (tiles, thresholds, NMS).
        device: where the network runs (``"cuda"`` or ``"cpu"``).
        amp: bf16 autocast on CUDA.
        lung_box: ``(3, 2)`` lung ends for the location crop; ``None`` = the scan's extent.

    Returns:
        float64 ``(n, 5)`` ``(z, y, x, diameter, confidence)`` in voxels of the scan's grid,
        sorted by confidence (highest first), ``n <= max_proposals``.
    """
    image = check_image(image)
    out = output_map(model, image, config, device=device, amp=amp, lung_box=lung_box)
    return decode_proposals(out, config, image.shape)
