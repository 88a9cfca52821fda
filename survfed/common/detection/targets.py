"""Anchor labels and regression targets of one training patch (seed 003 §IV-D, §IV-E).

Every anchor of the patch's output grid gets a label:

* **positive** (1): for each nodule, *one* anchor drawn at random among those whose cube IoU with
  the nodule exceeds ``iou_positive`` (0.5) — positive sample balancing: a large nodule would
  otherwise give many correlated positives. With ``positive_fallback`` a nodule without such an
  anchor takes its best-IoU anchor if that IoU is at least ``iou_negative``. If the drawn anchor
  is already another nodule's positive, another candidate is drawn; a nodule left without a free
  candidate has no positive in this patch;
* **negative** (0): IoU below ``iou_negative`` (0.02) with every nodule;
* **ignored** (−1): everything else, including a big nodule's other candidates and every anchor
  overlapping a nodule below ``min_diameter_mm`` (such a nodule is never a target, but the
  network is not taught that it is background either).

**Nodules partly outside the patch.** All nodules that overlap the patch's anchors are passed
in (the sampler does), in patch coordinates. A nodule whose centre lies inside the patch,
``−0.5 ≤ c < P − 0.5`` on every axis, can get a positive even if part of it is cut off; a nodule
whose centre lies outside never does (no anchor is centred there, and its visible part may be a
sliver), but the anchors it overlaps by ``iou_negative`` or more are ignored rather than
negative, so the network is never taught that a piece of nodule is background.

The positive anchor's regression target is ``(dz, dy, dx, dr)`` of
:func:`~survfed.common.detection.anchors.encode_cubes`; other anchors' targets are 0 and unused.
"""

from __future__ import annotations

import numpy as np
import torch

from survfed.common.detection.anchors import anchor_grid, cube_iou, encode_cubes
from survfed.common.detection.config import DetectorConfig
from survfed.common.detection.scan import check_nodules

__all__ = ["IGNORE", "NEGATIVE", "POSITIVE", "make_targets"]

POSITIVE: int = 1
NEGATIVE: int = 0
IGNORE: int = -1


def make_targets(
    nodules: np.ndarray,
    patch_shape: tuple[int, int, int],
    config: DetectorConfig,
    rng: np.random.Generator,
) -> dict[str, torch.Tensor]:
    """Labels and regression targets of every anchor of a patch.

    Args:
        nodules: ``(n, 4)`` ``(z, y, x, diameter)`` in patch voxel coordinates (after any
            zoom or flip of the patch); ``n`` may be 0.
        patch_shape: ``(D, H, W)`` of the patch (multiples of 16).
        config: anchor sizes, IoU thresholds, ``positive_fallback``.
        rng: draws the positive anchor of each nodule.

    Returns:
        ``{"labels": int8 (d, h, w, A), "deltas": float32 (d, h, w, A, 4)}`` with
        ``(d, h, w) = patch_shape / 4``; labels are :data:`POSITIVE`, :data:`NEGATIVE` or
        :data:`IGNORE`.
    """
    nodules = check_nodules(nodules)
    if len(patch_shape) != 3 or any(int(s) % 16 or int(s) < 16 for s in patch_shape):
        raise ValueError(f"patch_shape must be three multiples of 16, got {patch_shape!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy Generator, got {type(rng).__name__}")
    out_shape = tuple(int(s) // config.stride for s in patch_shape)
    a = config.num_anchors
    anchors = anchor_grid(out_shape, config.anchors_vox, config.stride)  # (N, 4)
    n_anchors = anchors.shape[0]
    labels = torch.zeros(n_anchors, dtype=torch.int8)
    deltas = torch.zeros((n_anchors, 4), dtype=torch.float32)
    if len(nodules):
        gt = torch.from_numpy(nodules).to(torch.float32)
        iou = cube_iou(anchors, gt)  # (N, n)
        labels[(iou >= config.iou_negative).any(dim=1)] = IGNORE
        limit = torch.tensor(patch_shape, dtype=torch.float32) - 0.5
        inside = ((gt[:, :3] >= -0.5) & (gt[:, :3] < limit)).all(dim=1)
        taken: set[int] = set()
        big = gt[:, 3] * config.spacing_mm >= config.min_diameter_mm
        for j in range(gt.shape[0]):
            if not bool(inside[j]) or not bool(big[j]):
                continue
            column = iou[:, j]
            candidates = (column > config.iou_positive).nonzero().flatten().tolist()
            if not candidates and config.positive_fallback:
                best = int(column.argmax())
                if float(column[best]) >= config.iou_negative:
                    candidates = [best]
            free = [c for c in candidates if c not in taken]
            if not free:
                continue
            chosen = free[int(rng.integers(len(free)))]
            taken.add(chosen)
            labels[chosen] = POSITIVE
            deltas[chosen] = encode_cubes(gt[j : j + 1], anchors[chosen : chosen + 1])[0]
    return {
        "labels": labels.view(*out_shape, a),
        "deltas": deltas.view(*out_shape, a, 4),
    }
