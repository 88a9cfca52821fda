"""The site's cache of preprocessed scans (seed 003 lung preprocessing), built in parallel.

Layout::

    <cache dir>/preprocessed/<settings fingerprint>/settings.json
    <cache dir>/preprocessed/<settings fingerprint>/<patient stem>.<series hash>.npz

* The **settings fingerprint** (:meth:`PreprocessConfig.fingerprint`) covers every setting and
  the pipeline version, so a changed setting uses a new folder (and rebuilds).
* The **series hash** covers the series UID and every file's path, size and modification time,
  so new or changed images rebuild that patient; older entries of the patient are removed.
* Each file carries a SHA-256 checksum of its arrays (:meth:`PreprocessedScan.save`); a file
  that cannot be read or fails its checksum is rebuilt, with a warning. Files are written to a
  temporary name and renamed, so an interrupted run never leaves a half file.

:func:`preprocess_site` fills the cache (worker processes, progress bar) and returns a
:class:`SitePreprocessResult`; a patient that fails (images that do not decode, a volume the
pipeline cannot use) is reported with its ID, series and reason, and the others go on. Each
patient's annotated nodules (``nodules.csv``) are checked against the final mask, built or
reused: one that preprocessing greys out is a warning
(:mod:`survfed.common.imaging.preprocess.annotations`).
:func:`load_preprocessed` reads one patient; :func:`clear_cache` removes the cache.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from survfed.client.catalogue import SiteCatalogue, SitePatient
from survfed.common.cache_files import patient_stem, series_files_hash
from survfed.common.imaging.dicom_read import SeriesError, SeriesPlan, load_series
from survfed.common.imaging.preprocess import (
    PreprocessConfig,
    PreprocessedScan,
    PreprocessError,
    ScanFileError,
    preprocess_volume,
)
from survfed.common.imaging.preprocess.annotations import (
    OUTSIDE_MASK_PREFIX,
    annotation_warnings,
)
from survfed.common.imaging.preprocess.export import export_nifti
from survfed.common.worker_pool import worker_pool

__all__ = [
    "CACHE_SUBDIR",
    "PatientOutcome",
    "SitePreprocessResult",
    "cache_folder",
    "clear_cache",
    "entry_path",
    "load_preprocessed",
    "preprocess_site",
]

CACHE_SUBDIR = "preprocessed"


def cache_folder(cache_dir: str | os.PathLike[str], config: PreprocessConfig) -> Path:
    """``<cache_dir>/preprocessed/<fingerprint>``."""
    return Path(cache_dir) / CACHE_SUBDIR / config.fingerprint()


def entry_path(
    cache_dir: str | os.PathLike[str], config: PreprocessConfig, patient: SitePatient
) -> Path:
    """The cache file of ``patient``'s chosen series under ``config``.

    Raises:
        OSError: a series file is gone (the site changed since it was catalogued).
    """
    source = series_files_hash(patient.series_instance_uid, patient.files)
    return cache_folder(cache_dir, config) / f"{patient_stem(patient.patient_id)}.{source}.npz"


def clear_cache(cache_dir: str | os.PathLike[str]) -> int:
    """Remove ``<cache_dir>/preprocessed`` (all settings); returns how many files were removed."""
    root = Path(cache_dir) / CACHE_SUBDIR
    if not root.exists():
        return 0
    n = sum(1 for p in root.rglob("*") if p.is_file())
    shutil.rmtree(root)
    return n


@dataclass(frozen=True)
class PatientOutcome:
    """What happened to one patient.

    Attributes:
        patient_id: the site's patient ID.
        status: ``"built"``, ``"reused"`` or ``"failed"``.
        series_uid: the chosen series.
        where: the series folder (or failing file), relative to the site.
        path: the cache file (None when failed).
        reason: why it failed (empty otherwise).
        warnings: notes on the scan or on the cache entry (e.g. a damaged entry rebuilt).
        lung_volume_ml: both lungs, ml (None when failed).
        shape: ``(Z, Y, X)`` of the preprocessed crop (None when failed).
        seconds: wall time for this patient (reading, preprocessing, writing).
        timings: seconds per pipeline step (built patients only).
    """

    patient_id: str
    status: str
    series_uid: str
    where: str
    path: Path | None = None
    reason: str = ""
    warnings: tuple[str, ...] = ()
    lung_volume_ml: float | None = None
    shape: tuple[int, int, int] | None = None
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "patient_id": self.patient_id,
            "status": self.status,
            "series_uid": self.series_uid,
            "where": self.where,
            "path": str(self.path) if self.path else None,
            "reason": self.reason,
            "warnings": list(self.warnings),
            "lung_volume_ml": self.lung_volume_ml,
            "shape": list(self.shape) if self.shape else None,
            "seconds": round(self.seconds, 3),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }


@dataclass(frozen=True)
class SitePreprocessResult:
    """The result of :func:`preprocess_site`.

    Attributes:
        site_dir: the site folder.
        folder: the cache folder for these settings.
        fingerprint: the settings fingerprint.
        device: where the pipeline ran (``"cpu"`` or ``"cuda"``).
        workers: worker processes used.
        outcomes: one per usable patient, sorted by patient ID.
        seconds: wall time of the whole run.
        export_dir: where NIfTI files and QC pictures were written, if asked.
        notices: one-line notices (device fallback, ...).
    """

    site_dir: Path
    folder: Path
    fingerprint: str
    device: str
    workers: int
    outcomes: tuple[PatientOutcome, ...]
    seconds: float
    export_dir: Path | None = None
    notices: tuple[str, ...] = ()

    def _count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def n_built(self) -> int:
        """Patients preprocessed in this run."""
        return self._count("built")

    @property
    def n_reused(self) -> int:
        """Patients read from the cache."""
        return self._count("reused")

    @property
    def n_failed(self) -> int:
        """Patients that could not be preprocessed."""
        return self._count("failed")

    @property
    def n_ok(self) -> int:
        """Patients with a cache entry after the run."""
        return self.n_built + self.n_reused

    @property
    def n_nodules_outside_mask(self) -> int:
        """Annotated nodules that the final mask greys out (one warning each)."""
        return sum(w.startswith(OUTSIDE_MASK_PREFIX) for o in self.outcomes for w in o.warnings)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the command's ``--json``)."""
        vols = [o.lung_volume_ml for o in self.outcomes if o.lung_volume_ml is not None]
        return {
            "site_dir": str(self.site_dir),
            "cache_folder": str(self.folder),
            "fingerprint": self.fingerprint,
            "device": self.device,
            "workers": self.workers,
            "patients": len(self.outcomes),
            "built": self.n_built,
            "reused": self.n_reused,
            "failed": self.n_failed,
            "nodules_outside_mask": self.n_nodules_outside_mask,
            "seconds": round(self.seconds, 3),
            "mean_lung_volume_ml": round(float(np.mean(vols)), 1) if vols else None,
            "export_dir": str(self.export_dir) if self.export_dir else None,
            "notices": list(self.notices),
            "outcomes": [o.to_dict() for o in self.outcomes],
        }

    def format_text(self) -> str:
        """A readable summary: counts, time, lung volumes, failures and warnings."""
        data = self.to_dict()
        built = [o for o in self.outcomes if o.status == "built"]
        lines = [
            f"site {self.site_dir}: {len(self.outcomes)} usable patients — "
            f"{self.n_built} preprocessed, {self.n_reused} from the cache, {self.n_failed} failed",
            f"device {self.device}, {self.workers} worker(s), {self.seconds:.1f} s"
            + (
                f" ({np.mean([o.seconds for o in built]):.1f} s per preprocessed scan)"
                if built
                else ""
            ),
            f"cache {self.folder}",
        ]
        if data["mean_lung_volume_ml"] is not None:
            vols = [o.lung_volume_ml for o in self.outcomes if o.lung_volume_ml is not None]
            lines.append(
                f"lung volume: mean {data['mean_lung_volume_ml'] / 1000:.2f} L "
                f"(min {min(vols) / 1000:.2f}, max {max(vols) / 1000:.2f})"
            )
        if self.export_dir:
            lines.append(
                f"NIfTI files and QC pictures (<id>_qc.png) in {self.export_dir}; all patients "
                f"on one page: {self.export_dir / 'index.html'}"
            )
        failed = [o for o in self.outcomes if o.status == "failed"]
        if failed:
            lines.append("failed:")
            lines.extend(f"  {o.patient_id}  {o.where}: {o.reason}" for o in failed)
        warned = [o for o in self.outcomes if o.warnings]
        if warned:
            lines.append("warnings:")
            for o in warned:
                lines.extend(f"  {o.patient_id}  {w}" for w in o.warnings)
        return "\n".join(lines)


