"""Nodule-centred crops in patient space, windowed to a fixed HU range.

Each crop is resampled directly from the scan (never the whole volume) onto a cubic grid whose
axes are the patient axes (LPS: +x left, +y posterior, +z head), with isotropic spacing and its
centre on the nodule centre in millimetres. So the same anatomy gives the same crop whatever the
acquisition orientation (axial head-first, feet-first, tilted, rotated) and voxel spacing.

Crop array order is ``[z, y, x]`` (the same ``[k, j, i]`` order as :class:`Volume` with an
identity direction), voxel ``[c, c, c]`` with ``c = (S - 1) / 2`` lying on the nodule centre.

Intensities: linear interpolation in Hounsfield units; points outside the scan are air
(:data:`AIR_HU`); then HU are clipped to ``hu_window`` and mapped linearly to ``[0, 1]`` with
those fixed constants — no statistic is computed from the image or pooled across sites.

Missing nodules: a patient with fewer than ``k`` centres gets blank crops (all zeros, the value
of the window's lower bound) flagged ``present=False``, as in Liao et al.'s top-5 proposals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from survfed.common.imaging.volume import Volume

__all__ = ["AIR_HU", "crop_grid_origin", "extract_crops", "window_hu"]

AIR_HU = -1000.0
"""Value (HU, before windowing) of crop voxels that fall outside the scan."""


def _check_window(hu_window: Sequence[float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in hu_window)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"hu_window must be two numbers (low, high) in HU, got {hu_window!r}"
        ) from err
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"hu_window must be finite with low < high, got {hu_window!r}")
    return lo, hi


def window_hu(hu: np.ndarray, hu_window: Sequence[float] = (-1200.0, 600.0)) -> np.ndarray:
    """Clip Hounsfield units to ``hu_window = (low, high)`` and scale linearly to ``[0, 1]``.

    Args:
        hu: array of any shape, HU.
        hu_window: ``(low, high)`` HU; ``low`` maps to 0, ``high`` to 1.

    Returns:
        float32 array of the same shape with values in ``[0, 1]``.
    """
    lo, hi = _check_window(hu_window)
    out = np.clip(np.asarray(hu, dtype=np.float32), lo, hi)
    out -= np.float32(lo)
    out /= np.float32(hi - lo)
    return out


def crop_grid_origin(center_mm: np.ndarray, size_vox: int, spacing_mm: float) -> np.ndarray:
    """Patient position (mm) of voxel ``[0, 0, 0]`` of a crop centred on ``center_mm``.

    The crop grid is axis-aligned in LPS, so voxel ``[z, y, x]`` of the crop lies at
    ``origin + spacing_mm * (x, y, z)``; the centre ``(S - 1) / 2`` lands on ``center_mm``.
    """
    center = np.asarray(center_mm, dtype=np.float64).reshape(3)
    return center - 0.5 * (size_vox - 1) * spacing_mm


def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_centers(centers_mm: object) -> np.ndarray:
    centers = np.asarray(centers_mm, dtype=np.float64)
    if centers.size == 0:
        return np.zeros((0, 3))
    if centers.ndim != 2 or centers.shape[1] != 3:
        raise ValueError(f"centers_mm must have shape (n, 3) (x, y, z mm), got {centers.shape}")
    if not np.all(np.isfinite(centers)):
        raise ValueError("centers_mm must be finite (x, y, z) positions in mm")
    return centers


_MARGIN_VOX = 2
"""Extra voxels kept around the floor/ceil box of a crop's sample positions (which is all
linear interpolation reads): a safety margin keeping ITK's border handling away from the cut
edges. The result equals resampling the whole scan (tested)."""


def _covering_subvolume(
    volume: Volume, origin_mm: np.ndarray, size: int, spacing: float
) -> Volume | None:
    """The block of ``volume`` a crop samples from (plus a margin), or None if disjoint.

    Only this block is copied and handed to SimpleITK, so a crop costs time and memory in
    proportion to the crop, not to the scan.
    """
    corners = origin_mm + spacing * (size - 1) * np.array(
        [[i, j, m] for i in (0, 1) for j in (0, 1) for m in (0, 1)], dtype=np.float64
    )
    kji = volume.patient_to_voxel(corners)
    shape = np.asarray(volume.shape)
    lo = np.floor(kji.min(axis=0)).astype(int) - _MARGIN_VOX
    hi = np.ceil(kji.max(axis=0)).astype(int) + _MARGIN_VOX + 1
    lo, hi = np.clip(lo, 0, shape), np.clip(hi, 0, shape)
    if np.any(hi <= lo):
        return None
    block = volume.array[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    return Volume(
        np.ascontiguousarray(block, dtype=np.float32),
        volume.spacing,
        tuple(volume.voxel_to_patient(lo.astype(np.float64))),
        volume.direction,
    )


def extract_crops(
    volume: Volume,
    centers_mm: np.ndarray,
    *,
    k: int = 5,
    size_vox: int = 32,
    spacing_mm: float = 1.0,
    hu_window: Sequence[float] = (-1200.0, 600.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``k`` cubic crops around nodule centres, resampled to isotropic patient-axis grids.

    Args:
        volume: the CT scan (HU) with its geometry.
        centers_mm: ``(n, 3)`` nodule centres ``(x, y, z)`` in patient (LPS) mm, most important
            (largest / most suspicious) first; only the first ``k`` are used. ``n`` may be 0.
        k: number of crops returned per patient.
        size_vox: edge length ``S`` of each cubic crop in voxels.
        spacing_mm: isotropic voxel size of the crops in mm (edge = ``S * spacing_mm`` mm).
        hu_window: ``(low, high)`` HU window mapped to ``[0, 1]``.

    Returns:
        ``(crops, present)``: ``crops`` float32 ``(k, 1, S, S, S)`` in ``[0, 1]`` with array
        order ``[z, y, x]``; ``present`` bool ``(k,)``, False for blank (all-zero) crops.
    """
    import SimpleITK as sitk

    if not isinstance(volume, Volume):
        raise TypeError(f"volume must be a survfed Volume, got {type(volume).__name__}")
    centers = _check_centers(centers_mm)
    k = _check_positive_int(k, "k")
    size = _check_positive_int(size_vox, "size_vox")
    try:
        spacing = float(spacing_mm)
    except (TypeError, ValueError) as err:
        raise ValueError(f"spacing_mm must be a positive number, got {spacing_mm!r}") from err
    if not (math.isfinite(spacing) and spacing > 0):
        raise ValueError(f"spacing_mm must be a positive number, got {spacing_mm!r}")
    window = _check_window(hu_window)

    crops = np.zeros((k, 1, size, size, size), dtype=np.float32)
    present = np.zeros(k, dtype=bool)
    n_used = min(k, centers.shape[0])
    if n_used == 0:
        return crops, present

    resampler = sitk.ResampleImageFilter()
    resampler.SetSize((size, size, size))
    resampler.SetOutputSpacing((spacing, spacing, spacing))
    resampler.SetOutputDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetDefaultPixelValue(AIR_HU)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    for n in range(n_used):
        origin = crop_grid_origin(centers[n], size, spacing)
        sub = _covering_subvolume(volume, origin, size, spacing)
        if sub is not None:
            resampler.SetOutputOrigin(tuple(origin))
            hu = sitk.GetArrayFromImage(resampler.Execute(sub.to_sitk()))
        else:  # the crop lies wholly outside the scan
            hu = np.full((size, size, size), AIR_HU, dtype=np.float32)
        crops[n, 0] = window_hu(hu, window)
        present[n] = True
    return crops, present
