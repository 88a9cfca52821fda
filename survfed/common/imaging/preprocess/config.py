"""Settings of the lung preprocessing and their fingerprint (the cache key).

Every threshold is the one of Liao et al. (seed 003, §III.B) and of their public code. Sizes that
the paper counts in voxels of a 1 mm grid (the Gaussian's sigma, the dilation, the crop margin,
the erosion limit, the top-slice cut step) are given here in millimetres with the paper's 1 mm
values as defaults, and converted to voxels of the target grid, so that a coarser grid (tests use
2-2.5 mm) keeps the same physical meaning.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields

__all__ = ["PIPELINE_VERSION", "PreprocessConfig", "PreprocessError"]

PIPELINE_VERSION = 3
"""Bumped whenever the pipeline's code changes what it produces (part of the fingerprint).

2: scans whose lungs reach the side edge of the field of view carry a warning (images and masks
are as in 1, but cached scans of 1 would lack the warning).
3: lungs in the top or bottom slice are warned from 10 cm² on (a trachea kept up into the neck
was warned as a chest cut short).
"""


class PreprocessError(ValueError):
    """The volume cannot be preprocessed; the message says what is wrong with it."""


def _mm_to_vox(mm: float, spacing_mm: float, *, minimum: int = 0) -> int:
    return max(minimum, round(mm / spacing_mm))


@dataclass(frozen=True)
class PreprocessConfig:
    """How a CT volume becomes the detector's input (seed 003 §III.B).

    Attributes:
        spacing_mm: isotropic voxel size of the resampled grid (the paper: 1 mm).
        outside_hu: HU given to points outside the scan in the output image (air).
        padding_max_hu: a slice whose 10 x 10 corner patch is constant at a value at or below
            this (e.g. -2000 or -3024 written outside the reconstruction circle) has every pixel
            of that value treated as "outside the field of view": not air (NaN before the
            Gaussian, as in the paper's code).
        padding_patch_px: edge of the corner patch checked for padding, original pixels.
        sigma_mm: standard deviation of the per-slice Gaussian (the paper: 1 pixel).
        gaussian_truncate: the Gaussian kernel extends this many sigmas (the paper's code: 2).
        threshold_hu: air/lung threshold after smoothing (-600 HU).
        min_area_mm2: 2D components of this area or less are dropped (30 mm²).
        max_eccentricity: 2D components at least this eccentric are dropped (0.99).
        min_volume_l, max_volume_l: a 3D component is a lung candidate when its volume lies in
            this range (0.68 L to 7.5 L).
        min_slice_area_mm2: slices of a candidate with more area than this (6000 mm²) count in
            the distance criterion.
        max_mean_distance_mm: a candidate whose mean (over those slices) minimum distance to the
            image centre exceeds this (62 mm) is dropped.
        top_cut_step_mm: when no candidate is found, the top slices are removed in multiples
            of this much and the analysis is repeated (the paper's code: steps of 2 slices).
        max_top_cut_mm: give up after removing this much from the top (scans that include the
            head may need 150-250 mm).
        max_erosion_mm: the lungs are eroded at most this deep (22 iterations at 1 mm) looking
            for two parts of similar volume.
        max_volume_ratio: two parts are "similar" when the larger is less than this times the
            smaller (4.8).
        main_cover: each lung keeps, per slice, its largest 2D parts covering this fraction of
            its area (0.95).
        max_hull_ratio: a slice keeps its own mask instead of its convex hull when the hull's
            area exceeds this times the mask's (1.5).
        dilation_mm: the lungs are dilated this far (taxicab, 10 voxels at 1 mm).
        hu_window: HU clipped to this range and mapped linearly to 0-255.
        pad_value: uint8 value outside the mask (170, soft tissue).
        bone_threshold: in the band added by the hull and the dilation, uint8 values above
            this (210) become ``pad_value``.
        margin_mm: the crop keeps this much around the lungs' bounding box (10 voxels at 1 mm).
    """

    spacing_mm: float = 1.0
    outside_hu: float = -1000.0
    padding_max_hu: float = -1100.0
    padding_patch_px: int = 10
    sigma_mm: float = 1.0
    gaussian_truncate: float = 2.0
    threshold_hu: float = -600.0
    min_area_mm2: float = 30.0
    max_eccentricity: float = 0.99
    min_volume_l: float = 0.68
    max_volume_l: float = 7.5
    min_slice_area_mm2: float = 6000.0
    max_mean_distance_mm: float = 62.0
    top_cut_step_mm: float = 2.0
    max_top_cut_mm: float = 400.0
    max_erosion_mm: float = 22.0
    max_volume_ratio: float = 4.8
    main_cover: float = 0.95
    max_hull_ratio: float = 1.5
    dilation_mm: float = 10.0
    hu_window: tuple[float, float] = (-1200.0, 600.0)
    pad_value: int = 170
    bone_threshold: int = 210
    margin_mm: float = 10.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "hu_window":
                try:
                    lo, hi = (float(v) for v in value)
                except (TypeError, ValueError):
                    raise ValueError(f"hu_window must be two numbers, got {value!r}") from None
                if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                    raise ValueError(f"hu_window must be finite with low < high, got {value!r}")
                object.__setattr__(self, "hu_window", (lo, hi))
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{f.name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{f.name} must be finite, got {value!r}")
        positive = ("spacing_mm", "sigma_mm", "gaussian_truncate", "top_cut_step_mm")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        non_negative = (
            "min_area_mm2",
            "min_volume_l",
            "min_slice_area_mm2",
            "max_mean_distance_mm",
            "max_top_cut_mm",
            "max_erosion_mm",
            "dilation_mm",
            "margin_mm",
        )
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.max_volume_l <= self.min_volume_l:
            raise ValueError(
                f"max_volume_l ({self.max_volume_l}) must exceed min_volume_l ({self.min_volume_l})"
            )
        if not 0 < self.max_eccentricity <= 1:
            raise ValueError(f"max_eccentricity must be in (0, 1], got {self.max_eccentricity}")
        if not 0 < self.main_cover <= 1:
            raise ValueError(f"main_cover must be in (0, 1], got {self.main_cover}")
        if self.max_volume_ratio < 1 or self.max_hull_ratio < 1:
            raise ValueError("max_volume_ratio and max_hull_ratio must be >= 1")
        for name in ("pad_value", "bone_threshold"):
            value = getattr(self, name)
            if not (float(value).is_integer() and 0 <= value <= 255):
                raise ValueError(f"{name} must be an integer in 0..255, got {value!r}")
            object.__setattr__(self, name, int(value))
        if not (float(self.padding_patch_px).is_integer() and self.padding_patch_px >= 1):
            raise ValueError(
                f"padding_patch_px must be a positive integer, got {self.padding_patch_px!r}"
            )
        object.__setattr__(self, "padding_patch_px", int(self.padding_patch_px))

    # ------------------------------------------------------------------ voxel conversions
    @property
    def sigma_vox(self) -> float:
        """Gaussian sigma in voxels of the target grid."""
        return self.sigma_mm / self.spacing_mm

    @property
    def dilation_vox(self) -> int:
        """Dilation radius (taxicab) in voxels."""
        return _mm_to_vox(self.dilation_mm, self.spacing_mm)

    @property
    def margin_vox(self) -> int:
        """Crop margin in voxels."""
        return _mm_to_vox(self.margin_mm, self.spacing_mm)

    @property
    def max_erosion_vox(self) -> int:
        """Most erosion iterations tried when separating the lungs."""
        return _mm_to_vox(self.max_erosion_mm, self.spacing_mm)

    @property
    def top_cut_step_vox(self) -> int:
        """Slices removed per retry of the component analysis (at least 1)."""
        return _mm_to_vox(self.top_cut_step_mm, self.spacing_mm, minimum=1)

    @property
    def max_top_cut_vox(self) -> int:
        """Most top slices removed before giving up."""
        return _mm_to_vox(self.max_top_cut_mm, self.spacing_mm)

    # ------------------------------------------------------------------ identity
    def to_dict(self) -> dict[str, object]:
        """The settings as plain JSON-able values."""
        data = asdict(self)
        data["hu_window"] = list(self.hu_window)
        return data

    def fingerprint(self) -> str:
        """16 hex digits identifying these settings and :data:`PIPELINE_VERSION`."""
        payload = {"pipeline_version": PIPELINE_VERSION, **self.to_dict()}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]
