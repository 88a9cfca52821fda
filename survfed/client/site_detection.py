"""Run a trained nodule detector on every usable patient of a site and write its proposals.

The site-side view of a detector (``survfed detect``): a person at the hospital wants to see what
the federated (or pooled) detector finds in their own scans, next to the scans. The proposals
are written as ``proposals.csv`` in patient coordinates, the same frame and units as the site's
``nodules.csv`` (DICOM LPS mm):

    patient_id,rank,x_mm,y_mm,z_mm,diameter_mm,confidence

``rank`` 1 is the most confident proposal of a patient; ``confidence`` is the detector's
objectness probability (0–1). When some patients are annotated (``nodules_annotated = 1``), the
proposals are also scored against the annotations exactly as the coordinator scores a held-out
cohort (:mod:`survfed.server.detector_eval`: FROC, CPM and top-5 recall on nodules of 6 mm and
larger), in patient millimetres.

Nothing here leaves the site: the file is written where the user asks.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from survfed.client.detection_data import prepare_scans
from survfed.client.local_detection import site_proposals
from survfed.client.preprocess_cache import SitePreprocessResult
from survfed.common.config import DetectorTrainConfig, resolve_device
from survfed.common.run_folder import find_detector

if TYPE_CHECKING:
    from survfed.server.detector_eval import DetectorEvaluation

__all__ = [
    "PROPOSAL_COLUMNS",
    "SiteDetections",
    "detect_site",
    "read_proposals_csv",
    "resolve_detector_file",
    "write_proposals_csv",
]

PROPOSAL_COLUMNS = ("patient_id", "rank", "x_mm", "y_mm", "z_mm", "diameter_mm", "confidence")


def resolve_detector_file(path: str | os.PathLike[str]) -> Path:
    """A detector file, or the run folder holding one (``detector.pt`` of ``survfed
    train-detector``, ``detector/detector.pt`` of a federation).

    Raises:
        FileNotFoundError: neither exists; the message names the path.
    """
    p = Path(path)
    if p.is_file():
        return p
    found = find_detector(p)
    if found is not None:
        return found
    raise FileNotFoundError(
        f"detector: {p} is neither a detector file nor a run folder with detector.pt or "
        "detector/detector.pt"
    )


@dataclass(frozen=True)
class SiteDetections:
    """The proposals of one site.

    Attributes:
        site_dir: the site folder.
        detector: the detector file used.
        device: where it ran.
        proposals: patient id → ``(n, 5)`` ``(x, y, z, diameter mm, confidence)`` patient mm,
            most confident first (cut to ``top``).
        preprocessing: the preprocessing result (failures with their reasons).
        evaluation: metrics on the annotated patients, or ``None`` when none is annotated.
        n_annotated: annotated patients scored.
        unreadable: patient id → why its preprocessed scan could not be read (no proposals).
    """

    site_dir: Path
    detector: Path
    device: str
    proposals: dict[str, np.ndarray]
    preprocessing: SitePreprocessResult
    evaluation: DetectorEvaluation | None = None
    n_annotated: int = 0
    unreadable: dict[str, str] = field(default_factory=dict)


def detect_site(
    site_dir: str | os.PathLike[str],
    detector: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    *,
    device: str = "auto",
    top: int | None = None,
    workers: int = 1,
    progress: bool = True,
    mirror_tta: bool | None = None,
) -> SiteDetections:
    """Preprocess the site (cached), run the detector on every usable patient, and score the
    proposals on the annotated ones.

    Args:
        site_dir: the site folder (``clinical.csv``, ``dicom/``, optional ``nodules.csv``).
        detector: a detector file or a run folder holding one.
        cache_dir: the site's cache (the same one ``survfed preprocess`` fills).
        device: ``auto``, ``cpu`` or ``cuda``.
        top: keep at most this many proposals per patient in the result (``None``: all the
            detector keeps, its ``max_proposals``); the metrics always use all of them.
        workers: preprocessing worker processes.
        progress: show progress bars.
        mirror_tta: test-time mirroring on or off (``None``: the detector's own setting).

    Raises:
        FileNotFoundError: no detector at ``detector``.
        ValueError: ``top`` < 1, or no patient could be preprocessed.
    """
    import torch

    from survfed.common.detection.train import load_detector
    from survfed.server.detector_eval import score_proposals

    if top is not None and top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    path = resolve_detector_file(detector)
    dev = resolve_device(device)
    model, det_config = load_detector(path, map_location=dev)
    if mirror_tta is not None:
        det_config = det_config.replace(mirror_tta=mirror_tta)
    config = DetectorTrainConfig(detector=det_config, device=dev)
    site = Path(site_dir)
    records, result = prepare_scans(
        site.name, site, cache_dir, config.preprocess_config(), device=dev, workers=workers,
        progress=progress,
    )  # fmt: skip
    bar = _bar(len(records), "detecting") if progress else None
    with torch.inference_mode():
        proposals = site_proposals(
            model, records, config, device=dev,
            progress=(lambda done, total: bar.update(1)) if bar is not None else None,
        )  # fmt: skip
    if bar is not None:
        bar.close()
    unreadable = {
        r.patient_id: f"its preprocessed scan {r.path} could not be read"
        for r in records
        if r.patient_id not in proposals
    }
    annotated = [r for r in records if r.annotated and r.patient_id in proposals]
    evaluation = None
    if annotated:  # in patient mm: the hit rule is geometric, any consistent unit will do
        evaluation = score_proposals(
            site.name,
            [proposals[r.patient_id] for r in annotated],
            [r.nodules_mm for r in annotated],
            mm_per_unit=1.0,
        )
    if top is not None:
        proposals = {pid: p[:top] for pid, p in proposals.items()}
    return SiteDetections(
        site_dir=site, detector=path, device=dev, proposals=proposals, preprocessing=result,
        evaluation=evaluation, n_annotated=len(annotated), unreadable=unreadable,
    )  # fmt: skip


def _bar(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="patient", leave=False)


def write_proposals_csv(proposals: Mapping[str, np.ndarray], path: str | os.PathLike[str]) -> Path:
    """Write ``proposals`` (patient id → ``(n, 5)`` patient mm) as :data:`PROPOSAL_COLUMNS`,
    patients sorted, most confident first; atomically (temporary file, then rename)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(PROPOSAL_COLUMNS)
            for pid in sorted(proposals):
                for rank, (x, y, z, d, conf) in enumerate(np.asarray(proposals[pid]), start=1):
                    writer.writerow(
                        [pid, rank, f"{x:.2f}", f"{y:.2f}", f"{z:.2f}", f"{d:.2f}", f"{conf:.4f}"]
                    )
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def read_proposals_csv(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a file of :func:`write_proposals_csv` back: patient id → ``(n, 5)`` in rank order.

    Raises:
        ValueError: the header is not :data:`PROPOSAL_COLUMNS` (the message names the file).
    """
    p = Path(path)
    with p.open(newline="") as fh:
        reader = csv.reader(fh)
        header = tuple(next(reader, ()))
        if header != PROPOSAL_COLUMNS:
            raise ValueError(f"{p}: expected columns {','.join(PROPOSAL_COLUMNS)}, got {header}")
        rows: dict[str, list[tuple[int, list[float]]]] = {}
        for line, row in enumerate(reader, start=2):
            try:
                values = [float(v) for v in row[2:]]
                rows.setdefault(row[0], []).append((int(row[1]), values))
            except (ValueError, IndexError):
                raise ValueError(f"{p} line {line}: not a proposal row: {row}") from None
    return {
        pid: np.asarray([v for _, v in sorted(items)], dtype=np.float64).reshape(-1, 5)
        for pid, items in rows.items()
    }
