"""The per-site crop cache and the crop dataset the survival model trains on.

Cutting crops needs the decoded CT volume, which is the slow part (DICOM decode of hundreds of
files). So crops are made once per patient and kept on disk; later epochs and later runs read
only the small cache files.

Layout: ``<cache_dir>/<params fingerprint>/<patient>.<id hash>.<source hash>.npz`` with

* the *params fingerprint* hashing everything that shapes a crop — crop size, spacing, HU window,
  k, the crop source and the cache format version — so a parameter change starts a new folder
  (a ``params.json`` in it records the values for humans);
* the *source hash* hashing the patient's chosen series (UID and, for every file, its path, size
  and modification time in ns) and the nodule list used, so a re-exported series or an edited
  ``nodules.csv`` makes just that patient's crops be rebuilt (the stale file is removed).

Each ``.npz`` holds ``crops`` (float16 ``(k, 1, S, S, S)``, values in ``[0, 1]``: resolution
< 1 HU in the default 1800 HU window), ``present`` (bool ``(k,)``) and ``centers_mm``
(``(k, 3)``, NaN for blanks). Files are written atomically, so an interrupted build never leaves
a half file that a later run would trust.

Crop sources (the ``source`` argument, part of the params fingerprint):

* :data:`ANNOTATIONS` (default): the annotated nodules of ``nodules.csv``, largest diameter first
  (top k; fewer → blank crops). Patients whose annotations are not complete
  (``SitePatient.annotated`` False) have no crop source and are left out of the dataset (the
  count and IDs are reported); a patient annotated with zero nodules is kept with all-blank
  crops.
* ``detector-<id>`` (:func:`detector_source`): the top-k proposals of the global nodule detector
  ``<id>`` (``centres_mm``: patient → centres, most confident first), for every usable patient,
  annotated or not — annotations are then needed only to train the detector.

The cache folder is the caller's choice: site folders are often read-only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from survfed.client.catalogue import SiteCatalogue, SiteDataError, SitePatient
from survfed.common.cache_files import (
    patient_stem,
    series_files_hash,
    stable_hash,
    write_npz_atomic,
)
from survfed.common.imaging.crops import extract_crops
from survfed.common.survival.model import ModelConfig

__all__ = [
    "ANNOTATIONS",
    "CACHE_FORMAT_VERSION",
    "CropDataset",
    "CropRecord",
    "build_crop_cache",
    "detector_source",
    "params_fingerprint",
]

CACHE_FORMAT_VERSION = 1
"""Bumped whenever the crop-making code changes what it writes."""

ANNOTATIONS = "annotations-largest-first"
"""The crop source of annotation crops (``nodules.csv``, largest first)."""


_hash = stable_hash


def detector_source(detector_id: str) -> str:
    """The crop source name of the proposals of detector ``detector_id`` (a weights hash)."""
    if not detector_id or not all(c.isalnum() for c in detector_id):
        raise ValueError(f"detector_id must be a non-empty alphanumeric id, got {detector_id!r}")
    return f"detector-{detector_id}"


def _params(config: ModelConfig, source: str = ANNOTATIONS) -> dict[str, Any]:
    return {
        "cache_format_version": CACHE_FORMAT_VERSION,
        "crop_source": source,
        "interpolation": "linear",
        **config.crop_kwargs(),
        "hu_window": list(config.hu_window),
    }


def params_fingerprint(config: ModelConfig, source: str = ANNOTATIONS) -> str:
    """Folder name for the crops made with ``config``'s preprocessing from ``source``."""
    return _hash(_params(config, source))


_patient_stem = patient_stem


def _ordered_nodules(patient: SitePatient) -> np.ndarray:
    """``(n, 4)`` nodules ``(x, y, z, diameter)`` mm, largest diameter first (stable)."""
    nodules = np.asarray(patient.nodules_mm, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-nodules[:, 3], kind="stable")
    return nodules[order]


def _source_hash(patient: SitePatient, nodules: np.ndarray) -> str:
    return series_files_hash(patient.series_instance_uid, patient.files, nodules=nodules.tolist())


_write_npz_atomic = write_npz_atomic


