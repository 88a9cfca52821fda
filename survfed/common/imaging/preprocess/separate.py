"""Step 3: split the lung mask into the left and the right lung (seed 003 §III.B.2).

As in the paper's code:

1. Erode the mask (6-connected cross, iterated) until its two largest 18-connected components
   have a volume ratio below ``max_volume_ratio`` (4.8): they are the cores of the two lungs. At
   most ``max_erosion_mm`` (22 iterations at 1 mm) are tried, the un-eroded mask first.
2. Every voxel of the mask goes to the nearer core (Euclidean distance in mm; one distance
   transform with nearest-core indices).
3. Each lung keeps, per slice, its largest 8-connected parts covering ``main_cover`` (95 %) of
   its area, plus whatever of the rest lies inside their convex hulls; then its largest
   26-connected 3D component.
4. 2D holes of each lung are filled (slice by slice, 4-connected background).

When no split is found, the whole mask is one lung (with a warning from the caller). The lung
whose centre lies towards +x (patient left in LPS) is the left lung.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import generate_binary_structure

from survfed.common.imaging.preprocess.backend import NUMPY, ArrayBackend
from survfed.common.imaging.preprocess.binarize import SLICE_8
from survfed.common.imaging.preprocess.components import bounding_box, fill_enclosed
from survfed.common.imaging.preprocess.config import PreprocessConfig
from survfed.common.imaging.preprocess.hull_dilate import convex_hull_2d
from survfed.common.imaging.preprocess.runs import label_runs

__all__ = ["SLICE_4", "SeparationResult", "erode_cross", "fill_holes_2d", "separate_lungs"]

SLICE_4 = np.zeros((3, 3, 3), dtype=bool)
SLICE_4[1] = generate_binary_structure(2, 1)
SLICE_4.flags.writeable = False
"""4-connectivity within a slice, none across slices."""


@dataclass(frozen=True)
class SeparationResult:
    """The two lungs (backend arrays, bool ``(Z, Y, X)``, same grid as the input mask).

    Attributes:
        right: the right lung (towards -x); all of the mask when not separated.
        left: the left lung (towards +x); empty when not separated.
        separated: whether two cores were found.
        erosion: erosion iterations at which they were found (or tried, when not found).
    """

    right: Any
    left: Any
    separated: bool
    erosion: int


def fill_holes_2d(mask: Any, backend: ArrayBackend = NUMPY) -> Any:
    """Fill the holes of every slice (background 4-connected, not reaching the slice border)."""
    box = bounding_box(mask, backend)
    if box is None:
        return mask
    out = mask.copy()
    out[box] = fill_enclosed(mask[box], backend.xp.asarray(SLICE_4), (1, 2), backend)
    return out


def erode_cross(mask: Any, backend: ArrayBackend = NUMPY) -> Any:
    """One binary erosion by the 6-connected cross, outside the array counting as background.

    The same as ``scipy.ndimage.binary_erosion(mask)``, by slicing (cheaper).
    """
    out = mask.copy()
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(1, None), slice(None, -1)
        out[tuple(hi)] &= mask[tuple(lo)]
        out[tuple(lo)] &= mask[tuple(hi)]
        edge = [slice(None)] * 3
        for index in (0, -1):
            edge[axis] = index
            out[tuple(edge)] = False
    return out


def _two_cores(
    mask: Any, config: PreprocessConfig, backend: ArrayBackend
) -> tuple[Any, Any, int] | None:
    xp, ndi = backend.xp, backend.ndi
    s18 = xp.asarray(generate_binary_structure(3, 2))
    current = mask
    iterations = max(1, config.max_erosion_vox)
    for k in range(iterations):
        labels, n = ndi.label(current, structure=s18)
        n = int(n)
        if n > 1:
            sizes = backend.asnumpy(xp.bincount(labels.reshape(-1), minlength=n + 1))
            sizes[0] = 0
            order = np.argsort(-sizes, kind="stable")
            a, b = int(order[0]), int(order[1])
            if sizes[b] > 0 and sizes[a] / sizes[b] < config.max_volume_ratio:
                return labels == a, labels == b, k
        if k + 1 < iterations:
            current = erode_cross(current, backend)
            if not bool(current.any()):
                return None
    return None


def _extract_main(lung: Any, config: PreprocessConfig, backend: ArrayBackend) -> Any:
    """Step 3 of the module docstring for one lung."""
    xp, ndi = backend.xp, backend.ndi
    labels, n = ndi.label(lung, structure=xp.asarray(SLICE_8))
    n = int(n)
    if n == 0:
        return lung
    runs = label_runs(labels, backend)
    area = np.rint(
        backend.asnumpy(xp.bincount(runs.label, weights=runs.length, minlength=n + 1))[1:]
    ).astype(np.int64)
    z_of = np.zeros(n + 1, dtype=np.int64)
    z_of[backend.asnumpy(runs.label)] = backend.asnumpy(runs.z)
    z_of = z_of[1:]
    order = np.lexsort((-area, z_of))
    z_sorted, a_sorted = z_of[order], area[order]
    starts = np.r_[0, np.flatnonzero(np.diff(z_sorted)) + 1]
    totals = np.add.reduceat(a_sorted, starts)
    group = np.repeat(np.arange(starts.size), np.diff(np.r_[starts, a_sorted.size]))
    cum = np.cumsum(a_sorted)
    before = cum - a_sorted - np.r_[0, cum[starts[1:] - 1]][group]
    selected = np.zeros(n + 1, dtype=bool)
    selected[order + 1] = before < config.main_cover * totals[group]
    keep = selected.copy()
    # unselected parts survive inside the convex hull of a selected part of their slice
    rest = np.flatnonzero(~selected[1:]) + 1
    for z in np.unique(z_of[rest - 1]):
        z = int(z)
        plane = backend.asnumpy(labels[z])
        hull = np.zeros(plane.shape, dtype=bool)
        for label in np.flatnonzero(selected[1:] & (z_of == z)) + 1:
            hull |= convex_hull_2d(plane == label)
        for label in rest[z_of[rest - 1] == z]:
            part = plane == label
            if (part & hull).any():
                plane[part & ~hull] = 0
                keep[label] = True
        labels[z] = xp.asarray(plane)
    lung = xp.asarray(keep)[labels]
    labels3, n3 = ndi.label(lung, structure=xp.ones((3, 3, 3), dtype=bool))
    n3 = int(n3)
    if n3 <= 1:
        return lung
    sizes = backend.asnumpy(xp.bincount(labels3.reshape(-1), minlength=n3 + 1))
    sizes[0] = 0
    return labels3 == int(np.argmax(sizes))


def _main_part(lung: Any, config: PreprocessConfig, backend: ArrayBackend) -> Any:
    """:func:`_extract_main` then :func:`fill_holes_2d`, in the lung's own bounding box."""
    box = bounding_box(lung, backend)
    if box is None:
        return lung
    out = backend.xp.zeros(lung.shape, dtype=bool)
    out[box] = fill_holes_2d(_extract_main(lung[box], config, backend), backend)
    return out


