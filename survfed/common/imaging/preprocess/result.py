"""The result of preprocessing one scan, its coordinate maps and its file format.

The grid is the resampled patient-axis grid (see :mod:`.resample`) cut to the crop: array order
``[z, y, x]``, identity direction (LPS), isotropic ``spacing_mm``; voxel ``[0, 0, 0]`` of the crop
lies at patient position ``origin_mm`` ``(x, y, z)``. So a nodule centre in patient mm (e.g. from
``nodules.csv``) maps to the crop's voxel ``patient_to_voxel(centre)``, and back.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["FORMAT_VERSION", "PreprocessedScan", "ScanFileError"]

FORMAT_VERSION = 1
"""Version of the ``.npz`` layout written by :meth:`PreprocessedScan.save`."""


class ScanFileError(ValueError):
    """A saved scan cannot be read: missing, truncated, damaged or of another format."""


def _vec3(value: object, name: str, cast: type = float) -> tuple:
    try:
        out = tuple(cast(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must hold 3 numbers, got {value!r}") from None
    if len(out) != 3:
        raise ValueError(f"{name} must hold 3 numbers, got {value!r}")
    return out


@dataclass(frozen=True, eq=False)
class PreprocessedScan:
    """One preprocessed CT scan (seed 003 §III.B) on the cropped isotropic LPS grid.

    Attributes:
        image: uint8 ``(Z, Y, X)``: HU window [-1200, 600] → 0-255, 170 outside the mask.
        spacing_mm: ``(sz, sy, sx)`` mm (isotropic).
        origin_mm: patient ``(x, y, z)`` mm of voxel ``[0, 0, 0]`` of the crop.
        lung_labels: uint8 ``(Z, Y, X)``: 0 outside, 1 right lung, 2 left lung (after step 3).
        mask: bool ``(Z, Y, X)``: the final convex-hull-and-dilated mask of step 4.
        lung_fraction: float32 ``(Z,)``: lung area of each crop slice over the area of the whole
            resampled slice (seed 001 keeps slices with at least 2 %).
        crop_offset: ``(z0, y0, x0)`` of the crop in the resampled grid.
        resampled_shape: ``(Z, Y, X)`` of the whole resampled grid.
        warnings: things a person should know about this scan.
        fingerprint: :meth:`PreprocessConfig.fingerprint` of the settings used.
        timings: seconds per step (not saved).
    """

    image: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    lung_labels: np.ndarray
    mask: np.ndarray
    lung_fraction: np.ndarray
    crop_offset: tuple[int, int, int]
    resampled_shape: tuple[int, int, int]
    warnings: tuple[str, ...] = ()
    fingerprint: str = ""
    timings: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.image, np.ndarray) or self.image.dtype != np.uint8:
            raise ValueError("image must be a uint8 numpy array")
        if self.image.ndim != 3:
            raise ValueError(f"image must be 3D (Z, Y, X), got shape {self.image.shape}")
        shape = self.image.shape
        for name, dtype in (("lung_labels", np.uint8), ("mask", np.bool_)):
            value = getattr(self, name)
            if not isinstance(value, np.ndarray) or value.shape != shape or value.dtype != dtype:
                raise ValueError(f"{name} must be a {np.dtype(dtype).name} array of shape {shape}")
        if self.lung_fraction.shape != (shape[0],):
            raise ValueError(f"lung_fraction must have shape ({shape[0]},)")
        spacing = _vec3(self.spacing_mm, "spacing_mm")
        if min(spacing) <= 0:
            raise ValueError(f"spacing_mm must be positive, got {spacing}")
        object.__setattr__(self, "spacing_mm", spacing)
        object.__setattr__(self, "origin_mm", _vec3(self.origin_mm, "origin_mm"))
        object.__setattr__(self, "crop_offset", _vec3(self.crop_offset, "crop_offset", int))
        object.__setattr__(
            self, "resampled_shape", _vec3(self.resampled_shape, "resampled_shape", int)
        )
        object.__setattr__(self, "warnings", tuple(str(w) for w in self.warnings))

    # ------------------------------------------------------------------ derived
    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)`` of the crop."""
        return tuple(int(n) for n in self.image.shape)  # type: ignore[return-value]

    @property
    def lung_mask(self) -> np.ndarray:
        """bool ``(Z, Y, X)``: both lungs after step 3."""
        return self.lung_labels > 0

    @property
    def lung_volume_ml(self) -> float:
        """Volume of both lungs (step 3) in ml."""
        return float(np.count_nonzero(self.lung_labels)) * float(np.prod(self.spacing_mm)) / 1e3

    def voxel_to_patient(self, zyx: np.ndarray | tuple[float, float, float]) -> np.ndarray:
        """Crop voxel indices ``(..., 3)`` ``(z, y, x)`` → patient ``(x, y, z)`` mm."""
        zyx = np.asarray(zyx, dtype=np.float64)
        return np.asarray(self.origin_mm) + zyx[..., ::-1] * np.asarray(self.spacing_mm[::-1])

    def patient_to_voxel(self, xyz: np.ndarray | tuple[float, float, float]) -> np.ndarray:
        """Patient ``(..., 3)`` ``(x, y, z)`` mm → fractional crop indices ``(z, y, x)``."""
        xyz = np.asarray(xyz, dtype=np.float64)
        ijk = (xyz - np.asarray(self.origin_mm)) / np.asarray(self.spacing_mm[::-1])
        return ijk[..., ::-1]

    def contains(self, xyz: np.ndarray | tuple[float, float, float]) -> np.ndarray:
        """Whether patient points ``(..., 3)`` mm fall in a voxel of the final mask."""
        idx = np.rint(self.patient_to_voxel(xyz)).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < np.asarray(self.shape)), axis=-1)
        out = np.zeros(inside.shape, dtype=bool)
        hit = idx[inside]
        out[inside] = self.mask[hit[:, 0], hit[:, 1], hit[:, 2]]
        return out

    # ------------------------------------------------------------------ files
    def _arrays(self) -> dict[str, np.ndarray]:
        right = np.packbits(self.lung_labels == 1, axis=None)
        left = np.packbits(self.lung_labels == 2, axis=None)
        meta = {
            "format_version": FORMAT_VERSION,
            "shape": list(self.shape),
            "spacing_mm": list(self.spacing_mm),
            "origin_mm": list(self.origin_mm),
            "crop_offset": list(self.crop_offset),
            "resampled_shape": list(self.resampled_shape),
            "warnings": list(self.warnings),
            "fingerprint": self.fingerprint,
        }
        return {
            "image": self.image,
            "right": right,
            "left": left,
            "mask": np.packbits(self.mask, axis=None),
            "lung_fraction": self.lung_fraction.astype(np.float32),
            "meta": np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8),
        }

    @staticmethod
    def _checksum(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        digest = hashlib.sha256()
        for key in sorted(arrays):
            digest.update(key.encode())
            digest.update(np.ascontiguousarray(arrays[key]).tobytes())
        return np.frombuffer(digest.digest(), dtype=np.uint8)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the scan to ``path`` (``.npz``, masks bit-packed, with a SHA-256 checksum).

        The file is written to a temporary name and renamed, so a reader never sees half of it.
        """
        from survfed.common.cache_files import write_npz_atomic

        arrays = self._arrays()
        write_npz_atomic(Path(path), **arrays, checksum=self._checksum(arrays))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PreprocessedScan:
        """Read a scan written by :meth:`save`.

        Raises:
            ScanFileError: the file is missing, truncated, fails its checksum or is of another
                format version.
        """
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except FileNotFoundError:
            raise ScanFileError(f"{path}: no such file") from None
        except Exception as exc:  # zip, zlib, format errors of a damaged file
            raise ScanFileError(f"{path}: not a readable scan file ({exc})") from None
        checksum = arrays.pop("checksum", None)
        expected = {"image", "right", "left", "mask", "lung_fraction", "meta"}
        if checksum is None or set(arrays) != expected:
            raise ScanFileError(f"{path}: not a preprocessed scan file (arrays {sorted(arrays)})")
        if not np.array_equal(checksum, cls._checksum(arrays)):
            raise ScanFileError(f"{path}: checksum mismatch (the file is damaged)")
        try:
            meta = json.loads(arrays["meta"].tobytes().decode())
            if meta.get("format_version") != FORMAT_VERSION:
                raise ScanFileError(
                    f"{path}: format version {meta.get('format_version')}, "
                    f"expected {FORMAT_VERSION}"
                )
            shape = tuple(int(n) for n in meta["shape"])
            size = int(np.prod(shape))

            def unpack(bits: np.ndarray) -> np.ndarray:
                return np.unpackbits(bits, count=size).astype(bool).reshape(shape)

            labels = np.zeros(shape, dtype=np.uint8)
            labels[unpack(arrays["right"])] = 1
            labels[unpack(arrays["left"])] = 2
            return cls(
                image=arrays["image"],
                spacing_mm=tuple(meta["spacing_mm"]),
                origin_mm=tuple(meta["origin_mm"]),
                lung_labels=labels,
                mask=unpack(arrays["mask"]),
                lung_fraction=arrays["lung_fraction"],
                crop_offset=tuple(meta["crop_offset"]),
                resampled_shape=tuple(meta["resampled_shape"]),
                warnings=tuple(meta["warnings"]),
                fingerprint=str(meta["fingerprint"]),
            )
        except ScanFileError:
            raise
        except (KeyError, ValueError, TypeError) as exc:
            raise ScanFileError(f"{path}: damaged scan metadata ({exc})") from None
