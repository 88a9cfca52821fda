"""Synthetic preprocessed scans with known nodules, for tests, benchmarks and demos.

A scan looks like lung preprocessing's output: :data:`~survfed.common.detection.scan.PAD_VALUE`
(170) outside two ellipsoidal "lungs", inside them a dark textured parenchyma (grey ≈ 30–60:
smoothed noise), a few bright tubes ("vessels", grey ≈ 110–150, radius 1–1.5 voxels: nodule-like
in cross-section, the hard negatives) and bright spheres (nodules, grey ≈ 150–200, soft edge)
placed at known centres inside the lungs. Nothing here models real anatomy beyond that; it is a
controlled detection problem with exact ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from survfed.common.detection.scan import PAD_VALUE, DetectionScan

__all__ = ["synthetic_scan"]


def synthetic_scan(
    rng: np.random.Generator,
    shape: tuple[int, int, int] = (80, 120, 120),
    diameters: Sequence[float] = (8.0, 12.0),
    *,
    vessels: int = 6,
    name: str = "",
) -> DetectionScan:
    """One synthetic scan with a nodule of each diameter in ``diameters`` (voxels).

    Args:
        rng: the random source (everything is drawn from it).
        shape: ``(Z, Y, X)`` in voxels.
        diameters: nodule diameters in voxels; each nodule lies fully inside a lung and does not
            touch another.
        vessels: bright tubes per lung.
        name: the scan's name.

    Returns:
        A :class:`~survfed.common.detection.scan.DetectionScan` whose ``nodules`` are the exact
        sphere centres and diameters (in the order of ``diameters``).
    """
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape must be three sizes >= 16, got {shape!r}")
    zz, yy, xx = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    z, y, x = shape
    semi = np.array([0.42 * z, 0.36 * y, 0.2 * x], dtype=np.float32)
    centres = [np.array([z / 2, y / 2, x * c]) for c in (0.27, 0.73)]
    lung = np.zeros(shape, dtype=bool)
    for c in centres:
        lung |= ((zz - c[0]) / semi[0]) ** 2 + ((yy - c[1]) / semi[1]) ** 2 + (
            (xx - c[2]) / semi[2]
        ) ** 2 <= 1.0
    texture = ndimage.gaussian_filter(rng.normal(0.0, 1.0, shape).astype(np.float32), 1.5)
    texture = 45.0 + 8.0 * texture / max(float(texture.std()), 1e-6)
    image = np.where(lung, texture, float(PAD_VALUE)).astype(np.float32)
    for c in centres:
        for _ in range(vessels):
            a = c + rng.uniform(-0.8, 0.8, 3) * semi
            b = c + rng.uniform(-0.8, 0.8, 3) * semi
            radius, grey = rng.uniform(1.0, 1.5), rng.uniform(110.0, 150.0)
            ab = b - a
            t = ((zz - a[0]) * ab[0] + (yy - a[1]) * ab[1] + (xx - a[2]) * ab[2]) / float(ab @ ab)
            t = np.clip(t, 0.0, 1.0)
            dist2 = (zz - a[0] - t * ab[0]) ** 2 + (yy - a[1] - t * ab[1]) ** 2
            dist2 += (xx - a[2] - t * ab[2]) ** 2
            image = np.where(lung & (dist2 <= radius**2), grey, image)
    placed: list[np.ndarray] = []
    dist_inside = ndimage.distance_transform_edt(lung)
    for d in diameters:
        r = float(d) / 2
        ok = np.argwhere(dist_inside > r + 1.0)
        if len(ok) == 0:
            raise ValueError(f"a nodule of diameter {d} does not fit into the lungs of {shape}")
        for _ in range(200):
            centre = ok[rng.integers(len(ok))] + rng.uniform(-0.5, 0.5, 3)
            if all(np.linalg.norm(centre - q[:3]) > r + q[3] / 2 + 2 for q in placed):
                break
        else:
            raise ValueError(f"could not place {len(diameters)} separate nodules in {shape}")
        grey = rng.uniform(150.0, 200.0)
        dist = np.sqrt((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2)
        weight = np.clip(r + 0.5 - dist, 0.0, 1.0)  # one-voxel soft edge
        image = image * (1 - weight) + weight * (grey + rng.normal(0.0, 4.0, shape))
        placed.append(np.array([*centre, float(d)]))
    image = np.clip(np.rint(image + rng.normal(0.0, 3.0, shape) * lung), 0, 255).astype(np.uint8)
    nodules = np.array(placed, dtype=np.float64).reshape(-1, 4)
    return DetectionScan(image=image, nodules=nodules, name=name)
