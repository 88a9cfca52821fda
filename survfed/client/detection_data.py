"""A site's nodule-detector data: preprocessed scans with their nodules in voxels, and the
detector's proposals mapped back to patient millimetres.

Flower starts a fresh ClientApp process for every message, so the site is prepared once
(:func:`prepare_scans`: catalogue, lung preprocessing into the cache, and a *scan manifest*
``<cache-dir>/scan-manifest-<preprocessing fingerprint>.json`` listing each usable patient's
cache file, annotation status and nodules) and each message reopens the manifest
(:func:`open_scan_records`) without reading a DICOM header. The manifest stays at the site.

The detector works on the lung-preprocessed grid (:mod:`survfed.common.imaging.preprocess`:
isotropic, axes along the patient axes, cropped to the lungs); ``nodules.csv`` and the survival
crops work in patient coordinates (DICOM LPS mm). The two maps here are the only place where one
becomes the other:

* :func:`detection_scan`: nodules ``(x, y, z, diameter mm)`` → ``(z, y, x, diameter)`` in
  voxels of the preprocessed scan, plus the lung's extent for the location crop;
* :func:`proposals_mm`: proposals ``(z, y, x, diameter, confidence)`` in voxels → ``(x, y, z,
  diameter mm, confidence)`` in patient mm.

:func:`site_detection_scans` gathers the scans a site trains the detector on: usable patients
whose nodules are completely annotated (``nodules_annotated = 1``; a patient annotated with no
nodule is a valid scan without nodules). Patients without annotations are counted, not used.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from survfed.client.catalogue import SiteCatalogue, catalogue_site
from survfed.client.header_cache import CACHE_FILE
from survfed.client.preprocess_cache import SitePreprocessResult, preprocess_site
from survfed.common.detection.scan import DetectionScan
from survfed.common.imaging.preprocess import PreprocessConfig, PreprocessedScan, ScanFileError

__all__ = [
    "ScanRecord",
    "SiteScans",
    "detection_scan",
    "load_scans",
    "lung_box",
    "open_scan_records",
    "prepare_scans",
    "proposals_mm",
    "read_scan_manifest",
    "scan_manifest_path",
]

_FORMAT = "survfed-scan-manifest"


def lung_box(scan: PreprocessedScan) -> np.ndarray | None:
    """``(3, 2)`` first and last voxel of the lungs (step-3 mask) along z, y, x; ``None`` if
    the mask is empty (the location crop then spans the scan)."""
    mask = scan.lung_mask
    if not mask.any():
        return None
    box = np.zeros((3, 2))
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box[axis] = (hits[0], hits[-1])
    return box


def detection_scan(scan: PreprocessedScan, nodules_mm: np.ndarray, name: str = "") -> DetectionScan:
    """The detector's view of one patient.

    Args:
        scan: the preprocessed scan.
        nodules_mm: ``(n, 4)`` ``(x, y, z, diameter)`` in patient mm (``nodules.csv``).
        name: patient id for messages.

    Returns:
        A :class:`~survfed.common.detection.scan.DetectionScan` with nodules ``(z, y, x,
        diameter)`` in voxels of ``scan`` (isotropic: diameter / spacing).
    """
    nod = np.asarray(nodules_mm, dtype=np.float64).reshape(-1, 4)
    spacing = float(scan.spacing_mm[0])
    if not np.allclose(scan.spacing_mm, spacing):
        raise ValueError(
            f"scan {name!r}: the detector needs an isotropic grid, got {scan.spacing_mm} mm"
        )
    zyx = scan.patient_to_voxel(nod[:, :3]) if len(nod) else np.zeros((0, 3))
    nodules = np.concatenate([zyx, nod[:, 3:4] / spacing], axis=1)
    return DetectionScan(image=scan.image, nodules=nodules, lung_box=lung_box(scan), name=name)


def proposals_mm(scan: PreprocessedScan, proposals: np.ndarray) -> np.ndarray:
    """Detector proposals ``(n, 5)`` in voxels of ``scan`` → ``(n, 5)`` ``(x, y, z, diameter
    mm, confidence)`` in patient mm (order kept)."""
    props = np.asarray(proposals, dtype=np.float64).reshape(-1, 5)
    xyz = scan.voxel_to_patient(props[:, :3]) if len(props) else np.zeros((0, 3))
    spacing = float(scan.spacing_mm[0])
    return np.concatenate([xyz, props[:, 3:4] * spacing, props[:, 4:5]], axis=1)


@dataclass(frozen=True)
class ScanRecord:
    """One usable, preprocessed patient of a site.

    Attributes:
        patient_id: the site's patient ID.
        path: the preprocessing cache file.
        annotated: ``nodules.csv`` lists every nodule of this patient.
        nodules_mm: ``(n, 4)`` ``(x, y, z, diameter)`` patient mm (empty when not annotated).
    """

    patient_id: str
    path: Path
    annotated: bool
    nodules_mm: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))


@dataclass(frozen=True)
class SiteScans:
    """The detector-training scans of one site.

    Attributes:
        scans: annotated, preprocessed patients (``DetectionScan.name`` = patient id).
        n_unannotated: preprocessed patients left out because their nodules are not annotated.
        failed: patient id → why its preprocessed scan could not be read.
    """

    scans: list[DetectionScan]
    n_unannotated: int = 0
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def n_nodules(self) -> int:
        """Annotated nodules over all scans."""
        return int(sum(len(s.nodules) for s in self.scans))


def scan_manifest_path(cache_dir: str | os.PathLike[str], config: PreprocessConfig) -> Path:
    """Where the scan manifest for ``config``'s preprocessing lives."""
    return Path(cache_dir) / f"scan-manifest-{config.fingerprint()}.json"


