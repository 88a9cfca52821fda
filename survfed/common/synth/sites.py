"""Per-site scanner and hospital profiles, and the ``--sites`` argument parser.

Known names (``iowa``, ``maastro``, ``stanford``) get fixed profiles that differ the way real
hospitals do; any other name gets a profile drawn deterministically from the name, so
simulation studies can ask for many sites (``--sites a:10,b:10,...``).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

import numpy as np
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

__all__ = ["LAYOUTS", "SiteProfile", "parse_sites", "site_key", "site_profile"]

LAYOUTS = ("nested_random", "flat_random", "patient_study_series")
"""Folder layouts of ``<site>/dicom``: ``dicom/<rand>/<rand>/IM000123``, one flat folder of
random names, or ``dicom/<patient>/<study>/<series>/<file>``."""

_SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class SiteProfile:
    """How one hospital scans, stores and follows up its patients.

    Slice spacings and pixel spacings are in mm; the ``tiny`` preset uses its own slice list and
    scales the pixel spacing by its matrix (see :mod:`survfed.common.synth.presets`).
    """

    name: str
    id_prefix: str  # patient IDs are "<prefix>-<number>"
    manufacturer: str
    kvp: float
    kernel: str
    noise_sd_hu: tuple[float, float]  # image noise (sd, HU) drawn per series in this range
    psf_sigma_mm: float  # in-plane Gaussian point-spread sigma at the standard preset
    pixel_spacing_mm: tuple[float, float]  # standard preset, drawn per series
    slices_mm: tuple[float, ...]  # standard preset slice spacing choices (first is the main)
    slices_tiny_mm: tuple[float, ...]  # tiny preset slice spacing choices
    slice_weights: tuple[float, ...]  # probability of each choice (same length)
    pixel_representation: int  # 1 signed int16, 0 unsigned uint16
    rescale_intercepts: tuple[float, ...]  # drawn per series
    transfer_syntax: str
    layout: str
    patient_position: str  # "HFS" or "FFS"
    head_to_feet: bool  # slice index k runs from head to feet (k axis = -z)
    outside_fov_hu: float | None  # value outside the reconstruction circle, None = not masked
    cancer_rate: float
    baseline_hazard_per_year: float
    follow_up_days: float
    accrual_days: float
    loss_rate_per_year: float
    p_older_study: float
    p_two_series: float
    p_unannotated: float
    start_year: int
    age_mean: float

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.patient_position not in ("HFS", "FFS"):
            raise ValueError(f"patient_position must be HFS or FFS, got {self.patient_position!r}")
        n = len(self.slices_mm)
        if not (n == len(self.slices_tiny_mm) == len(self.slice_weights) and n > 0):
            raise ValueError("slices_mm, slices_tiny_mm and slice_weights need equal lengths")
        for name in ("cancer_rate", "p_older_study", "p_two_series", "p_unannotated"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")

    def slice_choices(self, preset: str) -> tuple[float, ...]:
        """Slice spacing choices (mm) for a preset name."""
        return self.slices_tiny_mm if preset == "tiny" else self.slices_mm


_KNOWN: Mapping[str, SiteProfile] = MappingProxyType(
    {
        "iowa": SiteProfile(
            name="iowa",
            id_prefix="IOW",
            manufacturer="GE MEDICAL SYSTEMS",
            kvp=120.0,
            kernel="STANDARD",
            noise_sd_hu=(10.0, 14.0),
            psf_sigma_mm=0.45,
            pixel_spacing_mm=(0.66, 0.82),
            slices_mm=(2.5, 1.25),
            slices_tiny_mm=(5.0, 4.0),
            slice_weights=(0.85, 0.15),
            pixel_representation=1,
            rescale_intercepts=(-1024.0, 0.0),
            transfer_syntax=ExplicitVRLittleEndian,
            layout="nested_random",
            patient_position="HFS",
            head_to_feet=True,
            outside_fov_hu=-2000.0,
            cancer_rate=0.45,
            baseline_hazard_per_year=0.022,
            follow_up_days=6 * 365.0,
            accrual_days=3 * 365.0,
            loss_rate_per_year=0.03,
            p_older_study=0.2,
            p_two_series=0.1,
            p_unannotated=0.1,
            start_year=2012,
            age_mean=64.0,
        ),
        "maastro": SiteProfile(
            name="maastro",
            id_prefix="MAA",
            manufacturer="SIEMENS",
            kvp=110.0,
            kernel="B31f",
            noise_sd_hu=(30.0, 40.0),
            psf_sigma_mm=0.55,
            pixel_spacing_mm=(0.8, 0.98),
            slices_mm=(5.0, 3.0),
            slices_tiny_mm=(6.0, 5.0),
            slice_weights=(0.75, 0.25),
            pixel_representation=0,
            rescale_intercepts=(-1024.0,),
            transfer_syntax=RLELossless,
            layout="flat_random",
            patient_position="HFS",
            head_to_feet=False,
            outside_fov_hu=None,
            cancer_rate=0.55,
            baseline_hazard_per_year=0.03,
            follow_up_days=5 * 365.0,
            accrual_days=2 * 365.0,
            loss_rate_per_year=0.05,
            p_older_study=0.15,
            p_two_series=0.1,
            p_unannotated=0.2,
            start_year=2009,
            age_mean=67.0,
        ),
        "stanford": SiteProfile(
            name="stanford",
            id_prefix="STA",
            manufacturer="TOSHIBA",
            kvp=120.0,
            kernel="FC51",
            noise_sd_hu=(14.0, 22.0),
            psf_sigma_mm=0.4,
            pixel_spacing_mm=(0.6, 0.76),
            slices_mm=(1.25, 2.0),
            slices_tiny_mm=(4.0, 3.0),
            slice_weights=(0.6, 0.4),
            pixel_representation=1,
            rescale_intercepts=(-1024.0,),
            transfer_syntax=JPEGLSLossless,
            layout="patient_study_series",
            patient_position="FFS",
            head_to_feet=False,
            outside_fov_hu=None,
            cancer_rate=0.35,
            baseline_hazard_per_year=0.02,
            follow_up_days=7 * 365.0,
            accrual_days=3 * 365.0,
            loss_rate_per_year=0.02,
            p_older_study=0.25,
            p_two_series=0.15,
            p_unannotated=0.1,
            start_year=2014,
            age_mean=62.0,
        ),
    }
)


def site_key(name: str) -> int:
    """A stable 32-bit integer for a site name (seeds the site's random streams)."""
    return zlib.crc32(name.encode("utf-8"))


def _derived_profile(name: str) -> SiteProfile:
    """A plausible profile drawn from the site name alone (same name, same profile)."""
    rng = np.random.default_rng([0x5173, site_key(name)])
    dose = rng.choice(["standard", "low"])
    noise = (10.0, 15.0) if dose == "standard" else (28.0, 40.0)
    main = float(rng.choice([1.0, 1.25, 2.0, 2.5, 3.0, 5.0]))
    alt = float(rng.choice([1.25, 2.5, 5.0]))
    tiny_main = float(np.clip(main * 1.6, 3.0, 5.0))
    tiny_alt = float(np.clip(alt * 1.6, 3.0, 5.0))
    low_px = float(rng.uniform(0.6, 0.8))
    signed = int(rng.integers(0, 2))
    prefix = re.sub(r"[^A-Z0-9]", "", name.upper())[:3] or "SIT"
    return SiteProfile(
        name=name,
        id_prefix=prefix,
        manufacturer=str(rng.choice(["GE MEDICAL SYSTEMS", "SIEMENS", "Philips", "TOSHIBA"])),
        kvp=float(rng.choice([100.0, 110.0, 120.0, 130.0])),
        kernel=str(rng.choice(["STANDARD", "B30f", "B45f", "FC13", "LUNG"])),
        noise_sd_hu=noise,
        psf_sigma_mm=float(rng.uniform(0.35, 0.6)),
        pixel_spacing_mm=(low_px, low_px + float(rng.uniform(0.08, 0.2))),
        slices_mm=(main, alt),
        slices_tiny_mm=(tiny_main, tiny_alt),
        slice_weights=(0.8, 0.2),
        pixel_representation=signed,
        rescale_intercepts=(-1024.0,) if not signed else (-1024.0, 0.0),
        transfer_syntax=str(
            rng.choice([ExplicitVRLittleEndian, RLELossless, JPEGLSLossless, JPEG2000Lossless])
        ),
        layout=str(rng.choice(LAYOUTS)),
        patient_position=str(rng.choice(["HFS", "HFS", "FFS"])),
        head_to_feet=bool(rng.integers(0, 2)),
        outside_fov_hu=-2000.0 if (signed and rng.random() < 0.5) else None,
        cancer_rate=float(rng.uniform(0.3, 0.6)),
        baseline_hazard_per_year=float(rng.uniform(0.015, 0.045)),
        follow_up_days=float(rng.integers(5, 8)) * 365.0,
        accrual_days=float(rng.integers(2, 4)) * 365.0,
        loss_rate_per_year=float(rng.uniform(0.01, 0.06)),
        p_older_study=float(rng.uniform(0.15, 0.25)),
        p_two_series=float(rng.uniform(0.05, 0.15)),
        p_unannotated=float(rng.uniform(0.1, 0.2)),
        start_year=int(rng.integers(2008, 2016)),
        age_mean=float(rng.uniform(60.0, 68.0)),
    )


def site_profile(name: str) -> SiteProfile:
    """The fixed profile of a known site, or one derived deterministically from the name.

    Args:
        name: site name (letters, digits, ``_``, ``-``; 1-64 characters).
    """
    if not isinstance(name, str) or not _SITE_NAME.match(name):
        raise ValueError(
            f"site name {name!r} must be 1-64 letters, digits, '_' or '-', starting with a "
            "letter or digit"
        )
    known = _KNOWN.get(name.lower())
    if known is not None:
        return replace(known, name=name)
    return _derived_profile(name)


def parse_sites(text: str) -> dict[str, int]:
    """Parse ``"iowa:40,maastro:60"`` into ``{"iowa": 40, "maastro": 60}`` (order kept).

    Raises:
        ValueError: naming the bad part (missing ``:``, bad name, count not a positive integer,
            duplicate site).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("sites must be a non-empty string like 'iowa:40,maastro:60'")
    sites: dict[str, int] = {}
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            raise ValueError(f"empty site entry in {text!r} (stray comma?)")
        name, sep, count_text = part.partition(":")
        name, count_text = name.strip(), count_text.strip()
        if not sep:
            raise ValueError(f"site entry {part!r} must look like NAME:COUNT, e.g. 'iowa:40'")
        if not _SITE_NAME.match(name):
            raise ValueError(
                f"site name {name!r} in {part!r} must be 1-64 letters, digits, '_' or '-'"
            )
        if not count_text.isdigit() or int(count_text) < 1:
            raise ValueError(f"patient count {count_text!r} in {part!r} must be a positive integer")
        if name.lower() in (s.lower() for s in sites):
            raise ValueError(f"site {name!r} is listed twice in {text!r}")
        sites[name] = int(count_text)
    return sites
