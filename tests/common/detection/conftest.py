"""Fixtures of the detection tests: small synthetic scans with known nodules."""

from __future__ import annotations

import numpy as np
import pytest

from survfed.common.detection.scan import PAD_VALUE, DetectionScan
from survfed.common.detection.synthetic import synthetic_scan


@pytest.fixture(scope="session")
def small_scan() -> DetectionScan:
    """A 48×64×64 synthetic scan with three nodules (6, 10, 14 voxels)."""
    return synthetic_scan(np.random.default_rng(5), (48, 64, 64), (6.0, 10.0, 14.0), name="s0")


def _sphere_scan(shape, nodules) -> DetectionScan:
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    image = np.full(shape, 40, dtype=np.uint8)
    image[0, 0, 0] = PAD_VALUE
    for z, y, x, d in nodules:
        image[(zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 <= (d / 2) ** 2] = 200
    return DetectionScan(image=image, nodules=np.asarray(nodules, dtype=float).reshape(-1, 4))


@pytest.fixture(scope="session")
def sphere_scan():
    """Factory ``(shape, nodules) -> DetectionScan``: a flat 'lung' (grey 40) with bright
    spheres (grey 200) at ``nodules`` ``(z, y, x, d)``."""
    return _sphere_scan