def _write_manifest(
    path: Path, site: str, data_dir: str | os.PathLike[str], records: Sequence[ScanRecord]
) -> None:
    data = {
        "format": _FORMAT,
        "site": site,
        "data_dir": str(Path(data_dir).resolve()),
        "records": [
            {
                "patient_id": r.patient_id,
                "path": str(r.path),
                "annotated": r.annotated,
                "nodules_mm": np.asarray(r.nodules_mm).tolist(),
            }
            for r in records
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_scan_manifest(
    cache_dir: str | os.PathLike[str],
    config: PreprocessConfig,
    site: str,
    data_dir: str | os.PathLike[str],
) -> list[ScanRecord] | None:
    """The records of the manifest for this site, folder and preprocessing; ``None`` when it is
    absent, written for another site or folder, or one of its cache files is gone."""
    path = scan_manifest_path(cache_dir, config)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if (
        data.get("format") != _FORMAT
        or data.get("site") != site
        or data.get("data_dir") != str(Path(data_dir).resolve())
    ):
        return None
    records = [
        ScanRecord(
            patient_id=str(r["patient_id"]),
            path=Path(r["path"]),
            annotated=bool(r["annotated"]),
            nodules_mm=np.asarray(r["nodules_mm"], dtype=np.float64).reshape(-1, 4),
        )
        for r in data.get("records", [])
    ]
    if not records or not all(r.path.is_file() for r in records):
        return None
    return records


def prepare_scans(
    site: str,
    data_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    config: PreprocessConfig,
    *,
    catalogue: SiteCatalogue | None = None,
    device: str = "auto",
    workers: int = 1,
    progress: bool = True,
    notify: Callable[[str], Any] | None = None,
) -> tuple[list[ScanRecord], SitePreprocessResult]:
    """Preprocess every usable patient (cached) and write the scan manifest.

    Returns the records (patients whose preprocessing failed are left out; the result lists
    them with the reason) and the preprocessing result.

    Raises:
        ValueError: no patient could be preprocessed (the message names the site folder).
    """
    if catalogue is None:
        catalogue = catalogue_site(
            Path(data_dir), progress=progress, header_cache=Path(cache_dir) / CACHE_FILE
        )
    result = preprocess_site(
        catalogue, cache_dir, config, device=device, workers=workers, progress=progress,
        notify=notify,
    )  # fmt: skip
    patients = {p.patient_id: p for p in catalogue.usable_patients}
    records = [
        ScanRecord(
            patient_id=o.patient_id,
            path=Path(o.path),
            annotated=patients[o.patient_id].annotated,
            nodules_mm=np.asarray(patients[o.patient_id].nodules_mm, dtype=np.float64)
            if patients[o.patient_id].annotated
            else np.zeros((0, 4)),
        )
        for o in result.outcomes
        if o.status != "failed" and o.path is not None and o.patient_id in patients
    ]
    if not records:
        raise ValueError(
            f"site {site}: no patient of {data_dir} could be preprocessed "
            f"({result.n_failed} failed; run `survfed preprocess {data_dir}` for the reasons)"
        )
    _write_manifest(scan_manifest_path(cache_dir, config), site, data_dir, records)
    return records, result


def open_scan_records(
    site: str,
    data_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    config: PreprocessConfig,
) -> list[ScanRecord]:
    """The site's scan records from its manifest, preparing the site first when there is none."""
    records = read_scan_manifest(cache_dir, config, site, data_dir)
    if records is None:
        records, _ = prepare_scans(site, data_dir, cache_dir, config, progress=False)
    return records


def load_scans(records: Sequence[ScanRecord]) -> SiteScans:
    """The annotated records' scans for detector training (read from the cache)."""
    scans: list[DetectionScan] = []
    failed: dict[str, str] = {}
    unannotated = 0
    for record in records:
        if not record.annotated:
            unannotated += 1
            continue
        try:
            pre = PreprocessedScan.load(record.path)
        except (OSError, ScanFileError) as exc:
            failed[record.patient_id] = f"preprocessed scan {record.path} unreadable: {exc}"
            continue
        scans.append(detection_scan(pre, record.nodules_mm, record.patient_id))
    return SiteScans(scans=scans, n_unannotated=unannotated, failed=failed)
