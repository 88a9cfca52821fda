"""Annotated nodules against the final mask: a site's annotations that preprocessing erases.

Step 5 fills everything outside the final mask with grey (170), so a nodule outside it is gone
from the preprocessed scan: the detector learns from a label with nothing under it, and a
survival crop cut there shows grey. The paper's mask (convex hull, 10 mm dilation) keeps
nodules of ordinary size, juxtapleural ones included; a mass that takes the place of the lung's
edge can fall partly outside (``docs/preprocessing.md``). :func:`annotation_warnings` says so
per nodule, from ``nodules.csv`` alone: the nodule is taken as the sphere of its annotated
diameter.
"""

from __future__ import annotations

import numpy as np

from survfed.common.imaging.preprocess.result import PreprocessedScan

__all__ = ["MIN_SHARE_INSIDE", "OUTSIDE_MASK_PREFIX", "annotation_warnings", "share_inside"]

MIN_SHARE_INSIDE = 0.75
"""A nodule with less of its sphere than this inside the final mask is warned about (the
paper's mask keeps juxtapleural nodules of ordinary size whole: the dilation is 10 mm)."""

OUTSIDE_MASK_PREFIX = "annotated nodule at "
"""How each warning of :func:`annotation_warnings` begins (to count them)."""

_RADII = (0.0, 0.5, 0.8, 1.0)  # shells, as fractions of the radius
_DIRECTIONS = 64


def _sphere_points(centre: np.ndarray, diameter_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Points of the sphere (centre and three shells of Fibonacci directions), with weights
    proportional to the volume each stands for, summing to 1."""
    k = np.arange(_DIRECTIONS) + 0.5
    polar = np.arccos(1.0 - 2.0 * k / _DIRECTIONS)
    azimuth = np.pi * (1.0 + 5.0**0.5) * k
    unit = np.stack(
        [np.sin(polar) * np.cos(azimuth), np.sin(polar) * np.sin(azimuth), np.cos(polar)], axis=1
    )
    bounds = np.array([0.0, 0.25, 0.65, 0.9, 1.0]) ** 3  # shell volumes between the midpoints
    points, weights = [centre[None, :]], [np.array([bounds[1] - bounds[0]])]
    for n, fraction in enumerate(_RADII[1:], start=1):
        points.append(centre + unit * (fraction * diameter_mm / 2.0))
        weights.append(np.full(_DIRECTIONS, (bounds[n + 1] - bounds[n]) / _DIRECTIONS))
    return np.concatenate(points), np.concatenate(weights)


def share_inside(scan: PreprocessedScan, centre_mm: np.ndarray, diameter_mm: float) -> float:
    """Share (0-1, by volume) of the sphere of ``diameter_mm`` at ``centre_mm`` (patient x, y, z
    in mm) that lies in the final mask of ``scan``."""
    points, weights = _sphere_points(np.asarray(centre_mm, dtype=np.float64), float(diameter_mm))
    return float(np.sum(weights[scan.contains(points)]))


def annotation_warnings(scan: PreprocessedScan, nodules_mm: np.ndarray) -> list[str]:
    """One warning per annotated nodule whose centre lies outside the final mask or that has
    less than :data:`MIN_SHARE_INSIDE` of its sphere inside.

    Args:
        scan: the preprocessed scan.
        nodules_mm: ``(n, 4)`` rows of ``(x, y, z, diameter)`` in patient mm (``nodules.csv``).
    """
    nodules = np.asarray(nodules_mm, dtype=np.float64).reshape(-1, 4)
    notes = []
    for x, y, z, diameter in nodules:
        centre = np.array([x, y, z])
        share = share_inside(scan, centre, diameter)
        centre_in = bool(scan.contains(centre[None, :])[0])
        if centre_in and share >= MIN_SHARE_INSIDE:
            continue
        where = "its centre lies outside the final mask" if not centre_in else "partly outside"
        notes.append(
            f"{OUTSIDE_MASK_PREFIX}({x:.1f}, {y:.1f}, {z:.1f}) mm, {diameter:.1f} mm: {where}, "
            f"{share:.0%} of it inside; the preprocessed scan is grey there, so the detector "
            "and the survival crops do not see that part"
        )
    return notes
