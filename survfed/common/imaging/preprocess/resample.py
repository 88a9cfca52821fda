"""Step 1: resample a HU volume onto an isotropic grid along the patient axes.

The grid's axes are the patient axes (LPS, identity direction), array order ``[z, y, x]``: index
z increases towards the head, y towards posterior, x towards the patient's left, so head-first,
feet-first and oblique series give the same array for the same anatomy. The grid spans the
bounding box of the scan's voxel centres in patient space. Linear interpolation in HU.

Points that carry no measurement are NaN (the binarisation treats them as "not air", as the
paper's code did with the region outside a circular field of view):

* points outside the scanned volume;
* points next to pixels outside the reconstruction circle: a slice whose corner patch is
  constant at a value at or below ``padding_max_hu`` (scanners write -2000, -2048 or -3024 there)
  has every pixel of that value marked as padding before interpolation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from survfed.common.imaging.preprocess.config import PreprocessConfig, PreprocessError
from survfed.common.imaging.volume import Volume

__all__ = ["PatientGrid", "check_volume", "padding_values", "patient_grid", "resample_hu"]

MIN_SLICES = 3
"""A volume needs at least this many slices, ..."""
MIN_EXTENT_MM = 30.0
"""... spanning at least this many mm along every axis."""


@dataclass(frozen=True)
class PatientGrid:
    """An axis-aligned (LPS) isotropic grid.

    Attributes:
        shape: ``(Z, Y, X)`` voxels.
        origin_mm: patient ``(x, y, z)`` mm of voxel ``[0, 0, 0]``.
        spacing_mm: voxel edge in mm.
    """

    shape: tuple[int, int, int]
    origin_mm: tuple[float, float, float]
    spacing_mm: float


def check_volume(volume: Volume) -> None:
    """Raise :class:`PreprocessError` when ``volume`` is no CT volume the pipeline can use."""
    if not isinstance(volume, Volume):
        raise TypeError(f"volume must be a survfed Volume, got {type(volume).__name__}")
    k, j, i = volume.shape
    if k < MIN_SLICES:
        raise PreprocessError(
            f"the series has {k} slice{'s' if k != 1 else ''}: a single image or a scout is not "
            f"a CT volume (at least {MIN_SLICES} slices are needed)"
        )
    extent = np.array([(k - 1) * volume.spacing[0], j * volume.spacing[1], i * volume.spacing[2]])
    if np.any(extent < MIN_EXTENT_MM) or min(j, i) < 8:
        raise PreprocessError(
            f"the volume covers only {extent[0]:.0f} x {extent[1]:.0f} x {extent[2]:.0f} mm "
            f"({k} x {j} x {i} voxels): too small to hold the lungs"
        )
    if not np.isfinite(volume.array).all():
        raise PreprocessError("the volume holds NaN or infinite values")


def patient_grid(volume: Volume, spacing_mm: float) -> PatientGrid:
    """The LPS grid of spacing ``spacing_mm`` over the bounding box of the voxel centres."""
    k, j, i = volume.shape
    corners = np.array(
        [[a, b, c] for a in (0, k - 1) for b in (0, j - 1) for c in (0, i - 1)], dtype=np.float64
    )
    xyz = volume.voxel_to_patient(corners)
    lo, hi = xyz.min(axis=0), xyz.max(axis=0)
    n_xyz = np.floor((hi - lo) / spacing_mm + 1e-6).astype(int) + 1
    return PatientGrid(
        shape=(int(n_xyz[2]), int(n_xyz[1]), int(n_xyz[0])),
        origin_mm=tuple(float(v) for v in lo),  # type: ignore[arg-type]
        spacing_mm=float(spacing_mm),
    )


def padding_values(array: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Per slice and corner, the constant padding value, NaN where there is none.

    Args:
        array: ``(K, J, I)`` HU.

    Returns:
        ``(K, 4)`` float32: the value of each constant corner patch at or below
        ``config.padding_max_hu``, else NaN.
    """
    p = min(config.padding_patch_px, array.shape[1], array.shape[2])
    patches = (
        array[:, :p, :p],
        array[:, :p, -p:],
        array[:, -p:, :p],
        array[:, -p:, -p:],
    )
    out = np.full((array.shape[0], 4), np.nan, dtype=np.float32)
    for c, patch in enumerate(patches):
        lo = patch.min(axis=(1, 2))
        hi = patch.max(axis=(1, 2))
        constant = (lo == hi) & (lo <= config.padding_max_hu)
        out[constant, c] = lo[constant]
    return out


def _with_padding_as_nan(volume: Volume, config: PreprocessConfig) -> np.ndarray:
    values = padding_values(volume.array, config)
    if np.isnan(values).all():
        return volume.array
    array = volume.array.copy()
    for c in range(4):
        rows = np.flatnonzero(~np.isnan(values[:, c]))
        for v in np.unique(values[rows, c]):
            ks = rows[values[rows, c] == v]
            block = array[ks]
            block[block == v] = np.nan
            array[ks] = block
    return array


def resample_hu(volume: Volume, config: PreprocessConfig) -> tuple[np.ndarray, PatientGrid]:
    """Resample ``volume`` onto the isotropic LPS grid (SimpleITK, linear).

    Returns:
        ``(hu, grid)``: ``hu`` float32 ``(Z, Y, X)``, NaN where nothing was measured (outside
        the scan, next to field-of-view padding); ``grid`` its geometry.
    """
    import SimpleITK as sitk

    check_volume(volume)
    grid = patient_grid(volume, config.spacing_mm)
    array = _with_padding_as_nan(volume, config)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    image.SetSpacing(tuple(volume.spacing[::-1]))
    image.SetOrigin(volume.origin)
    image.SetDirection(tuple(volume.direction.reshape(-1)))
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize(grid.shape[::-1])
    resampler.SetOutputSpacing((grid.spacing_mm,) * 3)
    resampler.SetOutputOrigin(grid.origin_mm)
    resampler.SetOutputDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetDefaultPixelValue(float("nan"))
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    hu = sitk.GetArrayFromImage(resampler.Execute(image))
    return hu, grid
