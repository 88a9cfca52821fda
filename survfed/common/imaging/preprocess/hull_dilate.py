"""Step 4: per-slice convex hulls, dilation and union (seed 003 §III.B.2).

For each lung, each slice's mask is replaced by its convex hull unless the hull's area exceeds
``max_hull_ratio`` (1.5) times the mask's (crescent-shaped basal slices keep their mask). Each
lung is then dilated by ``dilation_mm`` (10 voxels at 1 mm) with the 6-connected cross iterated
(a taxicab ball, as the paper's code), and the two are united.

The convex hull of a slice follows scikit-image's ``convex_hull_image``: the hull of the pixels'
edge midpoints (pixel centres ± 0.5 along each axis), pixel centres inside or on it. It is
computed exactly (Qhull) from the leftmost and rightmost pixel of each row, which span the same
hull, and rasterised row by row from the hull's half-planes.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_dilation, generate_binary_structure
from scipy.spatial import ConvexHull

from survfed.common.imaging.preprocess.config import PreprocessConfig

__all__ = ["convex_hull_2d", "dilate_taxicab", "final_mask", "hull_or_mask"]

_TOL = 1e-9


def _row_extremes(mask2d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = np.flatnonzero(mask2d.any(axis=1))
    sub = mask2d[rows]
    first = np.argmax(sub, axis=1)
    last = mask2d.shape[1] - 1 - np.argmax(sub[:, ::-1], axis=1)
    return rows, first, last


def convex_hull_2d(mask2d: np.ndarray) -> np.ndarray:
    """Convex hull image of a 2D mask (scikit-image's definition, exact).

    Args:
        mask2d: bool ``(Y, X)``.

    Returns:
        bool ``(Y, X)``: pixel centres inside or on the hull of the pixels' edge midpoints;
        all False for an empty mask.
    """
    mask2d = np.asarray(mask2d, dtype=bool)
    out = np.zeros(mask2d.shape, dtype=bool)
    rows, first, last = _row_extremes(mask2d)
    if rows.size == 0:
        return out
    r = rows.astype(np.float64)
    pts = np.concatenate(
        [
            np.stack([r - 0.5, first], axis=1),
            np.stack([r + 0.5, first], axis=1),
            np.stack([r, first - 0.5], axis=1),
            np.stack([r - 0.5, last], axis=1),
            np.stack([r + 0.5, last], axis=1),
            np.stack([r, last + 0.5], axis=1),
        ]
    ).astype(np.float64)
    eq = ConvexHull(pts).equations  # a_r * row + a_c * col + b <= 0 inside
    a_r, a_c, b = eq[:, 0], eq[:, 1], eq[:, 2]
    ys = np.arange(rows[0], rows[-1] + 1, dtype=np.float64)
    rhs = -(a_r[None, :] * ys[:, None] + b[None, :])  # a_c * col <= rhs
    pos, neg, flat = a_c > _TOL, a_c < -_TOL, np.abs(a_c) <= _TOL
    hi = np.min(np.where(pos, rhs / np.where(pos, a_c, 1.0), np.inf), axis=1)
    lo = np.max(np.where(neg, rhs / np.where(neg, a_c, 1.0), -np.inf), axis=1)
    ok = np.all(~flat[None, :] | (rhs >= -_TOL), axis=1)
    lo_i = np.ceil(lo - _TOL).astype(np.int64)
    hi_i = np.floor(hi + _TOL).astype(np.int64)
    cols = np.arange(mask2d.shape[1])
    band = (cols[None, :] >= lo_i[:, None]) & (cols[None, :] <= hi_i[:, None]) & ok[:, None]
    out[rows[0] : rows[-1] + 1] = band
    return out


def hull_or_mask(lung: np.ndarray, max_ratio: float) -> np.ndarray:
    """Each slice of ``lung`` (bool ``(Z, Y, X)``) replaced by its hull unless it is too big."""
    out = lung.copy()
    for z in np.flatnonzero(lung.any(axis=(1, 2))):
        plane = lung[z]
        hull = convex_hull_2d(plane)
        if hull.sum() <= max_ratio * plane.sum():
            out[z] = hull
    return out


def _box(mask: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        if hit.size == 0:
            return None
        out.append(slice(max(0, hit[0] - margin), min(mask.shape[axis], hit[-1] + 1 + margin)))
    return tuple(out)


def dilate_taxicab(mask: np.ndarray, radius: int) -> np.ndarray:
    """Dilate by the 6-connected cross iterated ``radius`` times (a taxicab ball)."""
    if radius <= 0:
        return mask.copy()
    out = np.zeros(mask.shape, dtype=bool)
    box = _box(mask, radius)
    if box is None:
        return out
    cross = generate_binary_structure(3, 1)
    out[box] = binary_dilation(mask[box], structure=cross, iterations=radius)
    return out


def final_mask(
    right: np.ndarray, left: np.ndarray, config: PreprocessConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Hulls, dilation and union of the two lungs.

    Returns:
        ``(mask, hulls)``: the dilated union and the undilated union of the hulls, bool.
    """
    mask = np.zeros(right.shape, dtype=bool)
    hulls = np.zeros(right.shape, dtype=bool)
    for lung in (right, left):
        box = _box(lung, config.dilation_vox)
        if box is None:
            continue
        hull = hull_or_mask(lung[box], config.max_hull_ratio)
        hulls[box] |= hull
        mask[box] |= dilate_taxicab(hull, config.dilation_vox)
    return mask, hulls
