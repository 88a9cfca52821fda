"""The site catalogue: find every CT series under ``<site>/dicom/``, pick one per patient, and
link it to ``clinical.csv`` and ``nodules.csv``.

What happens to messy data (each skipped item becomes a :class:`Problem` with its path):

* files that are not DICOM, unreadable or truncated → ``error`` for that file;
* series whose Modality is not CT, or made only of localizer (scout) images → ``error`` for the
  series (it is not a CT volume), naming the modality;
* several CT series per patient: ``clinical.csv`` may name the baseline scan (the scan at time
  zero). With ``series_uid`` that series is used and no other; with ``baseline_date`` only
  studies on or before that day are candidates (later ones are follow-up scans). Among the
  candidates, projection images (MIP, MinIP: ImageType) only when nothing else is usable; then
  the most recent study (StudyDate + StudyTime) wins, then original axial images over reformats
  in other planes and DERIVED images, then the thinnest slice spacing; the others are listed in
  :attr:`SitePatient.other_series` (not problems). Choosing a projection, a reformat or derived
  images (nothing else usable) is a ``warning``; so is choosing among studies of different days
  when ``clinical.csv`` names neither (the newest may be a follow-up scan). When the preferred
  series is unusable (see :mod:`survfed.common.imaging.dicom_read` for the geometry rules) the
  next one is used and the reason is reported, except for a series named by ``series_uid``;
* repairs made to the chosen series (duplicate files dropped, uneven spacing resampled, gantry
  tilt corrected) → ``warning``;
* a series without a clinical row, a clinical row without usable images, and every
  ``clinical.csv`` / ``nodules.csv`` defect → ``error`` for that patient or row.

Only header reads happen while cataloguing (plus the few slices needed to compare duplicates);
pixels are decoded by :meth:`SiteCatalogue.load_volume`.
"""

from __future__ import annotations

import datetime as dt
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from survfed.client.clinical import (
    ClinicalRow,
    ClinicalTable,
    NoduleTable,
    Problem,
    parse_date,
    read_clinical,
    read_nodules,
)
from survfed.client.header_cache import read_headers
from survfed.common.imaging.dicom_read import (
    DicomHeader,
    DicomReadError,
    SeriesError,
    SeriesPlan,
    load_series,
    plan_series,
)
from survfed.common.imaging.volume import Volume

__all__ = [
    "NotASiteError",
    "Problem",
    "SeriesSummary",
    "SiteCatalogue",
    "SiteDataError",
    "SitePatient",
    "catalogue_site",
]


class NotASiteError(Exception):
    """The folder is not a survfed site (no ``clinical.csv`` and no ``dicom/``)."""


class SiteDataError(Exception):
    """A patient's images could not be loaded; the message names the patient and the file."""


@dataclass(frozen=True)
class SeriesSummary:
    """One DICOM series found at the site.

    Attributes:
        series_instance_uid: the series UID.
        patient_id: its PatientID (empty when missing).
        modality: DICOM Modality.
        study_datetime: ``YYYYMMDDHHMMSS`` of the study.
        n_files: number of files in the series.
        description: its SeriesDescription ("" when absent).
        folder: folder holding its (first) file, relative to the site.
        status: ``"chosen"``, ``"not chosen: ..."`` or ``"unusable: ..."`` / ``"skipped: ..."``.
        slice_spacing_mm: output slice spacing when the geometry is valid, else None.
        pixel_spacing_mm: ``(row, column)`` spacing in mm when known.
        shape: output ``(K, J, I)`` when the geometry is valid.
        transfer_syntaxes: transfer syntax UIDs used by its files.
    """

    series_instance_uid: str
    patient_id: str
    modality: str
    study_datetime: str
    n_files: int
    folder: str
    status: str
    slice_spacing_mm: float | None = None
    pixel_spacing_mm: tuple[float, float] | None = None
    shape: tuple[int, int, int] | None = None
    transfer_syntaxes: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class SitePatient:
    """Everything the site knows about one patient.

    Attributes:
        patient_id: the identifier shared by DICOM PatientID and ``clinical.csv``.
        clinical: the valid clinical row, or None.
        series_instance_uid: the chosen CT series ("" when none is usable).
        plan: the chosen series' validated geometry, or None.
        annotated: whether nodule annotations are complete (detector training may use it).
        nodules_mm: ``(n, 4)`` float64 of ``(x, y, z, diameter)`` in patient mm.
        other_series: ``(series UID, why not chosen)`` for the patient's other series.
    """

    patient_id: str
    clinical: ClinicalRow | None
    series_instance_uid: str = ""
    plan: SeriesPlan | None = None
    annotated: bool = False
    nodules_mm: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    other_series: tuple[tuple[str, str], ...] = ()

    @property
    def files(self) -> tuple[Path, ...]:
        """The chosen series' files, sorted along the slice normal (a multi-frame file once)."""
        return tuple(dict.fromkeys(h.path for h in self.plan.headers)) if self.plan else ()

    @property
    def usable(self) -> bool:
        """A valid clinical row and a usable CT series."""
        return self.clinical is not None and self.plan is not None


