"""Read and validate a site's ``clinical.csv`` and ``nodules.csv``.

``clinical.csv`` columns: ``patient_id``, ``time_days`` (≥ 0, days), ``event`` (0/1) are
required; ``cancer`` (0/1 or empty) and ``nodules_annotated`` (0/1) are optional; every other
column is a covariate. When ``nodules_annotated`` is absent every patient counts as annotated.
Two optional columns say which CT is the patient's baseline scan (the one at time zero, which
``time_days`` counts from): ``baseline_date`` (``YYYY-MM-DD`` or DICOM ``YYYYMMDD``; the newest CT
study on or before that day is used) and ``series_uid`` (that exact SeriesInstanceUID is used);
empty means "not given" (see :mod:`survfed.client.catalogue`).

``nodules.csv`` (optional) columns: ``patient_id``, ``x_mm``, ``y_mm``, ``z_mm`` (patient LPS
coordinates, mm) and ``diameter_mm`` (> 0). A patient marked annotated with no rows there has no
nodules. A bad nodule row makes that patient's annotations untrustworthy, so the patient is
marked not annotated (a warning); an unusable ``nodules.csv`` marks every patient not annotated.

Every defect becomes a :class:`Problem` naming the file and the 1-based line number (the header
is line 1). Rows with errors are left out; the good rows are kept.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CLINICAL_REQUIRED",
    "NODULES_REQUIRED",
    "ClinicalRow",
    "ClinicalTable",
    "Nodule",
    "NoduleTable",
    "Problem",
    "parse_date",
    "read_clinical",
    "read_nodules",
]

CLINICAL_REQUIRED = ("patient_id", "time_days", "event")
NODULES_REQUIRED = ("patient_id", "x_mm", "y_mm", "z_mm", "diameter_mm")
_RESERVED = (*CLINICAL_REQUIRED, "cancer", "nodules_annotated", "baseline_date", "series_uid")
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})|(\d{4})(\d{2})(\d{2})")  # ISO, or DICOM's DA
_EXTRA = "\0extra"  # key marking a row with more values than header names


@dataclass(frozen=True)
class Problem:
    """One defect found while reading a site.

    Attributes:
        patient_id: the patient concerned, or None when it is not known.
        path: the file (or folder), relative to the site folder where possible; for CSV rows
            ``"clinical.csv:12"`` (file and 1-based line).
        reason: what is wrong, in words an IT person can act on.
        severity: ``"error"`` (the file/series/patient/row is excluded) or ``"warning"``
            (used anyway, perhaps after a repair).
    """

    patient_id: str | None
    path: str
    reason: str
    severity: str = "error"

    def __post_init__(self) -> None:
        if self.severity not in ("error", "warning"):
            raise ValueError(f"severity must be 'error' or 'warning', got {self.severity!r}")

    def to_dict(self) -> dict[str, str | None]:
        """``{patient_id, path, reason, severity}``."""
        return {
            "patient_id": self.patient_id,
            "path": self.path,
            "reason": self.reason,
            "severity": self.severity,
        }


@dataclass(frozen=True)
class ClinicalRow:
    """One valid patient row of ``clinical.csv``.

    Attributes:
        patient_id: the patient identifier (matches DICOM PatientID).
        time_days: follow-up time in days (≥ 0).
        event: 1 = event (death) observed, 0 = censored.
        cancer: 1/0, or None when unknown or the column is absent.
        nodules_annotated: whether nodule annotations are complete for this patient.
        covariates: other columns; numbers as float, empty as None, other text as str.
        line: 1-based line number in the file.
        baseline_date: the day of the baseline scan (time zero), or None when not given.
        series_uid: the SeriesInstanceUID of the baseline scan, or "" when not given.
    """

    patient_id: str
    time_days: float
    event: int
    cancer: int | None
    nodules_annotated: bool
    covariates: dict[str, float | str | None]
    line: int
    baseline_date: dt.date | None = None
    series_uid: str = ""


@dataclass(frozen=True)
class ClinicalTable:
    """The valid rows of ``clinical.csv`` and the problems found."""

    rows: dict[str, ClinicalRow]
    problems: tuple[Problem, ...]
    covariate_names: tuple[str, ...] = ()
    usable: bool = True  # False when the file is missing or lacks required columns


@dataclass(frozen=True)
class Nodule:
    """One annotated nodule: centre ``(x, y, z)`` in patient mm and diameter in mm."""

    x_mm: float
    y_mm: float
    z_mm: float
    diameter_mm: float


@dataclass(frozen=True)
class NoduleTable:
    """Valid nodules per patient, patients whose annotations are unreliable, and problems."""

    nodules: dict[str, tuple[Nodule, ...]]
    unreliable: frozenset[str] = field(default_factory=frozenset)
    problems: tuple[Problem, ...] = ()
    usable: bool = True  # False when the file exists but cannot be used at all


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header names (stripped) and ``(line, row)`` pairs; blank lines are skipped."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            return [], []
        names = [name.strip() for name in header]
        rows: list[tuple[int, dict[str, str]]] = []
        start = reader.line_num + 1
        for values in reader:
            line = start
            start = reader.line_num + 1
            if not any(v.strip() for v in values):
                continue
            row = {
                name: (values[i].strip() if i < len(values) else "") for i, name in enumerate(names)
            }
            if len(values) > len(names):
                row[_EXTRA] = str(len(values) - len(names))
            rows.append((line, row))
    return names, rows


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _binary(text: str) -> int | None:
    value = _number(text)
    if value is None or value not in (0.0, 1.0):
        return None
    return int(value)


def parse_date(text: str) -> dt.date | None:
    """``YYYY-MM-DD`` or DICOM ``YYYYMMDD`` as a date; None when ``text`` is neither."""
    match = _DATE.fullmatch(text.strip())
    if match is None:
        return None
    try:
        return dt.date(*(int(part) for part in match.groups() if part is not None))
    except ValueError:  # month 13, 30 February, ...
        return None


def _missing_file_table(label: str, reason: str) -> ClinicalTable:
    return ClinicalTable(rows={}, problems=(Problem(None, label, reason),), usable=False)


def read_clinical(path: Path, *, label: str = "clinical.csv") -> ClinicalTable:
    """Read and validate ``clinical.csv``.

    Args:
        path: the CSV file.
        label: how the file is named in problems (e.g. relative to the site folder).

    Returns:
        A :class:`ClinicalTable`; when the file is missing, unreadable or lacks a required
        column, ``rows`` is empty, ``usable`` is False and one problem says why.
    """
    path = Path(path)
    if not path.is_file():
        return _missing_file_table(label, "clinical.csv not found")
    try:
        names, raw_rows = _read_csv(path)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return _missing_file_table(label, f"cannot read clinical.csv ({exc})")
    missing = [c for c in CLINICAL_REQUIRED if c not in names]
    if missing:
        return _missing_file_table(
            label, f"missing required column(s): {', '.join(missing)}; file not used"
        )
    duplicate_names = sorted({n for n in names if names.count(n) > 1})
    problems: list[Problem] = []
    if duplicate_names:
        problems.append(
            Problem(
                None, label, f"duplicate column name(s): {', '.join(duplicate_names)}", "warning"
            )
        )
    has_annotated = "nodules_annotated" in names
    covariate_names = tuple(n for n in dict.fromkeys(names) if n and n not in _RESERVED)

    by_id: dict[str, list[int]] = {}
    parsed: dict[int, ClinicalRow] = {}
    for line, row in raw_rows:
        where = f"{label}:{line}"
        patient_id = row["patient_id"]
        if not patient_id:
            problems.append(Problem(None, where, "empty patient_id; row skipped"))
            continue
        by_id.setdefault(patient_id, []).append(line)
        reasons: list[str] = []
        time_text = row["time_days"]
        time_days = _number(time_text)
        if not time_text:
            reasons.append("time_days is empty")
        elif time_days is None:
            reasons.append(f"time_days {time_text!r} is not a number")
        elif math.isnan(time_days):
            reasons.append("time_days is NaN")
        elif math.isinf(time_days):
            reasons.append("time_days is infinite")
        elif time_days < 0:
            reasons.append(f"time_days {time_text} is negative")
        event = _binary(row["event"])
        if event is None:
            reasons.append(f"event {row['event']!r} is not 0 or 1")
        cancer: int | None = None
        if "cancer" in row and row["cancer"] != "":
            cancer = _binary(row["cancer"])
            if cancer is None:
                reasons.append(f"cancer {row['cancer']!r} is not 0, 1 or empty")
        baseline_text = row.get("baseline_date", "")
        baseline = parse_date(baseline_text) if baseline_text else None
        if baseline_text and baseline is None:
            reasons.append(f"baseline_date {baseline_text!r} is not a date (YYYY-MM-DD)")
        if _EXTRA in row:
            reasons.append(f"{row[_EXTRA]} more value(s) than columns")
        if reasons:
            problems.append(Problem(patient_id, where, "; ".join(reasons) + "; row skipped"))
            continue
        annotated = True
        if has_annotated:
            flag = _binary(row["nodules_annotated"])
            if flag is None:
                problems.append(
                    Problem(
                        patient_id,
                        where,
                        f"nodules_annotated {row['nodules_annotated']!r} is not 0 or 1; "
                        "treated as 0 (not annotated)",
                        "warning",
                    )
                )
                flag = 0
            annotated = bool(flag)
        covariates: dict[str, float | str | None] = {}
        for name in covariate_names:
            text = row.get(name, "")
            value = _number(text) if text else None
            covariates[name] = None if not text else (value if value is not None else text)
        parsed[line] = ClinicalRow(
            patient_id=patient_id,
            time_days=float(time_days),  # type: ignore[arg-type]
            event=int(event),  # type: ignore[arg-type]
            cancer=cancer,
            nodules_annotated=annotated,
            covariates=covariates,
            line=line,
            baseline_date=baseline,
            series_uid=row.get("series_uid", ""),
        )

    rows: dict[str, ClinicalRow] = {}
    for patient_id, lines in by_id.items():
        if len(lines) > 1:
            listed = ", ".join(str(n) for n in lines)
            for line in lines:
                problems.append(
                    Problem(
                        patient_id,
                        f"{label}:{line}",
                        f"duplicate patient_id {patient_id!r} on lines {listed}; "
                        "all its rows rejected",
                    )
                )
            continue
        if lines[0] in parsed:
            rows[patient_id] = parsed[lines[0]]
    problems.sort(key=lambda p: _line_of(p.path))
    return ClinicalTable(rows=rows, problems=tuple(problems), covariate_names=covariate_names)


def _line_of(where: str) -> int:
    tail = where.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def read_nodules(path: Path, *, label: str = "nodules.csv") -> NoduleTable:
    """Read and validate ``nodules.csv``.

    Args:
        path: the CSV file. A missing file is not a problem (no nodules anywhere).
        label: how the file is named in problems.

    Returns:
        A :class:`NoduleTable`. Patients with a bad row are listed in ``unreliable``.
    """
    path = Path(path)
    if not path.exists():
        return NoduleTable(nodules={})
    try:
        names, raw_rows = _read_csv(path)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        problem = Problem(None, label, f"cannot read nodules.csv ({exc}); no patient annotated")
        return NoduleTable(nodules={}, problems=(problem,), usable=False)
    missing = [c for c in NODULES_REQUIRED if c not in names]
    if missing:
        problem = Problem(
            None,
            label,
            f"missing required column(s): {', '.join(missing)}; file not used, no patient "
            "counts as annotated",
        )
        return NoduleTable(nodules={}, problems=(problem,), usable=False)
    nodules: dict[str, list[Nodule]] = {}
    unreliable: set[str] = set()
    problems: list[Problem] = []
    for line, row in raw_rows:
        where = f"{label}:{line}"
        patient_id = row["patient_id"]
        if not patient_id:
            problems.append(Problem(None, where, "empty patient_id; row skipped"))
            continue
        values: dict[str, float] = {}
        reasons: list[str] = []
        for name in NODULES_REQUIRED[1:]:
            value = _number(row[name])
            if value is None or not math.isfinite(value):
                reasons.append(f"{name} {row[name]!r} is not a finite number")
            else:
                values[name] = value
        if "diameter_mm" in values and values["diameter_mm"] <= 0:
            reasons.append(f"diameter_mm {row['diameter_mm']} is not positive")
        if reasons:
            unreliable.add(patient_id)
            problems.append(
                Problem(
                    patient_id,
                    where,
                    "; ".join(reasons) + "; row skipped and the patient's annotations not used",
                )
            )
            continue
        nodules.setdefault(patient_id, []).append(Nodule(**values))
    return NoduleTable(
        nodules={pid: tuple(found) for pid, found in nodules.items() if pid not in unreliable},
        unreliable=frozenset(unreliable),
        problems=tuple(problems),
    )
