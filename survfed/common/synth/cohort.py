"""Write a synthetic multi-site cohort: site folders for training, ``_truth`` for checking.

Layout written by :func:`make_cohort`::

    OUT/<site>/clinical.csv      patient_id,time_days,event,cancer,nodules_annotated,
                                 baseline_date,age,sex
    OUT/<site>/nodules.csv       patient_id,x_mm,y_mm,z_mm,diameter_mm (annotated patients)
    OUT/<site>/dicom/...         CT Image Storage files, layout and encoding per site
    OUT/_truth/<site>/truth.csv, nodules_truth.csv, <pid>_lung.nii.gz, <pid>_nodules.nii.gz
    OUT/_truth/cohort.json       seed, preset, sites, oracle C-index per site, parameters

Training code never reads ``_truth``. The same seed writes the same bytes.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from survfed.common.synth.naming import patient_ids
from survfed.common.synth.nodules import MASS_DIAMETER_MM
from survfed.common.synth.outcomes import OutcomeParams, oracle_c_index
from survfed.common.synth.patient import FOLLOW_UP_DAYS, PatientResult, PatientTask, make_patient
from survfed.common.synth.presets import get_preset
from survfed.common.synth.sites import SiteProfile, parse_sites, site_key, site_profile

__all__ = ["GENERATOR_VERSION", "CohortSummary", "SiteSummary", "make_cohort", "parse_sites"]

GENERATOR_VERSION = "1.1"  # 1.1: baseline_date in clinical.csv, follow-up scans
TRUTH_DIR = "_truth"
CLINICAL_COLUMNS = (
    "patient_id",
    "time_days",
    "event",
    "cancer",
    "nodules_annotated",
    "baseline_date",
    "age",
    "sex",
)
NODULE_COLUMNS = ("patient_id", "x_mm", "y_mm", "z_mm", "diameter_mm")
NODULE_TRUTH_COLUMNS = (
    "patient_id",
    "index",
    "kind",
    "malignant",
    "x_mm",
    "y_mm",
    "z_mm",
    "diameter_mm",
    "irregularity",
    "hu",
    "hu_ggo",
    "annotated",
    "mask_voxels",
)


@dataclass(frozen=True)
class SiteSummary:
    """Counts for one site; ``oracle_c_index`` is Harrell's C of the true log-hazards."""

    n_patients: int
    n_events: int
    n_cancer: int
    n_annotated: int
    n_series: int
    n_files: int
    oracle_c_index: float
    bytes: int