class SiteCatalogue:
    """The result of :func:`catalogue_site`.

    Attributes:
        site_dir: the site folder.
        patients: every patient seen in clinical.csv or DICOM, by ID.
        series: every series found, with its status.
        clinical: the parsed ``clinical.csv``.
        n_files: number of files scanned under ``dicom/``.
    """

    def __init__(
        self,
        site_dir: Path,
        patients: dict[str, SitePatient],
        series: list[SeriesSummary],
        problems: list[Problem],
        clinical: ClinicalTable,
        n_files: int,
    ) -> None:
        self.site_dir = site_dir
        self.patients = patients
        self.series = series
        self.clinical = clinical
        self.n_files = n_files
        self._problems = list(problems)
        self._failed: set[str] = set()

    @property
    def problems(self) -> list[Problem]:
        """Every problem found so far (a copy; load failures are appended as they happen)."""
        return list(self._problems)

    @property
    def usable_patients(self) -> list[SitePatient]:
        """Patients with a clinical row and a usable CT series, sorted by ID."""
        return [
            p for pid, p in sorted(self.patients.items()) if p.usable and pid not in self._failed
        ]

    def relative(self, path: Path | str) -> str:
        """``path`` relative to the site folder when inside it, POSIX style."""
        return _relative(self.site_dir, path)

    def load_volume(self, patient_id: str) -> Volume:
        """Decode the chosen series of a usable patient into a HU volume.

        Raises:
            KeyError: unknown patient.
            SiteDataError: the patient is not usable or a file cannot be decoded; a decode
                failure is also recorded as a problem and the patient stops being usable.
        """
        if patient_id not in self.patients:
            raise KeyError(f"patient {patient_id!r} is not in site {self.site_dir}")
        patient = self.patients[patient_id]
        if not patient.usable or patient_id in self._failed:
            raise SiteDataError(f"patient {patient_id!r} has no usable CT series")
        try:
            return load_series(patient.plan)  # type: ignore[arg-type]
        except SeriesError as exc:
            where = self.relative(exc.path)
            self._problems.append(Problem(patient_id, where, exc.reason))
            self._failed.add(patient_id)
            raise SiteDataError(f"patient {patient_id!r}: {where}: {exc.reason}") from exc

    def nodules_voxel(self, patient_id: str, volume: Volume) -> np.ndarray:
        """The patient's nodules as ``(n, 4)`` float64 ``(k, j, i, diameter_mm)`` in ``volume``.

        Uses :meth:`Volume.patient_to_voxel`, so any orientation is handled.
        """
        if patient_id not in self.patients:
            raise KeyError(f"patient {patient_id!r} is not in site {self.site_dir}")
        nodules = self.patients[patient_id].nodules_mm
        if len(nodules) == 0:
            return np.zeros((0, 4), dtype=np.float64)
        kji = volume.patient_to_voxel(nodules[:, :3])
        return np.concatenate([kji, nodules[:, 3:4]], axis=1)


def _relative(site_dir: Path, path: Path | str) -> str:
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(site_dir)).as_posix()
    except ValueError:
        return str(path)


