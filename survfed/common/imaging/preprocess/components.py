"""Step 2b: choose the lungs among the 3D air components (seed 003 §III.B.1, second half).

On the binarised volume (see :mod:`.binarize`):

1. Label the 3D components (6-connected, as the paper's code).
2. Drop the components holding one of the volume's corners (the 8 corners and the middles of
   the four front/back edges of the bottom and top slice, as the paper's code). Where such a
   point lies outside the measured region (NaN: outside a circular field of view or outside an
   oblique scan), the first measured voxel on the line from that point to the slice centre
   stands in for it, so that the air between the body and the edge of the field of view is
   still recognised as outside air.
3. Keep components whose volume lies in ``[min_volume_l, max_volume_l]``.
4. For each remaining component, over its slices with an area above ``min_slice_area_mm2``,
   average the minimum distance to the image centre (the slice's centre axis); drop it when the
   average exceeds ``max_mean_distance_mm`` (or when no slice is that large).
5. Top slices: when nothing is left, the lungs may touch the outside air through the top slices
   (neck, airway); remove the top ``cut`` slices and retry. The paper's code tries ``cut`` =
   step, 2·step, 3·step, ...; here the cuts grow geometrically (step, 2·step, 4·step, ...) until
   a lung is found and then bisect down to the smallest cut (in steps) that finds it, which is
   the same cut whenever a larger cut keeps finding the lung, in a few labellings instead of up
   to one per step (scans that include the head need 100 mm or more). When a lung is found,
   the removed slices are added back where they are air, within ``cut`` voxels (taxicab) of the
   found lungs and connected to them.

:func:`fill_holes_3d` then fills 3D holes: background components that do not reach the border.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from survfed.common.imaging.preprocess.backend import NUMPY, ArrayBackend
from survfed.common.imaging.preprocess.config import PreprocessConfig, PreprocessError
from survfed.common.imaging.preprocess.runs import label_runs

__all__ = ["ComponentResult", "bounding_box", "fill_enclosed", "fill_holes_3d", "select_lungs"]

SMALL_FIELD_OF_VIEW_MM = 250.0
"""When no lung is found and the field of view is narrower than this, the error says so: an
adult chest is 280-380 mm wide, and lung that reaches a corner of the image is outside air to
step 2."""

_PARTIAL_L = 0.05
"""Inner air components at least this big reaching the first or last slice hint at a partial
scan (reported with a "no lung found" error)."""


def _structure(backend: ArrayBackend, connectivity: int) -> Any:
    from scipy.ndimage import generate_binary_structure

    return backend.xp.asarray(generate_binary_structure(3, connectivity))


@dataclass(frozen=True)
class ComponentResult:
    """What :func:`select_lungs` found.

    Attributes:
        mask: bool ``(Z, Y, X)``, the chosen lung components (backend array).
        n_components: how many components were kept.
        top_cut: top slices removed to find them (0 = none).
        volumes_l: volumes of the kept components, litres.
    """

    mask: Any
    n_components: int
    top_cut: int
    volumes_l: tuple[float, ...]


def _corner_points(shape: tuple[int, int, int]) -> list[tuple[int, int]]:
    _, y, x = shape
    mid = x // 2
    return [(0, 0), (0, x - 1), (y - 1, 0), (y - 1, x - 1), (0, mid), (y - 1, mid)]


def _measured_point(valid_slice: np.ndarray, point: tuple[int, int]) -> tuple[int, int] | None:
    """``point``, or the first measured pixel on the line from it to the slice centre."""
    y, x = valid_slice.shape
    if valid_slice[point]:
        return point
    n = 2 * max(y, x)
    cy, cx = (y - 1) / 2.0, (x - 1) / 2.0
    t = np.linspace(0.0, 1.0, n)
    ys = np.rint(point[0] + t * (cy - point[0])).astype(int)
    xs = np.rint(point[1] + t * (cx - point[1])).astype(int)
    hit = np.flatnonzero(valid_slice[ys, xs])
    if hit.size == 0:
        return None
    return int(ys[hit[0]]), int(xs[hit[0]])


def _background_labels(
    labels: Any, valid: np.ndarray | None, top: int, backend: ArrayBackend
) -> set[int]:
    """Labels at the (measured) corner points of slice 0 and slice ``top``."""
    found: set[int] = set()
    points = _corner_points(labels.shape)
    for z in (0, top):
        for point in points:
            p = point if valid is None else _measured_point(valid[z], point)
            if p is not None:
                found.add(int(labels[z, p[0], p[1]]))
    found.discard(0)
    return found


class _Pass(NamedTuple):
    """One pass of steps 1-4 (:func:`_analyse`).

    Attributes:
        labels: the 3D component labels.
        kept: the labels kept as lung.
        volumes: their volumes (L).
        largest: the largest component's volume (L).
        largest_inner: the largest inner one's (not connected to the outside air; L).
        partial: an inner air component of at least ``_PARTIAL_L`` reaches the first or last
            slice.
        off_centre_mm: the smallest mean distance to the image centre among the components
            of lung size dropped by the distance rule alone (None when there is none).
    """

    labels: Any
    kept: list[int]
    volumes: list[float]
    largest: float
    largest_inner: float
    partial: bool
    off_centre_mm: float | None = None


def _analyse(
    air: Any,
    valid: np.ndarray | None,
    config: PreprocessConfig,
    backend: ArrayBackend,
) -> _Pass:
    """One pass of steps 1-4 on ``air``."""
    xp, ndi = backend.xp, backend.ndi
    labels, n = ndi.label(air, structure=_structure(backend, 1))
    n = int(n)
    if n == 0:
        return _Pass(labels, [], [], 0.0, 0.0, False)
    runs = label_runs(labels, backend)
    voxel_l = config.spacing_mm**3 / 1e6
    length = runs.length
    volumes = backend.asnumpy(xp.bincount(runs.label, weights=length, minlength=n + 1))
    volumes = volumes * voxel_l
    volumes[0] = 0.0
    largest = float(volumes.max())
    background = _background_labels(labels, valid, air.shape[0] - 1, backend)
    in_range = (volumes >= config.min_volume_l) & (volumes <= config.max_volume_l)
    candidates = [int(c) for c in np.flatnonzero(in_range) if int(c) not in background]
    ends = np.zeros(n + 1, dtype=bool)
    for z in (0, air.shape[0] - 1):
        ends[backend.asnumpy(xp.unique(labels[z]))] = True
    ends[0] = False
    inner = np.ones(n + 1, dtype=bool)
    inner[list(background)] = False
    partial = bool(np.any(ends & inner & (volumes >= _PARTIAL_L)))
    largest_inner = float(volumes[inner].max())
    if not candidates:
        return _Pass(labels, [], [], largest, largest_inner, partial)
    # per candidate and slice: area and minimum distance to the slice centre, from the runs
    is_candidate = np.zeros(n + 1, dtype=bool)
    is_candidate[candidates] = True
    pick = xp.asarray(is_candidate)[runs.label]
    lab = backend.asnumpy(runs.label[pick])
    z = backend.asnumpy(runs.z[pick])
    y = backend.asnumpy(runs.y[pick]).astype(np.float64)
    x0 = backend.asnumpy(runs.x0[pick]).astype(np.float64)
    x1 = backend.asnumpy(runs.x1[pick]).astype(np.float64)
    cy, cx = (air.shape[1] - 1) / 2.0, (air.shape[2] - 1) / 2.0
    dist = config.spacing_mm * np.hypot(y - cy, np.clip(cx, x0, x1) - cx)
    key = lab * air.shape[0] + z
    order = np.lexsort((dist, key))
    key, dist, run_len = key[order], dist[order], (x1 - x0 + 1)[order]
    first = np.r_[True, key[1:] != key[:-1]]
    group = np.cumsum(first) - 1
    area = np.bincount(group, weights=run_len) * config.spacing_mm**2
    min_dist = dist[first]
    group_label = key[first] // air.shape[0]
    kept, kept_volumes, far = [], [], []
    for c in candidates:
        sel = (group_label == c) & (area > config.min_slice_area_mm2)
        if not sel.any():
            continue
        mean_distance = float(min_dist[sel].mean())
        if mean_distance < config.max_mean_distance_mm:
            kept.append(c)
            kept_volumes.append(float(volumes[c]))
        else:
            far.append(mean_distance)
    return _Pass(
        labels, kept, kept_volumes, largest, largest_inner, partial, min(far) if far else None
    )


def _fill_back(lungs: Any, air: Any, cut: int, backend: ArrayBackend) -> Any:
    """Add the removed top ``cut`` slices back where air, near and connected to ``lungs``.

    The paper's code: ``(lungs with the top slices of air restored) & dilate(lungs, cut)``,
    keeping the components that hold lung voxels. Only the top ``2 cut`` slices can change.
    """
    ndi = backend.ndi
    z = air.shape[0]
    z0 = max(0, z - 2 * cut - 1)
    slab_lungs = lungs[z0:]
    if not bool(slab_lungs.any()):
        return lungs
    near = ndi.binary_dilation(slab_lungs, structure=_structure(backend, 1), iterations=cut)
    candidate = slab_lungs.copy()
    top = z - cut - z0
    candidate[top:] = air[z - cut :]
    candidate &= near
    candidate[:top] |= slab_lungs[:top]
    grown = ndi.binary_propagation(slab_lungs, structure=_structure(backend, 1), mask=candidate)
    out = lungs.copy()
    out[z0:] = grown
    return out


def select_lungs(
    air: Any,
    config: PreprocessConfig,
    *,
    valid: np.ndarray | None = None,
    backend: ArrayBackend = NUMPY,
) -> ComponentResult:
    """Steps 1-5 of the module docstring.

    Args:
        air: bool ``(Z, Y, X)`` after :func:`~.binarize.filter_slice_components`.
        config: the volume limits, the distance criterion and the top-cut schedule.
        valid: optional host bool ``(Z, Y, X)``: False where nothing was measured (used to
            move corner points into the field of view).
        backend: the array backend holding ``air``.

    Raises:
        PreprocessError: no component qualifies as lung, whatever the top cut; the message
            gives the volume of the largest air component inside the body.
    """
    z = air.shape[0]
    step = config.top_cut_step_vox
    max_cut = min(config.max_top_cut_vox, z - 3) // step * step
    largest_seen = 0.0
    partial_seen = False
    off_centre: float | None = None

    def attempt(cut: int) -> tuple[Any, list[int], list[float], float]:
        nonlocal largest_seen, partial_seen, off_centre
        found = _analyse(
            air[: z - cut], None if valid is None else valid[: z - cut], config, backend
        )
        largest_seen = max(largest_seen, found.largest_inner)
        partial_seen = partial_seen or (found.partial and cut == 0)
        if found.off_centre_mm is not None:
            off_centre = min(found.off_centre_mm, off_centre or np.inf)
        return found.labels, found.kept, found.volumes, found.largest

    found = None
    labels, kept, volumes, largest = attempt(0)
    if kept:
        found = (0, labels, kept, volumes)
    else:
        # cuts step, 2 step, 4 step, ... until a lung appears, then bisect down to the smallest
        # cut (in steps) that still finds it; cutting only shrinks components, so stop once
        # none is large enough any more
        lo, cut = 0, step
        while found is None and largest >= config.min_volume_l and 0 < cut <= max_cut:
            labels, kept, volumes, largest = attempt(cut)
            if kept:
                found = (cut, labels, kept, volumes)
            else:
                lo = cut
                cut = max_cut if lo < max_cut < 2 * lo else 2 * lo
                if cut <= lo:
                    break
        while found is not None and found[0] - lo > step:
            mid = lo + (found[0] - lo) // (2 * step) * step
            labels, kept, volumes, _ = attempt(mid)
            if kept:
                found = (mid, labels, kept, volumes)
            else:
                lo = mid
    if found is not None:
        cut, labels, kept, volumes = found
        xp = backend.xp
        lungs = xp.zeros(air.shape, dtype=bool)
        lungs[: z - cut] = xp.isin(labels, xp.asarray(kept))
        if cut > 0:
            lungs = _fill_back(lungs, air, cut, backend)
        return ComponentResult(lungs, len(kept), cut, tuple(volumes))
    cut = max_cut
    fov_mm = _field_of_view_mm(air.shape, valid, config.spacing_mm)
    raise PreprocessError(
        "no lung found: no air component of "
        f"{config.min_volume_l:g}-{config.max_volume_l:g} L inside the body near the image "
        f"centre (largest air component inside the body {largest_seen:.2f} L"
        + (f", top slices removed up to {cut * config.spacing_mm:.0f} mm)" if cut > 0 else ")")
        + (
            f"; air of lung size lies {off_centre:.0f} mm from the image centre on average (the "
            f"limit is {config.max_mean_distance_mm:g} mm): is the patient far off the centre "
            "of the field of view?"
            if off_centre is not None
            else "; air inside the body reaches the first or last slice: the scan may cover "
            "only part of the chest"
            if partial_seen
            else ""
        )
        + (
            f"; the field of view is only {fov_mm:.0f} mm across: lung that reaches the "
            "image's corners is taken for outside air (a reconstruction for the heart, or a "
            "large patient?)"
            if fov_mm < SMALL_FIELD_OF_VIEW_MM
            else ""
        )
    )


def _field_of_view_mm(shape: tuple[int, ...], valid: np.ndarray | None, spacing: float) -> float:
    """The narrower in-plane extent (mm) of the measured region, through the middle slice's
    centre (the grid's, where everything was measured)."""
    if valid is None:
        return min(shape[1], shape[2]) * spacing
    middle = valid[shape[0] // 2]
    across = (middle[shape[1] // 2, :], middle[:, shape[2] // 2])
    return min(float(np.count_nonzero(line)) for line in across) * spacing


def fill_holes_3d(mask: Any, backend: ArrayBackend = NUMPY) -> Any:
    """Fill 3D holes: background components (26-connected) that do not reach the border.

    Works in the mask's bounding box plus one voxel, where every border voxel is background
    connected to the outside (one labelling of the background, no iterative propagation).
    """
    box = bounding_box(mask, backend, margin=1)
    if box is None:
        return mask
    out = mask.copy()
    out[box] = fill_enclosed(mask[box], backend.xp.ones((3, 3, 3), dtype=bool), (0, 1, 2), backend)
    return out


def fill_enclosed(
    mask: Any, structure: Any, border_axes: tuple[int, ...], backend: ArrayBackend = NUMPY
) -> Any:
    """``mask`` plus its background components (under ``structure``) that touch no border face.

    Args:
        mask: bool ``(Z, Y, X)``.
        structure: background connectivity (e.g. 26-connected, or 4-connected within slices).
        border_axes: the axes whose two end faces count as the border (``(1, 2)`` for holes
            within each slice).
    """
    xp, ndi = backend.xp, backend.ndi
    labels, n = ndi.label(~mask, structure=structure)
    n = int(n)
    if n == 0:
        return mask
    outside = xp.zeros(n + 1, dtype=bool)
    for axis in border_axes:
        for index in (0, mask.shape[axis] - 1):
            face = xp.take(labels, index, axis=axis)
            outside[xp.unique(face)] = True
    outside[0] = True
    return mask | ~outside[labels]


def bounding_box(
    mask: Any, backend: ArrayBackend = NUMPY, *, margin: int = 0
) -> tuple[slice, slice, slice] | None:
    """Slices of ``mask``'s bounding box grown by ``margin`` (clipped), None if empty."""
    xp = backend.xp
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = xp.flatnonzero(mask.any(axis=other))
        if hit.size == 0:
            return None
        lo = max(0, int(hit[0]) - margin)
        hi = min(mask.shape[axis], int(hit[-1]) + 1 + margin)
        out.append(slice(lo, hi))
    return tuple(out)  # type: ignore[return-value]