# ----------------------------------------------------------------------------- workers
@dataclass(frozen=True)
class _Task:
    patient_id: str
    series_uid: str
    where: str
    plan: SeriesPlan
    path: Path
    config: PreprocessConfig
    device: str
    export_dir: Path | None
    nodules_mm: np.ndarray  # (n, 4) x, y, z, diameter of the patient's annotated nodules


def _geometry(plan: SeriesPlan) -> dict[str, Any]:
    return {
        "shape": plan.shape,
        "spacing": plan.spacing,
        "origin": plan.origin,
        "direction": plan.direction,
    }


def _read_entry(path: Path, fingerprint: str) -> tuple[PreprocessedScan | None, str]:
    """The cached scan, or None and why not ("" when the file is simply not there)."""
    if not path.exists():
        return None, ""
    try:
        scan = PreprocessedScan.load(path)
    except ScanFileError as exc:
        return None, f"cache entry damaged ({exc}); rebuilt"
    if scan.fingerprint != fingerprint:
        return None, "cache entry made with other settings; rebuilt"
    return scan, ""


def _run_task(task: _Task) -> PatientOutcome:
    """Preprocess (or reuse) one patient; never raises for a bad patient (top-level: picklable)."""
    start = time.perf_counter()
    base = {"patient_id": task.patient_id, "series_uid": task.series_uid, "where": task.where}
    fingerprint = task.config.fingerprint()
    scan, why = _read_entry(task.path, fingerprint)
    status = "reused"
    notes: list[str] = [why] if why else []
    try:
        if scan is None:
            status = "built"
            volume = load_series(task.plan)
            scan = preprocess_volume(volume, task.config, device=task.device)
            del volume
            for stale in task.path.parent.glob(f"{patient_stem(task.patient_id)}.*.npz"):
                if stale != task.path:
                    stale.unlink(missing_ok=True)
            scan.save(task.path)
        if task.export_dir is not None:  # for built and reused patients alike
            from survfed.common.imaging.preprocess.qc_figure import save_qc_png  # matplotlib

            export_nifti(scan, task.export_dir, task.patient_id, **_geometry(task.plan))
            save_qc_png(scan, task.export_dir, task.patient_id)
    except SeriesError as exc:
        return PatientOutcome(
            **base,
            status="failed",
            reason=f"images could not be decoded: {exc.path.name}: {exc.reason}",
            seconds=time.perf_counter() - start,
        )
    except PreprocessError as exc:
        return PatientOutcome(
            **base, status="failed", reason=str(exc), seconds=time.perf_counter() - start
        )
    except Exception as exc:  # a bug or an environment problem: report, keep the site going
        return PatientOutcome(
            **base,
            status="failed",
            reason=f"unexpected error: {type(exc).__name__}: {exc}",
            seconds=time.perf_counter() - start,
        )
    return PatientOutcome(
        **base,
        status=status,
        path=task.path,
        warnings=tuple(notes) + scan.warnings + tuple(annotation_warnings(scan, task.nodules_mm)),
        lung_volume_ml=round(scan.lung_volume_ml, 1),
        shape=scan.shape,
        seconds=time.perf_counter() - start,
        timings=dict(scan.timings) if status == "built" else {},
    )