def _walk(root: Path) -> list[Path]:
    """Every regular file under ``root``, depth-first in sorted order."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        found.extend(Path(folder) / name for name in sorted(files))
    return found


def _series_folder(site_dir: Path, headers: list[DicomHeader]) -> str:
    folder = os.path.commonpath([str(h.path.parent) for h in headers])
    return _relative(site_dir, folder)


def _spacing_estimate(headers: list[DicomHeader]) -> float:
    thickness = [h.slice_thickness for h in headers if h.slice_thickness]
    return float(np.median(thickness)) if thickness else float("inf")


@dataclass
class _Candidate:
    uid: str
    headers: list[DicomHeader]
    folder: str
    plan: SeriesPlan | None = None
    error: SeriesError | None = None

    @property
    def datetime(self) -> str:
        return max(h.study_datetime for h in self.headers)

    @property
    def date(self) -> dt.date | None:
        """The study's day, or None when StudyDate is missing or malformed."""
        return parse_date(self.datetime[:8])

    @property
    def day(self) -> str:
        """:attr:`date` as ``YYYY-MM-DD``, or "no StudyDate"."""
        return self.date.isoformat() if self.date else "no StudyDate"

    @property
    def spacing(self) -> float:
        if self.plan is not None:
            return self.plan.spacing[0]
        return _spacing_estimate(self.headers)

    @property
    def projection(self) -> bool:
        """MIP, MinIP, average or rendering images: not the anatomy slice by slice."""
        return any(h.is_projection for h in self.headers)

    @property
    def not_original(self) -> str:
        """Why this is not an original axial acquisition ("" when it is)."""
        if self.projection:
            return "projection images (MIP/MinIP)"
        if self.headers[0].is_axial is False:
            return "not axial (a reformat)"
        if all(h.is_derived for h in self.headers):
            return "derived images"
        return ""


def _why_not_chosen(candidate: _Candidate, chosen: _Candidate) -> str:
    """Why a usable series lost to the chosen one (the order of :func:`_choose`'s sorts)."""
    if candidate.projection and not chosen.projection:
        return candidate.not_original
    if candidate.datetime < chosen.datetime:
        return "older study"
    if candidate.not_original and not chosen.not_original:
        return candidate.not_original
    if candidate.spacing > chosen.spacing:
        return f"thicker slices ({candidate.spacing:.2f} mm vs {chosen.spacing:.2f} mm)"
    return "another series of the same study"


def _scan(
    site_dir: Path,
    files: list[Path],
    progress: bool,
    problems: list[Problem],
    header_cache: Path | None,
    workers: int,
) -> dict[str, list[DicomHeader]]:
    bar = None
    if progress and files:
        from tqdm import tqdm

        bar = tqdm(total=len(files), desc="scanning DICOM headers", unit="file", disable=None)
    try:
        results = read_headers(
            files,
            cache=header_cache,
            processes=workers,
            on_file=(lambda: bar.update(1)) if bar else None,
            warn=lambda message: problems.append(
                Problem(None, str(header_cache), message, "warning")
            ),
        )
    finally:
        if bar is not None:
            bar.close()
    by_series: dict[str, list[DicomHeader]] = defaultdict(list)
    for path, header in zip(files, results, strict=True):
        if isinstance(header, DicomReadError):
            problems.append(Problem(None, _relative(site_dir, path), header.reason))
            continue
        if not header.series_instance_uid:
            problems.append(
                Problem(
                    header.patient_id or None,
                    _relative(site_dir, path),
                    "SeriesInstanceUID is empty or missing, so the file cannot be grouped "
                    "into a series; file skipped (a de-identification that blanks UIDs does "
                    "this: have it replace them instead)",
                )
            )
            continue
        by_series[header.series_instance_uid].append(header)
    return by_series


def _dates(candidates: list[_Candidate]) -> str:
    return ", ".join(sorted({c.day for c in candidates}))


def _pin_missing(pinned: str, candidates: list[_Candidate], owners: dict[str, str]) -> str:
    """Why the series named by ``series_uid`` is not among the patient's CT candidates."""
    where = owners.get(pinned, "no series with that UID was found under dicom/")
    listed = ", ".join(f"{c.uid} ({c.day})" for c in candidates)
    return f"series_uid {pinned} is not one of this patient's CT series ({where})" + (
        f"; its CT series: {listed}" if listed else ""
    )