def _read_npz(path: Path, k: int, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached ``(crops float16, present)``, or None when missing or not as expected."""
    try:
        with np.load(path, allow_pickle=False) as data:
            crops, present = data["crops"], data["present"]
    except (OSError, KeyError, ValueError, EOFError):
        return None
    if crops.shape != (k, 1, size, size, size) or present.shape != (k,):
        return None
    return crops, present.astype(bool)


@dataclass(frozen=True)
class CropRecord:
    """One patient of a :class:`CropDataset`.

    Attributes:
        patient_id: the site's patient ID.
        site: the site name.
        path: the patient's cache file.
        time_days: follow-up in days.
        event: 1 = event observed, 0 = censored.
        cancer: 1.0 / 0.0, or NaN when unknown.
        n_nodules: present (non-blank) crops.
    """

    patient_id: str
    site: str
    path: Path
    time_days: float
    event: int
    cancer: float
    n_nodules: int


class CropDataset(Dataset):
    """Patients' cached crops with their outcomes; items are dicts of tensors.

    Item ``i`` is ``{"crops": float32 (k, 1, S, S, S), "present": bool (k,), "time": float32
    days, "event": float32 0/1, "cancer": float32 0/1/NaN, "site": int64 code}`` where the
    site code indexes :attr:`site_names` (the format :mod:`survfed.common.survival.train`
    expects). Arrays for the batch sampler: :attr:`times`, :attr:`events`, :attr:`cancer`,
    :attr:`sites`.

    Args:
        records: the patients, in dataset order.
        k, crop_size: crops per patient and crop edge (checked against each file).
        config: the preprocessing the crops were made with (for the record).
        excluded: patient ID → why the patient is not in the dataset.
        source: where the crop centres came from (:data:`ANNOTATIONS` or a detector).
        n_built, n_reused: cache statistics of the build that made the dataset.
        in_memory: load every patient's crops once and keep them (float16) in memory.
    """

    def __init__(
        self,
        records: Sequence[CropRecord],
        *,
        config: ModelConfig,
        excluded: dict[str, str] | None = None,
        source: str = ANNOTATIONS,
        n_built: int = 0,
        n_reused: int = 0,
        in_memory: bool = False,
    ) -> None:
        self.records = tuple(records)
        self.config = config
        self.source = source
        self.excluded = dict(excluded or {})
        self.n_built = n_built
        self.n_reused = n_reused
        self.site_names: tuple[str, ...] = tuple(sorted({r.site for r in self.records}))
        code = {name: i for i, name in enumerate(self.site_names)}
        self._site_codes = np.array([code[r.site] for r in self.records], dtype=np.int64)
        self._memory: list[tuple[np.ndarray, np.ndarray]] | None = None
        if in_memory:
            self._memory = [self._load(i) for i in range(len(self.records))]

    # arrays for samplers and metrics ------------------------------------------------------
    @property
    def patient_ids(self) -> list[str]:
        """Patient IDs in dataset order."""
        return [r.patient_id for r in self.records]

    @property
    def times(self) -> np.ndarray:
        """``(n,)`` float64 follow-up in days."""
        return np.array([r.time_days for r in self.records], dtype=np.float64)

    @property
    def events(self) -> np.ndarray:
        """``(n,)`` int64, 1 = event observed."""
        return np.array([r.event for r in self.records], dtype=np.int64)

    @property
    def cancer(self) -> np.ndarray:
        """``(n,)`` float64 cancer labels, NaN where unknown."""
        return np.array([r.cancer for r in self.records], dtype=np.float64)

    @property
    def sites(self) -> np.ndarray:
        """``(n,)`` object array of site names."""
        return np.array([r.site for r in self.records], dtype=object)

    @property
    def n_nodules(self) -> np.ndarray:
        """``(n,)`` int64 present crops per patient."""
        return np.array([r.n_nodules for r in self.records], dtype=np.int64)

    # Dataset protocol ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        record = self.records[index]
        loaded = _read_npz(record.path, self.config.k, self.config.crop_size)
        if loaded is None:
            raise FileNotFoundError(
                f"crop cache file for patient {record.patient_id!r} is missing or damaged: "
                f"{record.path} (rebuild with build_crop_cache)"
            )
        return loaded

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} patients")
        index %= len(self)
        crops, present = self._memory[index] if self._memory is not None else self._load(index)
        record = self.records[index]
        return {
            "crops": torch.from_numpy(crops.astype(np.float32)),
            "present": torch.from_numpy(present.copy()),
            "time": torch.tensor(record.time_days, dtype=torch.float32),
            "event": torch.tensor(float(record.event), dtype=torch.float32),
            "cancer": torch.tensor(record.cancer, dtype=torch.float32),
            "site": torch.tensor(self._site_codes[index], dtype=torch.int64),
        }

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All crops ``(n, k, 1, S, S, S)`` float32 and ``present`` ``(n, k)`` (loads all)."""
        pairs = [self._memory[i] if self._memory else self._load(i) for i in range(len(self))]
        s, k = self.config.crop_size, self.config.k
        if not pairs:
            return np.zeros((0, k, 1, s, s, s), np.float32), np.zeros((0, k), bool)
        crops = np.stack([c for c, _ in pairs]).astype(np.float32)
        return crops, np.stack([p for _, p in pairs])

    @classmethod
    def concat(cls, datasets: Sequence[CropDataset]) -> CropDataset:
        """Pool several sites' datasets (same preprocessing) into one, e.g. for a baseline."""
        if not datasets:
            raise ValueError("datasets must hold at least one CropDataset")
        if len({params_fingerprint(ds.config, ds.source) for ds in datasets}) > 1:
            raise ValueError("datasets were made with different preprocessing or crop sources")
        keys = [(r.site, r.patient_id) for ds in datasets for r in ds.records]
        if len(set(keys)) != len(keys):
            raise ValueError("datasets share (site, patient_id) pairs; pool each site once")
        excluded = {
            f"{ds.site_names[0] if ds.site_names else '?'}/{pid}": why
            for ds in datasets
            for pid, why in ds.excluded.items()
        }
        return cls(
            [r for ds in datasets for r in ds.records],
            config=datasets[0].config,
            excluded=excluded,
            source=datasets[0].source,
            n_built=sum(ds.n_built for ds in datasets),
            n_reused=sum(ds.n_reused for ds in datasets),
            in_memory=any(ds._memory is not None for ds in datasets),
        )

    def __repr__(self) -> str:
        return (
            f"CropDataset({len(self)} patients, sites={list(self.site_names)}, "
            f"{int(self.events.sum())} events, excluded={len(self.excluded)}, "
            f"built={self.n_built}, reused={self.n_reused})"
        )


def build_crop_cache(
    catalogue: SiteCatalogue,
    cache_dir: str | os.PathLike[str],
    config: ModelConfig,
    progress: bool = True,
    *,
    site: str | None = None,
    in_memory: bool = False,
    source: str = ANNOTATIONS,
    centres_mm: Mapping[str, np.ndarray] | None = None,
) -> CropDataset:
    """Make (or reuse) every usable patient's crops (annotated patients for annotation crops)
    and return the dataset.

    Args:
        catalogue: the site, from :func:`survfed.client.catalogue.catalogue_site`.
        cache_dir: folder for the cache (created if needed; must be writable). Crops land in
            ``cache_dir / params_fingerprint(config)``.
        config: crop size, spacing, HU window and k.
        progress: show a tqdm bar over patients.
        site: site name recorded in the dataset (default: the site folder's name).
        in_memory: keep all crops in memory (see :class:`CropDataset`).
        source: :data:`ANNOTATIONS` or a :func:`detector_source` name.
        centres_mm: for a detector source: patient ID → ``(n, 3)`` proposal centres ``(x, y,
            z)`` mm, most confident first (patients missing here are left out).

    Returns:
        The :class:`CropDataset`, patients in catalogue order. ``excluded`` maps every usable
        patient left out to the reason (not annotated; images failed to decode).
    """
    if not isinstance(catalogue, SiteCatalogue):
        raise TypeError(f"catalogue must be a SiteCatalogue, got {type(catalogue).__name__}")
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
    site_name = site if site is not None else Path(catalogue.site_dir).name
    if not isinstance(site_name, str) or not site_name:
        raise ValueError(f"site must be a non-empty string, got {site!r}")
    if (source == ANNOTATIONS) != (centres_mm is None):
        raise ValueError("centres_mm must be given exactly for a detector crop source")
    folder = Path(cache_dir) / params_fingerprint(config, source)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        params_file = folder / "params.json"
        if not params_file.exists():
            params_file.write_text(json.dumps(_params(config, source), indent=2) + "\n")
    except OSError as exc:
        raise OSError(f"cache_dir {cache_dir} is not writable: {exc}") from exc

    patients = catalogue.usable_patients
    iterator: Any = patients
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(patients, desc=f"crops {site_name}", unit="patient", disable=None)
    k, size = config.k, config.crop_size
    records: list[CropRecord] = []
    excluded: dict[str, str] = {}
    n_built = n_reused = 0
    for patient in iterator:
        pid = patient.patient_id
        if centres_mm is None:
            if not patient.annotated:
                excluded[pid] = "no crop source: nodules not annotated (and no detector)"
                continue
            hashed = _ordered_nodules(patient)  # (x, y, z, diameter): as cache files always were
            nodules = hashed[:, :3]
        elif pid in centres_mm:
            nodules = hashed = np.asarray(centres_mm[pid], dtype=np.float64).reshape(-1, 3)
        else:
            excluded[pid] = "no detector proposals (the scan could not be preprocessed)"
            continue
        stem = _patient_stem(pid)
        try:
            file_hash = _source_hash(patient, hashed)
        except OSError as exc:
            excluded[pid] = f"series files changed since the site was catalogued: {exc}"
            continue
        path = folder / f"{stem}.{file_hash}.npz"
        cached = _read_npz(path, k, size)
        if cached is None:
            try:
                volume = catalogue.load_volume(pid)
            except SiteDataError as exc:
                excluded[pid] = f"images could not be loaded: {exc}"
                continue
            crops, present = extract_crops(volume, nodules, **config.crop_kwargs())
            centers = np.full((k, 3), np.nan)
            centers[: int(present.sum())] = nodules[:k]
            for stale in folder.glob(f"{stem}.*.npz"):
                if stale != path:
                    stale.unlink(missing_ok=True)
            _write_npz_atomic(
                path, crops=crops.astype(np.float16), present=present, centers_mm=centers
            )
            n_built += 1
            n_present = int(present.sum())
        else:
            n_reused += 1
            n_present = int(cached[1].sum())
        clinical = patient.clinical
        assert clinical is not None  # usable patients have a clinical row
        records.append(
            CropRecord(
                patient_id=pid,
                site=site_name,
                path=path,
                time_days=float(clinical.time_days),
                event=int(clinical.event),
                cancer=float("nan") if clinical.cancer is None else float(clinical.cancer),
                n_nodules=n_present,
            )
        )
    return CropDataset(
        records,
        config=config,
        excluded=excluded,
        source=source,
        n_built=n_built,
        n_reused=n_reused,
        in_memory=in_memory,
    )
