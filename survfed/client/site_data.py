"""A site's training data in one call: catalogue the folder, then make or reuse its crops."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from survfed.client.catalogue import SiteCatalogue, catalogue_site
from survfed.client.crop_cache import ANNOTATIONS, CropDataset, build_crop_cache
from survfed.client.header_cache import CACHE_FILE
from survfed.common.survival.model import ModelConfig

__all__ = ["SiteData", "load_site_data"]


@dataclass(frozen=True)
class SiteData:
    """A catalogued site and its crop dataset.

    Attributes:
        name: the site name.
        catalogue: every patient, series and problem found in the folder.
        dataset: the usable, crop-ready patients.
    """

    name: str
    catalogue: SiteCatalogue
    dataset: CropDataset

    def summary_line(self) -> str:
        """One line for logs: patients, usable, in the dataset, events, problems."""
        ds = self.dataset
        errors = sum(1 for p in self.catalogue.problems if p.severity == "error")
        return (
            f"{self.name}: {len(self.catalogue.patients)} patients, "
            f"{len(self.catalogue.usable_patients)} usable, {len(ds)} with crops "
            f"({int(ds.events.sum())} events), {len(ds.excluded)} left out, "
            f"{errors} problems (survfed inspect lists them)"
        )


def load_site_data(
    site_dir: str | Path,
    cache_dir: str | Path,
    config: ModelConfig,
    *,
    name: str | None = None,
    progress: bool = True,
    in_memory: bool = False,
    source: str = ANNOTATIONS,
    centres_mm: Mapping[str, np.ndarray] | None = None,
    catalogue: SiteCatalogue | None = None,
) -> SiteData:
    """Catalogue ``site_dir`` and build (or reuse) its crop cache under ``cache_dir``.

    Args:
        site_dir: the site folder (clinical.csv, nodules.csv, dicom/).
        cache_dir: a writable folder for the crops (site folders are often read-only).
        config: the model's preprocessing (crop size, spacing, HU window, k).
        name: the site name (default: the folder's name).
        progress: show progress bars.
        in_memory: keep the crops in memory (fast epochs; ~1 MB per patient at defaults).
        source, centres_mm: the crop source (see :func:`~survfed.client.crop_cache.
            build_crop_cache`): annotations, or a detector's proposal centres per patient.
        catalogue: the site's catalogue when the caller already has it (else it is made).

    Raises:
        survfed.client.catalogue.NotASiteError: ``site_dir`` is not a site folder.
        ValueError: no patient of the site can be used (the reason names the folder).
    """
    site_dir = Path(site_dir)
    name = name or site_dir.name
    if catalogue is None:
        catalogue = catalogue_site(
            site_dir, progress=progress, header_cache=Path(cache_dir) / CACHE_FILE
        )
    if not catalogue.usable_patients:
        raise ValueError(
            f"site {name}: no usable patient in {site_dir} (run `survfed inspect {site_dir}`)"
        )
    dataset = build_crop_cache(
        catalogue, cache_dir, config, progress, site=name, in_memory=in_memory, source=source,
        centres_mm=centres_mm,
    )  # fmt: skip
    if len(dataset) == 0:
        what = "nodule annotations" if source == ANNOTATIONS else "detector proposals"
        raise ValueError(
            f"site {name}: none of the {len(catalogue.usable_patients)} usable patients has a "
            f"crop source ({what}) in {site_dir}"
        )
    return SiteData(name=name, catalogue=catalogue, dataset=dataset)