def _exclusions(
    candidates: list[_Candidate], row: ClinicalRow | None, owners: dict[str, str]
) -> tuple[dict[str, str], str | None]:
    """Candidates that ``clinical.csv`` rules out (UID -> why), and why none is left, if so."""
    if row is None or not candidates:
        return {}, None
    if row.series_uid:
        excluded = {
            c.uid: f"clinical.csv names series {row.series_uid}"
            for c in candidates
            if c.uid != row.series_uid
        }
        if len(excluded) == len(candidates):
            return excluded, _pin_missing(row.series_uid, candidates, owners)
        return excluded, None
    if row.baseline_date is None:
        return {}, None
    baseline = row.baseline_date.isoformat()
    excluded = {
        c.uid: f"study of {c.day} is after baseline_date {baseline}"
        for c in candidates
        if c.date is not None and c.date > row.baseline_date
    }
    if len(excluded) == len(candidates):
        return excluded, (
            f"no CT study on or before baseline_date {baseline} (studies found: "
            f"{_dates(candidates)}); the later ones are not the scan at time zero"
        )
    return excluded, None


def _choice_notes(
    chosen: _Candidate, candidates: list[_Candidate], row: ClinicalRow | None
) -> list[str]:
    """Warnings about which scan was taken as the baseline (empty when nothing to say)."""
    if row is None:
        return []
    baseline = row.baseline_date
    if row.series_uid:
        if baseline is not None and chosen.date is not None and chosen.date > baseline:
            return [
                f"the series named by series_uid is from a study of {chosen.day}, after "
                f"baseline_date {baseline.isoformat()}; clinical.csv contradicts itself (the "
                "series named is used)"
            ]
        return []
    if baseline is not None:
        if chosen.date is None:
            return [
                f"StudyDate is missing, so the series cannot be checked against baseline_date "
                f"{baseline.isoformat()}; used anyway (no dated study qualifies)"
            ]
        return []
    usable = [c for c in candidates if c.plan is not None]
    if len({c.date for c in usable}) < 2:
        return []
    return [
        f"CT studies of several days ({_dates(usable)}): the newest, "
        f"{chosen.date.isoformat() if chosen.date else 'undated'}, "
        "is used, which may be a follow-up rather than the scan at time zero; give "
        "baseline_date or series_uid in clinical.csv"
    ]


def _choose(
    site_dir: Path,
    patient_id: str,
    candidates: list[_Candidate],
    problems: list[Problem],
    row: ClinicalRow | None,
    owners: dict[str, str],
) -> tuple[_Candidate | None, list[tuple[str, str]], dict[str, str], str | None]:
    """Plan every candidate and pick one.

    Returns:
        (chosen, other_series, status per UID, why none was chosen when ``clinical.csv``'s
        ``series_uid`` or ``baseline_date`` left no candidate).
    """
    for candidate in candidates:
        try:
            candidate.plan = plan_series(candidate.headers)
        except SeriesError as exc:
            candidate.error = exc
    excluded, why_none = _exclusions(candidates, row, owners)
    # stable sorts, last key first: what clinical.csv rules out last; no projection series
    # while another is usable; then the newest study; then original axial images before
    # reformats and derived ones; then the thinnest slices
    candidates.sort(key=lambda c: (bool(c.not_original), c.spacing, c.uid))
    candidates.sort(key=lambda c: c.datetime, reverse=True)
    candidates.sort(key=lambda c: c.projection)
    candidates.sort(key=lambda c: c.uid in excluded)
    chosen = next((c for c in candidates if c.plan is not None and c.uid not in excluded), None)
    pinned = bool(row is not None and row.series_uid)
    others: list[tuple[str, str]] = []
    status: dict[str, str] = {}
    passed_chosen = False
    for candidate in candidates:
        if candidate is chosen:
            passed_chosen = True
            status[candidate.uid] = "chosen"
            for note in candidate.plan.warnings:  # type: ignore[union-attr]
                problems.append(Problem(patient_id, candidate.folder, note, "warning"))
            if candidate.not_original:
                problems.append(
                    Problem(
                        patient_id,
                        candidate.folder,
                        f"the only usable CT series is {candidate.not_original}: "
                        "preprocessing and models expect original axial slices",
                        "warning",
                    )
                )
            for note in _choice_notes(candidate, candidates, row):
                problems.append(Problem(patient_id, candidate.folder, note, "warning"))
            continue
        ruled_out = excluded.get(candidate.uid)
        if candidate.error is not None:
            reason = candidate.error.reason
            status[candidate.uid] = f"unusable: {reason}"
            others.append((candidate.uid, f"unusable: {reason}"))
            if not passed_chosen and ruled_out is None:
                fallback = (
                    "; clinical.csv's series_uid names this series, so no other is used"
                    if pinned
                    else f"; using series {chosen.uid} instead"
                    if chosen
                    else f"; no other CT series qualifies ({next(iter(excluded.values()))})"
                    if excluded
                    else "; no other CT series"
                )
                problems.append(
                    Problem(
                        patient_id,
                        _relative(site_dir, candidate.error.path),
                        f"CT series {candidate.uid} unusable: {reason}{fallback}",
                    )
                )
            else:  # a series that would not have been chosen anyway: still say what is wrong
                why = ruled_out or f"series {chosen.uid if chosen else '?'} is used"
                problems.append(
                    Problem(
                        patient_id,
                        _relative(site_dir, candidate.error.path),
                        f"CT series {candidate.uid} unusable: {reason} (not needed: {why})",
                        "warning",
                    )
                )
            continue
        if ruled_out is not None:
            why = ruled_out
        else:
            assert chosen is not None
            why = _why_not_chosen(candidate, chosen)
        status[candidate.uid] = f"not chosen: {why}"
        others.append((candidate.uid, f"not chosen: {why}"))
    return chosen, others, status, why_none