def separate_lungs(
    mask: Any, config: PreprocessConfig, backend: ArrayBackend = NUMPY
) -> SeparationResult:
    """Split ``mask`` (bool ``(Z, Y, X)``, backend array) into right and left lung."""
    xp, ndi = backend.xp, backend.ndi
    box = bounding_box(mask, backend)
    empty = xp.zeros(mask.shape, dtype=bool)
    if box is None:
        return SeparationResult(mask, empty, False, 0)
    block = mask[box]
    cores = _two_cores(block, config, backend)
    if cores is None:
        right = empty.copy()
        right[box] = fill_holes_2d(block, backend)
        return SeparationResult(right, empty, False, max(1, config.max_erosion_vox))
    core_a, core_b, k = cores
    seeds = core_a | core_b
    indices = ndi.distance_transform_edt(
        ~seeds,
        sampling=(config.spacing_mm,) * 3,
        return_distances=False,
        return_indices=True,
    )
    nearest_a = core_a[indices[0], indices[1], indices[2]]
    del indices
    lung_a = _main_part(block & nearest_a, config, backend)
    lung_b = _main_part(block & ~nearest_a, config, backend)
    xs = xp.arange(block.shape[2], dtype=xp.float64)
    mean_x = [
        backend.scalar((lung.sum(axis=(0, 1)) * xs).sum() / max(1, int(lung.sum())))
        for lung in (lung_a, lung_b)
    ]
    left_block, right_block = (lung_a, lung_b) if mean_x[0] > mean_x[1] else (lung_b, lung_a)
    right, left = empty.copy(), empty.copy()
    right[box] = right_block
    left[box] = left_block
    return SeparationResult(right, left, True, k)
