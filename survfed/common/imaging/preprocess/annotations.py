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
from survfed.common.sphere import fibonacci_directions

__all__ = ["MIN_SHARE_INSIDE", "OUTSIDE_MASK_PREFIX", "annotation_warnings", "share_inside"]

MIN_SHARE_INSIDE = 0.75
"""A nodule with less of its sphere than this inside the final mask is warned about (the
paper's mask keeps juxtapleural nodules of ordinary size whole: the dilation is 10 mm)."""

OUTSIDE_MASK_PREFIX = "annotated nodule at "
"""How each warning of :func:`annotation_warnings` begins (to count them)."""

_RADII = (0.0, 0.5, 0.8, 1.0)  # the centre and three shells, as fractions of the radius
_VOLUMES = np.diff(np.array([0.0, 0.25, 0.65, 0.9, 1.0]) ** 3)  # between the shells' midpoints
# the lattice mirrored in y (turning the other way round z): the one the shares quoted in the
# docs and tests were measured with
_DIRECTIONS = fibonacci_directions(64) * np.array([1.0, -1.0, 1.0])


def _sphere_points(centre: np.ndarray, diameter_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """The centre, then three shells of directions, with weights proportional to the volume
    each point stands for, summing to 1."""
    points, weights = [centre[None, :]], [_VOLUMES[:1]]
    for fraction, volume in zip(_RADII[1:], _VOLUMES[1:], strict=True):
        points.append(centre + _DIRECTIONS * (fraction * diameter_mm / 2.0))
        weights.append(np.full(len(_DIRECTIONS), volume / len(_DIRECTIONS)))
    return np.concatenate(points), np.concatenate(weights)


def _inside(
    scan: PreprocessedScan, centre_mm: np.ndarray, diameter_mm: float
) -> tuple[bool, float]:
    """Whether the centre lies in the final mask, and the share of the sphere that does."""
    points, weights = _sphere_points(np.asarray(centre_mm, dtype=np.float64), float(diameter_mm))
    inside = scan.contains(points)
    return bool(inside[0]), float(np.sum(weights[inside]))


def share_inside(scan: PreprocessedScan, centre_mm: np.ndarray, diameter_mm: float) -> float:
    """Share (0-1, by volume) of the sphere of ``diameter_mm`` at ``centre_mm`` (patient x, y, z
    in mm) that lies in the final mask of ``scan``."""
    return _inside(scan, centre_mm, diameter_mm)[1]


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
        centre_in, share = _inside(scan, np.array([x, y, z]), diameter)
        if centre_in and share >= MIN_SHARE_INSIDE:
            continue
        where = "its centre lies outside the final mask" if not centre_in else "partly outside"
        notes.append(
            f"{OUTSIDE_MASK_PREFIX}({x:.1f}, {y:.1f}, {z:.1f}) mm, {diameter:.1f} mm: {where}, "
            f"{share:.0%} of it inside; the preprocessed scan is grey there, so the detector "
            "and the survival crops do not see that part"
        )
    return notes
