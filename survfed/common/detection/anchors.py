r"""Anchor cubes, cube IoU and the N-Net box coder (seed 003 §IV-B, §IV-D).

**Cubes.** A nodule, an anchor and a proposal are all *cubes* ``(z, y, x, d)``: centre and edge
length in voxels. Overlaps use MONAI's box utilities on the equivalent axis-aligned boxes
(``monai.data.box_utils``, mode ``"cccwhd"`` ↔ ``"xyzxyz"``; survfed passes ``(z, y, x)`` where
MONAI says ``(x, y, z)`` — IoU and NMS are symmetric in the axes, so the names do not matter).

**Anchor grid.** Output voxel ``(a, b, c)`` of an ``(d, h, w)`` output grid (stride ``s`` = 4)
covers input voxels ``s·a … s·a + s − 1``; its anchors are centred at

.. math:: A_z = s\,(a + \tfrac12) - \tfrac12, \quad A_y = s\,(b + \tfrac12) - \tfrac12, \quad
          A_x = s\,(c + \tfrac12) - \tfrac12

(1.5, 5.5, 9.5, … for ``s`` = 4), one cube per anchor size :math:`A_r`. :func:`anchor_grid`
returns them flattened in the order of the network output ``(d, h, w, A)``.

**Coder** (§IV-D). For a ground-truth cube :math:`G` and an anchor :math:`A`,

.. math:: d_z = \frac{G_z - A_z}{A_r},\quad d_y = \frac{G_y - A_y}{A_r},\quad
          d_x = \frac{G_x - A_x}{A_r},\quad d_r = \log\frac{G_r}{A_r}.

This is MONAI's ``BoxCoder`` with unit weights restricted to cubes (its three size terms are
then all :math:`d_r`); the tests check the two against each other.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.data.box_utils import box_iou, convert_box_mode

__all__ = ["anchor_grid", "cube_iou", "cubes_to_corners", "decode_cubes", "encode_cubes"]

_MAX_LOG_SCALE = float(np.log(1000.0 / 16))  # clamp of dr before exp(), as MONAI's BoxCoder


def _as_cubes(cubes: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    t = torch.as_tensor(cubes)
    if not t.is_floating_point():
        t = t.to(torch.float32)
    if t.ndim != 2 or t.shape[1] != 4:
        raise ValueError(f"{name} must have shape (n, 4) = (z, y, x, d), got {tuple(t.shape)}")
    return t


def anchor_grid(
    out_shape: tuple[int, int, int], sizes: tuple[float, ...], stride: int = 4
) -> torch.Tensor:
    """All anchor cubes of an output grid.

    Args:
        out_shape: output grid ``(d, h, w)``.
        sizes: anchor edges in voxels (``DetectorConfig.anchors_vox``).
        stride: output stride in voxels.

    Returns:
        float32 ``(d·h·w·A, 4)`` cubes ``(z, y, x, edge)`` in voxels, in the order of the
        network output ``(d, h, w, A)`` flattened.
    """
    if len(out_shape) != 3 or any(int(n) < 1 for n in out_shape):
        raise ValueError(f"out_shape must be three sizes >= 1, got {out_shape!r}")
    if not sizes or any(s <= 0 for s in sizes):
        raise ValueError(f"sizes must be one or more edges > 0, got {sizes!r}")
    axes = [stride * (torch.arange(int(n), dtype=torch.float32) + 0.5) - 0.5 for n in out_shape]
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    centres = torch.stack([zz, yy, xx], dim=-1).reshape(-1, 1, 3)
    a = len(sizes)
    edges = torch.tensor(sizes, dtype=torch.float32).view(1, a, 1)
    grid = torch.cat([centres.expand(-1, a, 3), edges.expand(centres.shape[0], a, 1)], dim=-1)
    return grid.reshape(-1, 4)


def cubes_to_corners(cubes: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``(n, 4)`` cubes ``(z, y, x, d)`` → ``(n, 6)`` boxes ``(z0, y0, x0, z1, y1, x1)``
    (MONAI ``StandardMode``)."""
    t = _as_cubes(cubes, "cubes")
    centre_size = torch.cat([t[:, :3], t[:, 3:4].expand(-1, 3)], dim=1)
    return convert_box_mode(centre_size, src_mode="cccwhd", dst_mode="xyzxyz")  # type: ignore[return-value]


def cube_iou(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> torch.Tensor:
    """IoU of every cube in ``a`` ``(n, 4)`` with every cube in ``b`` ``(m, 4)`` → ``(n, m)``,
    via ``monai.data.box_utils.box_iou``."""
    ta, tb = _as_cubes(a, "a"), _as_cubes(b, "b")
    if ta.shape[0] == 0 or tb.shape[0] == 0:
        return torch.zeros((ta.shape[0], tb.shape[0]), dtype=torch.float32)
    return box_iou(cubes_to_corners(ta.float()), cubes_to_corners(tb.float()))  # type: ignore[return-value]


def encode_cubes(gt: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Regression targets ``(dz, dy, dx, dr)`` of ground-truth cubes w.r.t. anchors.

    Args:
        gt: ``(..., 4)`` cubes ``(z, y, x, d)``, ``d > 0``.
        anchors: ``(..., 4)`` anchor cubes, same shape.

    Returns:
        ``(..., 4)`` targets (see the module docstring).
    """
    if gt.shape != anchors.shape or gt.shape[-1] != 4:
        raise ValueError(
            f"gt and anchors must have the same shape (..., 4), got {tuple(gt.shape)} "
            f"and {tuple(anchors.shape)}"
        )
    ar = anchors[..., 3:4]
    return torch.cat([(gt[..., :3] - anchors[..., :3]) / ar, torch.log(gt[..., 3:4] / ar)], dim=-1)


def decode_cubes(deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode_cubes`: ``(..., 4)`` deltas + anchors → ``(..., 4)`` cubes.

    ``dr`` is clamped at ``log(1000 / 16)`` before ``exp`` (as MONAI's ``BoxCoder``), so an
    untrained network cannot produce infinite sizes.
    """
    if deltas.shape != anchors.shape or deltas.shape[-1] != 4:
        raise ValueError(
            f"deltas and anchors must have the same shape (..., 4), got {tuple(deltas.shape)} "
            f"and {tuple(anchors.shape)}"
        )
    ar = anchors[..., 3:4]
    centre = anchors[..., :3] + deltas[..., :3] * ar
    size = torch.exp(deltas[..., 3:4].clamp(max=_MAX_LOG_SCALE)) * ar
    return torch.cat([centre, size], dim=-1)