def _progress(items: Iterable[Any], total: int, enabled: bool, desc: str) -> Iterable[Any]:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, total=total, desc=desc, unit="patient", disable=None)


def preprocess_site(
    catalogue: SiteCatalogue,
    cache_dir: str | os.PathLike[str],
    config: PreprocessConfig | None = None,
    *,
    device: str = "auto",
    workers: int = 1,
    progress: bool = True,
    export_dir: str | os.PathLike[str] | None = None,
    notify: Callable[[str], Any] | None = None,
) -> SitePreprocessResult:
    """Preprocess (or reuse from the cache) every usable patient of a site.

    Args:
        catalogue: the site, from :func:`survfed.client.catalogue.catalogue_site`.
        cache_dir: cache root (created if needed; must be writable).
        config: the settings (default: the paper's).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (resolved once, here).
        workers: worker processes (1 = in this process).
        progress: show a tqdm bar over patients.
        export_dir: also write each patient's three NIfTI files and QC picture there (see
            :mod:`survfed.common.imaging.preprocess.export` and
            :mod:`survfed.common.imaging.preprocess.qc_figure`), for patients read from the
            cache too, and ``index.html`` listing them all (:mod:`survfed.client.qc_index`).
        notify: receives one-line notices (the CPU fallback); they are also in the result.

    Returns:
        The :class:`SitePreprocessResult`.

    Raises:
        ValueError: bad ``workers`` or ``device`` (``"cuda"`` without a GPU).
        OSError: the cache folder cannot be written.
    """
    from survfed.common.imaging.preprocess.pipeline import resolve_device

    if not isinstance(catalogue, SiteCatalogue):
        raise TypeError(f"catalogue must be a SiteCatalogue, got {type(catalogue).__name__}")
    config = PreprocessConfig() if config is None else config
    if not isinstance(config, PreprocessConfig):
        raise TypeError(f"config must be a PreprocessConfig, got {type(config).__name__}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    started = time.perf_counter()
    resolved, notice = resolve_device(device)
    notices = [notice] if notice else []
    if notice and notify:
        notify(notice)
    folder = cache_folder(cache_dir, config)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        settings = folder / "settings.json"
        if not settings.exists():
            payload = {"fingerprint": config.fingerprint(), **config.to_dict()}
            settings.write_text(json.dumps(payload, indent=2) + "\n")
    except OSError as exc:
        raise OSError(f"cache folder {folder} is not writable: {exc}") from exc
    export = Path(export_dir) if export_dir is not None else None

    outcomes: list[PatientOutcome] = []
    tasks: list[_Task] = []
    for patient in catalogue.usable_patients:
        assert patient.plan is not None  # usable
        where = catalogue.relative(patient.files[0].parent) if patient.files else ""
        try:
            path = entry_path(cache_dir, config, patient)
        except OSError as exc:
            outcomes.append(
                PatientOutcome(
                    patient.patient_id,
                    "failed",
                    patient.series_instance_uid,
                    where,
                    reason=f"series files changed since the site was catalogued: {exc}",
                )
            )
            continue
        tasks.append(
            _Task(
                patient.patient_id,
                patient.series_instance_uid,
                where,
                patient.plan,
                path,
                config,
                resolved,
                export,
                patient.nodules_mm,
            )
        )
    desc = f"preprocessing {Path(catalogue.site_dir).name}"
    n_workers = min(workers, max(1, len(tasks)))
    if n_workers <= 1:
        for task in _progress(tasks, len(tasks), progress, desc):
            outcomes.append(_run_task(task))
    else:
        with worker_pool(n_workers) as pool:
            futures = [pool.submit(_run_task, task) for task in tasks]
            for future in _progress(as_completed(futures), len(futures), progress, desc):
                outcomes.append(future.result())
    outcomes.sort(key=lambda o: o.patient_id)
    result = SitePreprocessResult(
        site_dir=Path(catalogue.site_dir),
        folder=folder,
        fingerprint=config.fingerprint(),
        device=resolved,
        workers=n_workers,
        outcomes=tuple(outcomes),
        seconds=time.perf_counter() - started,
        export_dir=export,
        notices=tuple(notices),
    )
    if export is not None:
        from survfed.client.qc_index import write_qc_index

        write_qc_index(result, catalogue.problems)
    return result


def load_preprocessed(
    catalogue: SiteCatalogue,
    patient_id: str,
    cache_dir: str | os.PathLike[str],
    config: PreprocessConfig | None = None,
) -> PreprocessedScan:
    """Read one patient's cached scan (made by :func:`preprocess_site` with ``config``).

    Raises:
        KeyError: unknown or unusable patient.
        FileNotFoundError: no valid cache entry (not preprocessed yet, images changed since, or
            the entry is damaged): run :func:`preprocess_site` first.
    """
    config = PreprocessConfig() if config is None else config
    patient = catalogue.patients.get(patient_id)
    if patient is None or not patient.usable:
        raise KeyError(f"patient {patient_id!r} is not a usable patient of {catalogue.site_dir}")
    try:
        path = entry_path(cache_dir, config, patient)
    except OSError as exc:
        raise FileNotFoundError(f"patient {patient_id!r}: series files changed: {exc}") from exc
    scan, why = _read_entry(path, config.fingerprint())
    if scan is None:
        raise FileNotFoundError(
            f"patient {patient_id!r} has no valid preprocessed scan at {path}"
            + (f" ({why.removesuffix('; rebuilt')})" if why else "")
            + ": run `survfed preprocess` first"
        )
    return scan
