"""Build small test sites with the real DICOM writer.

Every patient gets a 24×32×32 CT series with a bright sphere (``SPHERE_HU``) in air-like
background at a known patient position, a clinical row and a nodule row at the sphere centre.
Helpers then break one thing at a time (see the ``break_*`` functions).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from survfed.common.imaging.dicom_write import PixelEncoding, SeriesMeta, write_ct_series
from survfed.common.imaging.volume import Volume

SHAPE = (24, 32, 32)
SPACING = (2.5, 1.25, 1.25)
SPHERE_HU = 300.0
BACKGROUND_HU = -800.0
SPHERE_RADIUS_MM = 6.0


def sphere_center(patient_index: int) -> np.ndarray:
    """Patient-space centre (mm) of the sphere of the ``patient_index``-th patient."""
    return np.array([3.0 + patient_index, -2.0 - patient_index, -100.0 + 2.0 * patient_index])


def sphere_volume(
    center_mm: np.ndarray,
    *,
    shape: tuple[int, int, int] = SHAPE,
    spacing: tuple[float, float, float] = SPACING,
    direction: np.ndarray | None = None,
) -> Volume:
    """A volume centred on ``center_mm`` (offset by a few voxels) with a sphere there."""
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    extent_ijk = np.array(
        [(shape[2] - 1) * spacing[2], (shape[1] - 1) * spacing[1], (shape[0] - 1) * spacing[0]]
    )
    # put the sphere slightly off the volume centre so flips would be detected
    shift_ijk = np.array([3.0 * spacing[2], -2.0 * spacing[1], 2.0 * spacing[0]])
    origin = np.asarray(center_mm) - direction @ (extent_ijk / 2 + shift_ijk)
    skeleton = Volume(np.zeros(shape, np.float32), spacing, tuple(origin), direction)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    xyz = skeleton.voxel_to_patient(grid)
    inside = np.linalg.norm(xyz - np.asarray(center_mm), axis=-1) <= SPHERE_RADIUS_MM
    array = np.where(inside, SPHERE_HU, BACKGROUND_HU).astype(np.float32)
    return Volume(array, spacing, tuple(origin), direction)


def series_meta(
    patient_id: str,
    tag: str,
    *,
    study_date: str = "20200101",
    study_time: str = "120000",
    series_number: int = 1,
) -> SeriesMeta:
    """Deterministic UIDs derived from the patient and a tag."""
    return SeriesMeta(
        patient_id=patient_id,
        study_date=study_date,
        study_time=study_time,
        study_instance_uid=generate_uid(entropy_srcs=[patient_id, study_date, "study"]),
        series_instance_uid=generate_uid(entropy_srcs=[patient_id, tag, "series"]),
        frame_of_reference_uid=generate_uid(entropy_srcs=[patient_id, "frame"]),
        series_number=series_number,
    )


def write_series(
    dicom_dir: Path,
    patient_id: str,
    volume: Volume,
    *,
    tag: str = "ct",
    encoding: PixelEncoding | None = None,
    study_date: str = "20200101",
    shuffle_seed: int | None = 0,
) -> list[Path]:
    """Write one series under ``dicom_dir/<patient>/<tag>/`` with shuffled random file names.

    Returns the paths in slice order ``k``.
    """
    names = [f"IM{k:05d}" for k in range(volume.shape[0])]
    if shuffle_seed is not None:
        rng = np.random.default_rng(shuffle_seed)
        names = [f"x{int(v):08d}" for v in rng.permutation(10**6)[: volume.shape[0]]]
    return write_ct_series(
        volume,
        dicom_dir / patient_id / tag,
        series_meta(patient_id, tag, study_date=study_date),
        encoding or PixelEncoding(),
        file_names=names,
    )


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    """Write a small CSV file (no quoting needed in tests)."""
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def make_site(
    root: Path,
    patient_ids: Sequence[str] = ("P1", "P2", "P3"),
    *,
    encodings: Sequence[PixelEncoding] | None = None,
) -> Path:
    """A clean site: one CT series, a clinical row and a nodule row per patient.

    Clinical values: ``time_days = 100 * (index + 1)``, ``event = index % 2``,
    ``cancer = 1`` for even indices.
    """
    root.mkdir(parents=True, exist_ok=True)
    dicom = root / "dicom"
    clinical_rows = []
    nodule_rows = []
    for index, patient_id in enumerate(patient_ids):
        center = sphere_center(index)
        encoding = encodings[index % len(encodings)] if encodings else None
        write_series(
            dicom, patient_id, sphere_volume(center), encoding=encoding, shuffle_seed=index
        )
        clinical_rows.append([patient_id, 100 * (index + 1), index % 2, int(index % 2 == 0), 60])
        nodule_rows.append([patient_id, *center, 2 * SPHERE_RADIUS_MM])
    write_csv(
        root / "clinical.csv", ["patient_id", "time_days", "event", "cancer", "age"], clinical_rows
    )
    write_csv(
        root / "nodules.csv", ["patient_id", "x_mm", "y_mm", "z_mm", "diameter_mm"], nodule_rows
    )
    return root


def series_files(root: Path, patient_id: str, tag: str = "ct") -> list[Path]:
    """The patient's series files sorted by slice position (z, head-first axial)."""
    files = sorted((root / "dicom" / patient_id / tag).iterdir())
    return sorted(
        files,
        key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]),
    )


def edit(path: Path, **attributes: object) -> None:
    """Rewrite one file with some attributes changed (``None`` deletes the attribute)."""
    ds = pydicom.dcmread(path)
    for keyword, value in attributes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)


def copy_to(path: Path, target: Path) -> Path:
    """Copy a file (e.g. to create a duplicate slice)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target)
    return target
