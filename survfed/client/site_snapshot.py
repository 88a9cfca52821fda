"""A prepared site's crop dataset, reopened in a fraction of a second.

Flower starts a fresh ClientApp process for every instruction, so scanning the site's DICOM
folder each time would cost seconds per round. ``survfed-client`` prepares the site once at
start (catalogue + crop cache) and writes a manifest of the usable patients next to the crops;
the ClientApp reopens the dataset from it. The manifest stays at the site (it lists patient
IDs and cache paths) and is keyed by the crop preprocessing, so a changed model config makes
a new one.

File: ``<cache-dir>/site-manifest-<crop fingerprint>.json``; the fingerprint covers the crop
preprocessing and the crop source (annotations, or the proposals of one detector).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from survfed.client.catalogue import SiteCatalogue
from survfed.client.crop_cache import ANNOTATIONS, CropDataset, CropRecord, params_fingerprint
from survfed.client.site_data import load_site_data
from survfed.common.survival.model import ModelConfig

__all__ = ["manifest_path", "open_site_dataset", "prepare_site", "read_manifest", "write_manifest"]

_FORMAT = "survfed-site-manifest"


def manifest_path(cache_dir: str | Path, config: ModelConfig, source: str = ANNOTATIONS) -> Path:
    """Where the manifest for ``config``'s preprocessing and crop ``source`` lives."""
    return Path(cache_dir) / f"site-manifest-{params_fingerprint(config, source)}.json"


def write_manifest(
    dataset: CropDataset, cache_dir: str | Path, site: str, data_dir: str | Path
) -> Path:
    """Write the manifest of ``dataset`` atomically; return its path."""
    path = manifest_path(cache_dir, dataset.config, dataset.source)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "format": _FORMAT,
        "site": site,
        "data_dir": str(Path(data_dir).resolve()),
        "source": dataset.source,
        "fingerprint": params_fingerprint(dataset.config, dataset.source),
        "excluded": len(dataset.excluded),
        "records": [
            {
                "patient_id": r.patient_id,
                "site": r.site,
                "path": str(r.path),
                "time_days": r.time_days,
                "event": r.event,
                "cancer": None if math.isnan(r.cancer) else r.cancer,
                "n_nodules": r.n_nodules,
            }
            for r in dataset.records
        ],
    }
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_manifest(
    cache_dir: str | Path,
    config: ModelConfig,
    site: str,
    data_dir: str | Path,
    source: str = ANNOTATIONS,
) -> CropDataset | None:
    """The dataset of a manifest for this site, folder, preprocessing and crop source; ``None``
    if absent, for another site/folder, or when one of its crop files is gone."""
    path = manifest_path(cache_dir, config, source)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if (
        data.get("format") != _FORMAT
        or data.get("site") != site
        or data.get("data_dir") != str(Path(data_dir).resolve())
        or data.get("fingerprint") != params_fingerprint(config, source)
    ):
        return None
    records = [
        CropRecord(
            patient_id=str(r["patient_id"]),
            site=str(r["site"]),
            path=Path(r["path"]),
            time_days=float(r["time_days"]),
            event=int(r["event"]),
            cancer=math.nan if r["cancer"] is None else float(r["cancer"]),
            n_nodules=int(r["n_nodules"]),
        )
        for r in data["records"]
    ]
    if not records or not all(r.path.is_file() for r in records):
        return None
    return CropDataset(records, config=config, source=source, in_memory=True)


def prepare_site(
    site: str,
    data_dir: str | Path,
    cache_dir: str | Path,
    config: ModelConfig,
    *,
    progress: bool = True,
    source: str = ANNOTATIONS,
    centres_mm: Mapping[str, np.ndarray] | None = None,
    catalogue: SiteCatalogue | None = None,
) -> CropDataset:
    """Catalogue the site (unless ``catalogue`` is given), build its crops and write the
    manifest (what ``survfed-client`` does at start, and a site after the detector rounds with
    the detector's proposals). Raises ``ValueError`` with the reason when no patient is
    usable."""
    data = load_site_data(
        data_dir, cache_dir, config, name=site, progress=progress, source=source,
        centres_mm=centres_mm, catalogue=catalogue,
    )  # fmt: skip
    write_manifest(data.dataset, cache_dir, site, data_dir)
    return data.dataset


def open_site_dataset(
    site: str,
    data_dir: str | Path,
    cache_dir: str | Path,
    config: ModelConfig,
    source: str = ANNOTATIONS,
) -> CropDataset:
    """The site's dataset from its manifest, preparing the site first when there is none.

    Detector crops cannot be prepared here (they need the detector's proposals): a site without
    their manifest gets a ``RuntimeError`` saying so.
    """
    dataset = read_manifest(cache_dir, config, site, data_dir, source)
    if dataset is None and source != ANNOTATIONS:
        raise RuntimeError(
            f"site {site}: no crops from {source}'s proposals in {cache_dir}: the site missed the "
            "proposal step after the detector rounds (it rejoins at the next run)"
        )
    if dataset is None:
        prepare_site(site, data_dir, cache_dir, config, progress=False)
        dataset = read_manifest(cache_dir, config, site, data_dir)
    if dataset is None:
        raise RuntimeError(f"site {site}: could not prepare the crop dataset in {cache_dir}")
    return dataset
