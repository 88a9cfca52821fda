"""NIfTI export of a preprocessed scan, for viewing in 3D Slicer or ITK-SNAP next to the scan.

Three NIfTI files per patient (:func:`export_nifti`):

* ``<id>_preprocessed.nii.gz`` — the uint8 crop with its spacing and origin (identity direction);
* ``<id>_lung.nii.gz`` — the lungs after step 3 (uint8: 0 outside, 1 right, 2 left);
* ``<id>_mask.nii.gz`` — the final convex-hull-and-dilated mask of step 4 (uint8 0/1);

the two masks resampled (nearest neighbour) onto the original series' grid: same size, spacing,
origin and direction as the CT series, so they overlay the scan voxel for voxel.

``survfed preprocess --export`` also writes a fourth file, ``<id>_qc.png``, a quality-control
picture of the crop with the lung and mask contours (:mod:`.qc_figure`). :func:`export_stem`
turns a patient ID into the ``<id>`` part of all four names.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from survfed.common.imaging.preprocess.result import PreprocessedScan

__all__ = ["export_nifti", "export_stem", "mask_in_geometry"]


def export_stem(patient_id: str) -> str:
    """The ``<id>`` of the export file names: ``patient_id`` with every character other than
    letters, digits, ``-`` and ``_`` replaced by ``_`` (``"_"`` for an empty ID)."""
    if not isinstance(patient_id, str):
        raise TypeError(f"patient_id must be a str, got {type(patient_id).__name__}")
    return re.sub(r"[^A-Za-z0-9_-]", "_", patient_id) or "_"


def _scan_image(scan: PreprocessedScan, array: np.ndarray):  # -> SimpleITK.Image
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(tuple(scan.spacing_mm[::-1]))
    image.SetOrigin(tuple(scan.origin_mm))
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return image


def _reference(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float],
    direction: np.ndarray,
):  # -> SimpleITK.Image
    import SimpleITK as sitk

    ref = sitk.Image([int(n) for n in shape[::-1]], sitk.sitkUInt8)
    ref.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    ref.SetOrigin(tuple(float(o) for o in origin))
    ref.SetDirection(tuple(float(d) for d in np.asarray(direction).reshape(-1)))
    return ref


def mask_in_geometry(
    scan: PreprocessedScan,
    array: np.ndarray,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float],
    direction: np.ndarray,
):  # -> SimpleITK.Image
    """``array`` (uint8 on the scan's crop grid) resampled (nearest) onto a series' grid.

    Args:
        shape, spacing, origin, direction: the series' ``(K, J, I)``, ``(sk, sj, si)`` mm,
            patient origin and 3×3 direction (as :class:`~survfed.common.imaging.Volume`).

    Returns:
        A uint8 SimpleITK image with exactly that geometry (0 outside the crop).
    """
    import SimpleITK as sitk

    moving = _scan_image(scan, array.astype(np.uint8))
    ref = _reference(shape, spacing, origin, direction)
    return sitk.Resample(moving, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def export_nifti(
    scan: PreprocessedScan,
    out_dir: str | os.PathLike[str],
    patient_id: str,
    *,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float],
    direction: np.ndarray,
) -> tuple[Path, Path, Path]:
    """Write the three NIfTI files of the module docstring into ``out_dir``.

    Args:
        scan: the preprocessed scan.
        out_dir: folder (created if needed).
        patient_id: used in the file names (:func:`export_stem`: characters other than letters,
            digits, ``-`` and ``_`` become ``_``).
        shape, spacing, origin, direction: the original series' geometry.

    Returns:
        The paths ``(preprocessed, lung, mask)``.
    """
    import SimpleITK as sitk

    stem = export_stem(patient_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = (
        out / f"{stem}_preprocessed.nii.gz",
        out / f"{stem}_lung.nii.gz",
        out / f"{stem}_mask.nii.gz",
    )
    geometry = {"shape": shape, "spacing": spacing, "origin": origin, "direction": direction}
    images = (
        _scan_image(scan, scan.image),
        mask_in_geometry(scan, scan.lung_labels, **geometry),
        mask_in_geometry(scan, scan.mask.astype(np.uint8), **geometry),
    )
    for path, image in zip(paths, images, strict=True):
        tmp = path.with_name(path.name + ".tmp.nii.gz")
        sitk.WriteImage(image, str(tmp), useCompression=True)
        os.replace(tmp, path)
    return paths
