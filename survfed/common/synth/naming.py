"""Deterministic DICOM UIDs, patient IDs and per-site file layouts for synthetic cohorts."""

from __future__ import annotations

import numpy as np
from pydicom.uid import generate_uid

__all__ = ["make_uid", "patient_ids", "series_file_names"]

_HEX = "0123456789ABCDEF"


def make_uid(*parts: object) -> str:
    """A DICOM UID derived only from ``parts`` (same parts, same UID; no clock, no host)."""
    if not parts:
        raise ValueError("make_uid needs at least one part")
    return str(generate_uid(entropy_srcs=["survfed-synth", *(str(p) for p in parts)]))


def _token(rng: np.random.Generator, n: int) -> str:
    return "".join(_HEX[int(k)] for k in rng.integers(0, 16, n))


def patient_ids(rng: np.random.Generator, prefix: str, n: int) -> list[str]:
    """``n`` distinct opaque IDs ``"<prefix>-<number>"`` with random (not sequential) numbers.

    Args:
        rng: the site's ID stream.
        prefix: site prefix, e.g. ``"IOW"``.
        n: number of patients (>= 1).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    high = max(10_000, 4 * n)
    width = len(str(high - 1))
    numbers = rng.choice(np.arange(1, high), size=n, replace=False)
    return [f"{prefix}-{int(k):0{width}d}" for k in numbers]


def series_file_names(
    rng: np.random.Generator,
    layout: str,
    n_slices: int,
    *,
    patient_id: str,
    study_date: str,
    series_number: int,
    study_token: str,
) -> list[str]:
    """File names (relative to ``<site>/dicom``) for the slices of one series, in slice order.

    Names are shuffled: the number in a name does not follow the slice position.

    Args:
        rng: the series' naming stream.
        layout: one of :data:`survfed.common.synth.sites.LAYOUTS`.
        n_slices: number of slices (>= 1).
        patient_id, study_date, series_number: identity used by ``patient_study_series``.
        study_token: a random token shared by the series of one study (``nested_random``).
    """
    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices}")
    order = rng.permutation(n_slices) + int(rng.integers(1, 400))
    if layout == "nested_random":
        folder = f"{study_token}/{_token(rng, 8)}"
        return [f"{folder}/IM{int(n):06d}" for n in order]
    if layout == "flat_random":
        names: list[str] = []
        seen: set[str] = set()
        while len(names) < n_slices:
            name = f"{_token(rng, 20)}.dcm"
            if name not in seen:
                seen.add(name)
                names.append(name)
        return names
    if layout == "patient_study_series":
        folder = f"{patient_id}/{study_date}-{study_token[:6]}/SE{series_number:03d}"
        return [f"{folder}/IMG{int(n):05d}.dcm" for n in order]
    raise ValueError(f"unknown layout {layout!r}")


def token(rng: np.random.Generator, n: int) -> str:
    """A random upper-case hex string of ``n`` characters."""
    return _token(rng, n)
