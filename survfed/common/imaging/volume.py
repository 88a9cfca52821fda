"""A CT volume in Hounsfield units together with its patient geometry.

Conventions (shared by the DICOM reader, the synthetic generator and every model):

* ``array`` is indexed ``[k, j, i]``: ``k`` = slice, ``j`` = row, ``i`` = column, the same
  order as ``SimpleITK.GetArrayFromImage``. Values are float32 Hounsfield units.
* ``spacing`` is ``(sk, sj, si)`` in millimetres, in array order.
* ``origin`` is the patient position ``(x, y, z)`` in mm (DICOM patient coordinates, LPS:
  +x towards the patient's left, +y posterior, +z head) of the centre of voxel ``[0, 0, 0]``.
* ``direction`` is a 3×3 matrix whose **columns** are the unit vectors in patient space of the
  index axes ``i`` (column), ``j`` (row) and ``k`` (slice), i.e. ITK's direction matrix.
  For a DICOM series: column 0 = the row direction cosines of ImageOrientationPatient
  (along a row, i.e. increasing column index), column 1 = the column direction cosines,
  column 2 = the unit vector from the first slice to the last.

So a voxel index ``(k, j, i)`` maps to patient position
``origin + direction @ ((i, j, k) * (si, sj, sk))``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Volume"]


def _as_vector(value: object, name: str) -> np.ndarray:
    vec = np.asarray(value, dtype=np.float64).reshape(-1)
    if vec.shape != (3,) or not np.all(np.isfinite(vec)):
        raise ValueError(f"{name} must hold 3 finite numbers, got {value!r}")
    return vec


@dataclass(frozen=True)
class Volume:
    """A 3D image with its geometry; see the module docstring for the conventions.

    Args:
        array: ``(K, J, I)`` float32 array (Hounsfield units for CT).
        spacing: ``(sk, sj, si)`` voxel size in mm, array order, all > 0.
        origin: ``(x, y, z)`` patient position of voxel ``[0, 0, 0]`` in mm.
        direction: 3×3 orthonormal matrix, columns = patient directions of ``i, j, k``.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"array must be 3D (K, J, I), got shape {self.array.shape}")
        spacing = _as_vector(self.spacing, "spacing")
        if np.any(spacing <= 0):
            raise ValueError(f"spacing must be positive, got {tuple(spacing)}")
        origin = _as_vector(self.origin, "origin")
        direction = np.asarray(self.direction, dtype=np.float64)
        if direction.shape != (3, 3):
            raise ValueError(f"direction must be 3x3, got shape {direction.shape}")
        if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
            raise ValueError("direction must be orthonormal (columns are unit axis vectors)")
        object.__setattr__(self, "spacing", tuple(float(s) for s in spacing))
        object.__setattr__(self, "origin", tuple(float(o) for o in origin))
        object.__setattr__(self, "direction", direction)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(K, J, I)``."""
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    def _ijk_spacing(self) -> np.ndarray:
        return np.asarray(self.spacing[::-1], dtype=np.float64)

    def voxel_to_patient(self, kji: np.ndarray | tuple[float, float, float]) -> np.ndarray:
        """Map voxel indices ``(..., 3)`` in ``(k, j, i)`` order to patient ``(x, y, z)`` mm."""
        kji = np.asarray(kji, dtype=np.float64)
        ijk = kji[..., ::-1]
        return np.asarray(self.origin) + (ijk * self._ijk_spacing()) @ self.direction.T

    def patient_to_voxel(self, xyz: np.ndarray | tuple[float, float, float]) -> np.ndarray:
        """Map patient positions ``(..., 3)`` in mm to fractional voxel indices ``(k, j, i)``."""
        xyz = np.asarray(xyz, dtype=np.float64)
        ijk = ((xyz - np.asarray(self.origin)) @ self.direction) / self._ijk_spacing()
        return ijk[..., ::-1]

    def to_sitk(self):  # -> SimpleITK.Image
        """A SimpleITK image with the same voxels and geometry."""
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(self.array)
        image.SetSpacing(tuple(self.spacing[::-1]))
        image.SetOrigin(self.origin)
        image.SetDirection(tuple(self.direction.reshape(-1)))
        return image

    @classmethod
    def from_sitk(cls, image, dtype: np.dtype | type = np.float32) -> Volume:
        """Build a volume from a SimpleITK image (any pixel type, cast to ``dtype``)."""
        import SimpleITK as sitk

        array = sitk.GetArrayFromImage(image).astype(dtype, copy=False)
        return cls(
            array=array,
            spacing=tuple(image.GetSpacing()[::-1]),
            origin=tuple(image.GetOrigin()),
            direction=np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3),
        )