@dataclass(frozen=True)
class CohortSummary:
    """What :func:`make_cohort` wrote; ``seconds`` is wall-clock time (never written)."""

    out: Path
    seed: int
    preset: str
    sites: dict[str, SiteSummary] = field(default_factory=dict)
    oracle_c_index: float = float("nan")
    seconds: float = 0.0
    bytes: int = 0
    masses: float = 0.0
    follow_up_scans: float = 0.0

    @property
    def n_patients(self) -> int:
        """Patients over all sites."""
        return sum(s.n_patients for s in self.sites.values())

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary (NaN C-indices become ``None``)."""

        def clean(value: object) -> object:
            if isinstance(value, float) and not np.isfinite(value):
                return None
            return value

        return {
            "out": str(self.out),
            "seed": self.seed,
            "preset": self.preset,
            "masses": self.masses,
            "follow_up_scans": self.follow_up_scans,
            "n_patients": self.n_patients,
            "oracle_c_index": clean(self.oracle_c_index),
            "seconds": round(self.seconds, 2),
            "bytes": self.bytes,
            "sites": {
                name: {k: clean(v) for k, v in asdict(s).items()} for name, s in self.sites.items()
            },
        }

    def format_text(self) -> str:
        """A small human-readable table of the sites."""
        lines = [
            f"{'site':<16}{'patients':>9}{'events':>8}{'cancer':>8}{'series':>8}"
            f"{'files':>8}{'oracle C':>10}{'MB':>9}"
        ]
        for name, s in self.sites.items():
            lines.append(
                f"{name:<16}{s.n_patients:>9}{s.n_events:>8}{s.n_cancer:>8}{s.n_series:>8}"
                f"{s.n_files:>8}{s.oracle_c_index:>10.3f}{s.bytes / 1e6:>9.1f}"
            )
        lines.append(
            f"{self.n_patients} patients, pooled oracle C-index {self.oracle_c_index:.3f}, "
            f"{self.bytes / 1e6:.1f} MB in {self.seconds:.1f} s -> {self.out} "
            f"(truth in {self.out / TRUTH_DIR})"
        )
        if self.masses:
            lo, hi = MASS_DIAMETER_MM
            lines.append(f"malignant lesions drawn as {lo:g}-{hi:g} mm masses: {self.masses:.0%}")
        if self.follow_up_scans:
            lines.append(
                f"patients with a follow-up CT after baseline_date: up to "
                f"{self.follow_up_scans:.0%} (those still followed {FOLLOW_UP_DAYS[0]} days on)"
            )
        return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float | np.floating):
        if not np.isfinite(value):
            return "inf" if value > 0 else ("nan" if np.isnan(value) else "-inf")
        return f"{float(value):.4f}"
    return str(value)


def _write_csv(path: Path, columns: Iterable[str], rows: Iterable[Mapping[str, object]]) -> None:
    columns = list(columns)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_fmt(row[c]) for c in columns])


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _prepare_out(out: Path, sites: Mapping[str, int], overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"out folder {out} is not empty; choose an empty or new folder, or pass "
                "overwrite=True (--overwrite) to replace the cohort written there"
            )
        previous: list[str] = []
        meta = out / TRUTH_DIR / "cohort.json"
        if meta.is_file():  # the sites of the cohort written there before
            try:
                previous = [str(s) for s in json.loads(meta.read_text("utf-8")).get("sites", {})]
            except (ValueError, AttributeError):
                previous = []
        for name in [*sites, *previous, TRUTH_DIR]:
            if "/" in name or "\\" in name or name in ("", ".", ".."):
                continue
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _unique_prefixes(profiles: list[SiteProfile]) -> list[str]:
    seen: dict[str, int] = {}
    prefixes = []
    for k, profile in enumerate(profiles):
        prefix = profile.id_prefix
        if prefix in seen:
            prefix = f"{prefix}{k}"
        seen[prefix] = k
        prefixes.append(prefix)
    return prefixes


def _run(tasks: list[PatientTask], workers: int, progress: bool) -> list[PatientResult]:
    """Make every patient, in worker processes when ``workers > 1``.

    Workers are forked (POSIX) so that callers need no ``if __name__ == "__main__"`` guard;
    all tasks are submitted before the progress bar (and its thread) exists.
    """
    from tqdm import tqdm

    results: list[PatientResult] = []
    if workers <= 1:
        with tqdm(
            total=len(tasks), desc="patients", unit="patient", disable=None if progress else True
        ) as bar:
            for task in tasks:
                results.append(make_patient(task))
                bar.update(1)
        return results
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(make_patient, task) for task in tasks]
        with tqdm(
            total=len(tasks), desc="patients", unit="patient", disable=None if progress else True
        ) as bar:
            try:
                for future in as_completed(futures):
                    results.append(future.result())
                    bar.update(1)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    return results


def make_cohort(
    out: Path,
    sites: Mapping[str, int],
    *,
    seed: int = 0,
    preset: str = "tiny",
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    params: OutcomeParams | None = None,
    masses: float = 0.0,
    follow_up_scans: float = 0.0,
) -> CohortSummary:
    """Write a synthetic multi-site cohort into ``out`` (see the module docstring).

    Args:
        out: output folder; must be missing or empty unless ``overwrite``.
        sites: site name -> number of patients (e.g. from :func:`parse_sites`).
        seed: master seed (>= 0); the same seed writes the same bytes.
        preset: ``"tiny"`` (128 x 128 slices, fast) or ``"standard"`` (512 x 512).
        workers: parallel processes; default ``min(2, cpu count)``. The output does not depend
            on it.
        progress: show a progress bar over patients.
        overwrite: replace the site folders and ``_truth`` of a cohort already in ``out``.
        params: hazard coefficients (default :class:`OutcomeParams`).
        masses: share in [0, 1] of malignant lesions drawn as masses of 30-60 mm instead of
            nodules of 8-30 mm (:data:`~survfed.common.synth.nodules.MASS_DIAMETER_MM`). At 0
            (the default) the cohort is byte for byte the one written without this option.
        follow_up_scans: share in [0, 1] of patients who also get a follow-up CT study
            60-400 days after ``baseline_date`` (thinnest slices, malignant nodules 1.2-1.6 ×
            wider), if still followed then. ``clinical.csv``'s ``baseline_date`` names the scan
            at time zero; the truth masks are of that scan. At 0 nothing else changes.

    Returns:
        A :class:`CohortSummary` with per-site counts, oracle C-index, bytes and seconds.
    """
    start = time.perf_counter()
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    preset_spec = get_preset(preset)
    if not isinstance(sites, Mapping) or not sites:
        raise ValueError("sites must be a non-empty mapping of site name -> patient count")
    for name, count in sites.items():
        if not isinstance(count, int | np.integer) or isinstance(count, bool) or count < 1:
            raise ValueError(
                f"patient count of site {name!r} must be a positive integer, got {count!r}"
            )
    profiles = [site_profile(name) for name in sites]
    if not (isinstance(masses, int | float) and 0.0 <= float(masses) <= 1.0):
        raise ValueError(f"masses must be a share between 0 and 1, got {masses!r}")
    if not (isinstance(follow_up_scans, int | float) and 0.0 <= float(follow_up_scans) <= 1.0):
        raise ValueError(
            f"follow_up_scans must be a share between 0 and 1, got {follow_up_scans!r}"
        )
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    params = params or OutcomeParams()
    out = Path(out)
    _prepare_out(out, sites, overwrite)

    tasks: list[PatientTask] = []
    for profile, prefix in zip(profiles, _unique_prefixes(profiles), strict=True):
        site_dir, truth_dir = out / profile.name, out / TRUTH_DIR / profile.name
        (site_dir / "dicom").mkdir(parents=True)
        truth_dir.mkdir(parents=True)
        id_rng = np.random.default_rng(
            np.random.SeedSequence([int(seed), site_key(profile.name), 2**31 - 1])
        )
        ids = patient_ids(id_rng, prefix, int(sites[profile.name]))
        tasks += [
            PatientTask(
                int(seed),
                profile,
                preset_spec,
                k,
                pid,
                site_dir,
                truth_dir,
                params,
                float(masses),
                float(follow_up_scans),
            )
            for k, pid in enumerate(ids)
        ]
    results = _run(tasks, min(workers, len(tasks)), progress)

    summaries: dict[str, SiteSummary] = {}
    all_time, all_event, all_eta = [], [], []
    site_json: dict[str, object] = {}
    for profile in profiles:
        rows = sorted(
            (r for r in results if r.site == profile.name),
            key=lambda r: str(r.clinical["patient_id"]),
        )
        site_dir, truth_dir = out / profile.name, out / TRUTH_DIR / profile.name
        _write_csv(site_dir / "clinical.csv", CLINICAL_COLUMNS, [r.clinical for r in rows])
        _write_csv(
            site_dir / "nodules.csv", NODULE_COLUMNS, [a for r in rows for a in r.annotations]
        )
        truth_rows = [r.truth for r in rows]
        _write_csv(truth_dir / "truth.csv", list(truth_rows[0]), truth_rows)
        nodule_rows = [n for r in rows for n in r.nodules_truth]
        _write_csv(truth_dir / "nodules_truth.csv", NODULE_TRUTH_COLUMNS, nodule_rows)
        time_days = np.array([r.clinical["time_days"] for r in rows], dtype=float)
        event = np.array([r.clinical["event"] for r in rows], dtype=int)
        eta = np.array([r.truth["log_hazard"] for r in rows], dtype=float)
        all_time.append(time_days)
        all_event.append(event)
        all_eta.append(eta)
        c_index = oracle_c_index(time_days, event, eta)
        summaries[profile.name] = SiteSummary(
            n_patients=len(rows),
            n_events=int(event.sum()),
            n_cancer=int(sum(r.clinical["cancer"] for r in rows)),
            n_annotated=int(sum(r.clinical["nodules_annotated"] for r in rows)),
            n_series=int(sum(r.n_series for r in rows)),
            n_files=int(sum(r.n_files for r in rows)),
            oracle_c_index=c_index,
            bytes=_tree_bytes(site_dir),
        )
        site_json[profile.name] = {
            **{k: v for k, v in asdict(summaries[profile.name]).items() if k != "bytes"},
            "profile": asdict(profile),
        }
    pooled = oracle_c_index(
        np.concatenate(all_time), np.concatenate(all_event), np.concatenate(all_eta)
    )
    cohort = {
        "generator": "survfed.common.synth",
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "preset": preset_spec.name,
        "sites": site_json,
        "oracle_c_index": pooled,
        **({"masses": float(masses)} if masses else {}),
        **({"follow_up_scans": float(follow_up_scans)} if follow_up_scans else {}),
        "outcome_params": params.as_dict(),
        "formula": (
            "eta = beta_0 + cancer * (beta_c + beta_d * (d_max_mm - d_ref_mm) / 10 + beta_s * "
            "(irregularity - 0.5)); eps = beta_age * (age - 65) / 10 + N(0, sigma_eps^2); "
            "T ~ Exponential(rate = baseline_hazard_per_year * exp(eta + eps)) years; "
            "C = min(follow_up - U(0, accrual), Exponential(loss_rate_per_year)); "
            "time_days = max(1, ceil(min(T, C))), event = T <= C"
        ),
    }
    (out / TRUTH_DIR / "cohort.json").write_text(
        json.dumps(cohort, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8"
    )
    total = sum(s.bytes for s in summaries.values()) + _tree_bytes(out / TRUTH_DIR)
    return CohortSummary(
        out=out,
        seed=int(seed),
        preset=preset_spec.name,
        sites=summaries,
        oracle_c_index=pooled,
        seconds=time.perf_counter() - start,
        bytes=total,
        masses=float(masses),
        follow_up_scans=float(follow_up_scans),
    )