def _summary(candidate: _Candidate, patient_id: str, modality: str, status: str) -> SeriesSummary:
    plan = candidate.plan
    first = candidate.headers[0]
    return SeriesSummary(
        series_instance_uid=candidate.uid,
        patient_id=patient_id,
        modality=modality,
        study_datetime=candidate.datetime,
        n_files=len(candidate.headers),
        folder=candidate.folder,
        status=status,
        slice_spacing_mm=plan.spacing[0] if plan else None,
        pixel_spacing_mm=first.pixel_spacing,
        shape=plan.shape if plan else None,
        transfer_syntaxes=tuple(sorted({h.transfer_syntax_uid for h in candidate.headers})),
        description=first.series_description,
    )


def catalogue_site(
    site_dir: Path,
    *,
    progress: bool = False,
    header_cache: Path | None = None,
    workers: int = 1,
) -> SiteCatalogue:
    """Scan a site folder and build its catalogue.

    Args:
        site_dir: folder with ``clinical.csv``, ``dicom/`` and optionally ``nodules.csv``.
        progress: show a progress bar while scanning files.
        header_cache: the DICOM header cache to use and update (``<site cache>/``
            :data:`~survfed.client.header_cache.CACHE_FILE`), so that unchanged files are not
            read again; ``None`` reads every header.
        workers: processes allowed for reading the headers not in the cache (used from
            :data:`~survfed.client.header_cache.PROCESS_MIN_FILES` files on; see
            :func:`~survfed.client.header_cache.read_headers`).

    Returns:
        The :class:`SiteCatalogue`.

    Raises:
        NotASiteError: ``site_dir`` is not a folder, or has neither ``clinical.csv`` nor
            ``dicom/``.
    """
    site_dir = Path(site_dir)
    if not site_dir.is_dir():
        raise NotASiteError(f"{site_dir} is not a site: no such folder")
    clinical_path = site_dir / "clinical.csv"
    dicom_dir = site_dir / "dicom"
    if not clinical_path.is_file() and not dicom_dir.is_dir():
        raise NotASiteError(
            f"{site_dir} is not a site: it has neither clinical.csv nor a dicom/ folder"
        )
    problems: list[Problem] = []
    clinical = read_clinical(clinical_path, label="clinical.csv")
    problems.extend(clinical.problems)
    nodule_table: NoduleTable = read_nodules(site_dir / "nodules.csv", label="nodules.csv")
    problems.extend(nodule_table.problems)

    files: list[Path] = []
    if dicom_dir.is_dir():
        files = _walk(dicom_dir)
        if not files:
            problems.append(Problem(None, "dicom", "dicom/ folder holds no files"))
    else:
        problems.append(Problem(None, "dicom", "dicom/ folder not found; no images"))
    by_series = _scan(site_dir, files, progress, problems, header_cache, workers)

    series: list[SeriesSummary] = []
    candidates: dict[str, list[_Candidate]] = defaultdict(list)
    for uid, headers in sorted(by_series.items()):
        folder = _series_folder(site_dir, headers)
        patient_ids = sorted({h.patient_id for h in headers})
        modalities = sorted({h.modality or "(none)" for h in headers})
        candidate = _Candidate(uid, headers, folder)
        patient_id = patient_ids[0] if len(patient_ids) == 1 else ""
        reason = None
        if len(patient_ids) > 1:
            reason = f"series {uid} mixes PatientIDs {', '.join(patient_ids)}; skipped"
        elif not patient_id:
            reason = f"series {uid} has no PatientID, cannot be linked to clinical.csv; skipped"
        elif modalities != ["CT"]:
            reason = (
                f"modality {'/'.join(modalities)}, not CT: series {uid} "
                f"({len(headers)} file(s)) skipped"
            )
        else:
            images = [h for h in headers if not h.is_localizer]
            if not images:
                reason = f"localizer (scout) series {uid}, not a CT volume; skipped"
            elif len(images) < len(headers):
                candidate.headers = images
        if reason is not None:
            problems.append(Problem(patient_id or None, folder, reason))
            series.append(
                _summary(candidate, patient_id, "/".join(modalities), f"skipped: {reason}")
            )
            continue
        candidates[patient_id].append(candidate)

    owners = {summary.series_instance_uid: summary.status for summary in series}  # skipped ones
    for patient_id, found in candidates.items():
        owners.update({c.uid: f"it is a CT series of PatientID {patient_id}" for c in found})
    patients: dict[str, SitePatient] = {}
    rejected_rows = {p.patient_id for p in clinical.problems if p.severity == "error"}
    for patient_id in sorted(set(candidates) | set(clinical.rows)):
        row = clinical.rows.get(patient_id)
        chosen, others, status, why_none = _choose(
            site_dir, patient_id, candidates.get(patient_id, []), problems, row, owners
        )
        for candidate in candidates.get(patient_id, []):
            series.append(_summary(candidate, patient_id, "CT", status[candidate.uid]))
        if row is None and candidates.get(patient_id):
            folder = chosen.folder if chosen else candidates[patient_id][0].folder
            detail = (
                "its clinical.csv row was rejected (see above)"
                if patient_id in rejected_rows
                else "no row in clinical.csv"
                if clinical.usable
                else "clinical.csv is not usable"
            )
            problems.append(
                Problem(patient_id, folder, f"CT series without clinical data: {detail}")
            )
        elif row is not None and chosen is None:
            reason = (
                (why_none or "no usable CT series (see the series problems)")
                if candidates.get(patient_id)
                else "no CT images found for this patient"
            )
            problems.append(Problem(patient_id, f"clinical.csv:{row.line}", reason))
        annotated = bool(
            row is not None
            and row.nodules_annotated
            and nodule_table.usable
            and patient_id not in nodule_table.unreliable
        )
        nodules = nodule_table.nodules.get(patient_id, ()) if annotated else ()
        patients[patient_id] = SitePatient(
            patient_id=patient_id,
            clinical=row,
            series_instance_uid=chosen.uid if chosen else "",
            plan=chosen.plan if chosen else None,
            annotated=annotated,
            nodules_mm=np.asarray(
                [[n.x_mm, n.y_mm, n.z_mm, n.diameter_mm] for n in nodules], dtype=np.float64
            ).reshape(-1, 4),
            other_series=tuple(others),
        )
    known = set(clinical.rows) | rejected_rows
    for patient_id in sorted(set(nodule_table.nodules) - known):
        problems.append(
            Problem(
                patient_id, "nodules.csv", "nodules for a patient not in clinical.csv", "warning"
            )
        )
    series.sort(key=lambda s: (s.patient_id, s.series_instance_uid))
    return SiteCatalogue(site_dir, patients, series, problems, clinical, len(files))
