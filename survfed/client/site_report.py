"""``survfed inspect``: a site summary (patients, outcomes, geometry) and every problem found."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from survfed.client.catalogue import (
    Problem,
    SeriesSummary,
    SiteCatalogue,
    SiteDataError,
    catalogue_site,
)
from survfed.client.clinical import ClinicalRow

__all__ = ["SCAN_RULES", "SERIES_COLUMNS", "SiteReport", "inspect_site", "write_series_csv"]

SCAN_RULES = ("series_uid", "baseline_date", "newest study")
"""How a patient's CT series was chosen (``docs/site-data.md``, "Which scan: the baseline")."""

SERIES_COLUMNS = (
    "patient_id",
    "study_date",
    "study_time",
    "series_uid",
    "description",
    "files",
    "slice_spacing_mm",
    "status",
    "folder",
)
"""Columns of ``survfed inspect --series``: one row per series found, so a person can pick a
patient's baseline scan and copy its ``series_uid`` into ``clinical.csv``."""


def _range(values: list[float]) -> list[float] | None:
    return [round(min(values), 4), round(max(values), 4)] if values else None


@dataclass(frozen=True)
class SiteReport:
    """Summary numbers of one site plus its problems.

    Counts are over *usable* patients (valid clinical row and usable CT series) except
    ``patients`` (every patient seen in clinical.csv or DICOM) and ``series`` (every series
    found). Spacing ranges are ``[min, max]`` in mm over the usable patients' chosen series.
    ``baseline_scan`` counts the usable patients by how their series was chosen
    (:data:`SCAN_RULES`).
    """

    site: str
    patients: int
    usable: int
    series: int
    ct_series: int
    files: int
    events: int
    censored: int
    cancer: int
    cancer_unknown: int
    annotated: int
    nodules: int
    slice_spacing_mm: list[float] | None
    pixel_spacing_mm: list[float] | None
    problems: tuple[Problem, ...] = field(default_factory=tuple)
    deep: bool = False
    baseline_scan: dict[str, int] = field(default_factory=dict)
    series_list: tuple[SeriesSummary, ...] = field(default_factory=tuple)  # not in to_dict

    @property
    def n_errors(self) -> int:
        """Number of problems with severity ``error``."""
        return sum(p.severity == "error" for p in self.problems)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (keys listed in the class, ``problems`` as a list of dicts)."""
        return {
            "site": self.site,
            "patients": self.patients,
            "usable": self.usable,
            "series": self.series,
            "ct_series": self.ct_series,
            "files": self.files,
            "events": self.events,
            "censored": self.censored,
            "cancer": self.cancer,
            "cancer_unknown": self.cancer_unknown,
            "annotated": self.annotated,
            "nodules": self.nodules,
            "slice_spacing_mm": self.slice_spacing_mm,
            "pixel_spacing_mm": self.pixel_spacing_mm,
            "deep": self.deep,
            "baseline_scan": dict(self.baseline_scan),
            "problems": [p.to_dict() for p in self.problems],
        }

    def format_text(self) -> str:
        """A readable summary table followed by every problem, one per line."""

        def spacing(values: list[float] | None) -> str:
            return "-" if values is None else f"{values[0]:g} - {values[1]:g} mm"

        rows = [
            ("site", self.site),
            ("patients", str(self.patients)),
            ("usable patients", str(self.usable)),
            ("series (CT)", f"{self.series} ({self.ct_series})"),
            ("files scanned", str(self.files)),
            ("events", str(self.events)),
            ("censored", str(self.censored)),
            ("cancer", f"{self.cancer} (unknown: {self.cancer_unknown})"),
            ("annotated (nodules)", f"{self.annotated} ({self.nodules})"),
            ("slice spacing", spacing(self.slice_spacing_mm)),
            ("pixel spacing", spacing(self.pixel_spacing_mm)),
            ("scan chosen by", ", ".join(f"{k} {v}" for k, v in self.baseline_scan.items()) or "-"),
            ("pixels decoded", "yes" if self.deep else "no (use --deep)"),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value}" for name, value in rows]
        errors = self.n_errors
        warnings = len(self.problems) - errors
        lines.append("")
        if not self.problems:
            lines.append("no problems found")
        else:
            lines.append(f"problems: {errors} error(s), {warnings} warning(s)")
            for problem in self.problems:
                who = problem.patient_id if problem.patient_id is not None else "-"
                lines.append(
                    f"  {problem.severity.upper():7} {who:<12} {problem.path}: {problem.reason}"
                )
        return "\n".join(lines)


def _scan_choice(rows: list[ClinicalRow]) -> dict[str, int]:
    """How the usable patients' CT was chosen: ``series_uid``, ``baseline_date`` (both from
    clinical.csv) or ``newest study`` (neither given); only the rules used, in that order."""
    rules = [
        "series_uid" if r.series_uid else "baseline_date" if r.baseline_date else "newest study"
        for r in rows
    ]
    return {rule: rules.count(rule) for rule in SCAN_RULES if rule in rules}


def _report(catalogue: SiteCatalogue, site: str, deep: bool) -> SiteReport:
    usable = catalogue.usable_patients
    rows = [p.clinical for p in usable if p.clinical is not None]
    plans = [p.plan for p in usable if p.plan is not None]
    pixel = [s for plan in plans for s in plan.spacing[1:]]
    return SiteReport(
        site=site,
        patients=len(catalogue.patients),
        usable=len(usable),
        series=len(catalogue.series),
        ct_series=sum(s.modality == "CT" for s in catalogue.series),
        files=catalogue.n_files,
        events=sum(r.event == 1 for r in rows),
        censored=sum(r.event == 0 for r in rows),
        cancer=sum(r.cancer == 1 for r in rows),
        cancer_unknown=sum(r.cancer is None for r in rows),
        annotated=sum(p.annotated for p in usable),
        nodules=sum(len(p.nodules_mm) for p in usable if p.annotated),
        slice_spacing_mm=_range([plan.spacing[0] for plan in plans]),
        pixel_spacing_mm=_range(pixel),
        problems=tuple(catalogue.problems),
        deep=deep,
        baseline_scan=_scan_choice(rows),
        series_list=tuple(catalogue.series),
    )


def write_series_csv(series: tuple[SeriesSummary, ...], path: Path) -> int:
    """Write one row per series (:data:`SERIES_COLUMNS`, sorted by patient then study time).

    The file holds patient and series identifiers: it is for the site's own staff and stays at
    the site. Returns the number of rows written.
    """
    rows = sorted(series, key=lambda s: (s.patient_id, s.study_datetime, s.series_instance_uid))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(SERIES_COLUMNS)
        for summary in rows:
            day, time = summary.study_datetime[:8], summary.study_datetime[8:]
            writer.writerow(
                [
                    summary.patient_id,
                    f"{day[:4]}-{day[4:6]}-{day[6:]}" if day != "00000000" else "",
                    f"{time[:2]}:{time[2:4]}:{time[4:]}" if time != "000000" else "",
                    summary.series_instance_uid,
                    summary.description,
                    summary.n_files,
                    f"{summary.slice_spacing_mm:g}" if summary.slice_spacing_mm else "",
                    summary.status,
                    summary.folder,
                ]
            )
    return len(rows)


def inspect_site(
    site_dir: Path,
    *,
    deep: bool = False,
    progress: bool = False,
    catalogue: SiteCatalogue | None = None,
    header_cache: Path | None = None,
    workers: int = 1,
) -> SiteReport:
    """Catalogue a site and summarise it.

    Args:
        site_dir: the site folder.
        deep: also decode every chosen series' pixels (catches corrupt compressed data; slow).
        progress: show progress bars.
        catalogue: the site's catalogue when the caller already made it (not scanned again).
        header_cache: the DICOM header cache to use and update (see :func:`catalogue_site`);
            None reads every file.
        workers: processes allowed for reading headers (see :func:`catalogue_site`).

    Returns:
        The :class:`SiteReport`.

    Raises:
        NotASiteError: the folder is not a site.
    """
    site_dir = Path(site_dir)
    if catalogue is None:
        catalogue = catalogue_site(
            site_dir, progress=progress, header_cache=header_cache, workers=workers
        )
    if deep:
        patients = catalogue.usable_patients
        if progress:
            from tqdm import tqdm

            patients = tqdm(patients, desc="decoding series", unit="patient", disable=None)
        for patient in patients:
            try:
                catalogue.load_volume(patient.patient_id)
            except SiteDataError:
                pass  # recorded in catalogue.problems; the patient is no longer usable
    return _report(catalogue, site_dir.resolve().name, deep)
