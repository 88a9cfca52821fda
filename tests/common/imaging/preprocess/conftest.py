"""Fixtures for the preprocessing tests: an analytic chest phantom and a fresh generator cohort.

The analytic phantom (``chest``) is a box of air holding an elliptic body of soft tissue with two
ellipsoidal lungs (-850 HU) joined by a trachea and main bronchi: small, exact and fast, for
unit tests of single steps. ``fresh_cohort`` is written by the real ``make-cohort`` generator
with a seed the pipeline was never developed on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from survfed.common.imaging.volume import Volume

LUNG_HU = -850.0
TISSUE_HU = 40.0
AIR_HU = -1000.0
FRESH_SEED = 2027


def make_chest(
    spacing: float = 2.5,
    *,
    direction: np.ndarray | None = None,
    fov_padding: float | None = None,
    fov_radius: float = 195.0,
    trachea: bool = True,
    lungs: bool = True,
    z_range: tuple[float, float] = (-160.0, 160.0),
    open_top: bool = False,
    noise: float = 0.0,
    seed: int = 0,
) -> Volume:
    """An analytic chest on an axis grid (patient mm: body centred at x = y = 0, lungs z ±100).

    Args:
        spacing: voxel size in mm (isotropic).
        direction: ITK direction of the volume (default identity; e.g. flips for feet-first).
        fov_padding: value written outside a circular field of view (e.g. -2000), or None.
        fov_radius: that circle's radius in mm (the lungs reach 125 mm from the centre).
        trachea: draw the trachea (to the top of the volume) and two bronchi into the lungs.
        lungs: draw the lungs at all.
        z_range: patient z extent of the scan, mm.
        open_top: cut the body's top 30 mm away so the trachea opens into the outside air.
        noise: Gaussian noise sd in HU.
    """
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    xs = np.arange(-200.0, 200.0 + 1e-9, spacing)
    ys = np.arange(-150.0, 150.0 + 1e-9, spacing)
    zs = np.arange(z_range[0], z_range[1] + 1e-9, spacing)
    X, Y, Z = np.meshgrid(xs, ys, zs, indexing="ij")  # patient grid (x, y, z)
    hu = np.full(X.shape, AIR_HU, dtype=np.float32)
    body = (X / 160.0) ** 2 + (Y / 115.0) ** 2 < 1.0
    if open_top:
        body &= Z < z_range[1] - 30.0
    hu[body] = TISSUE_HU
    if lungs:
        for cx in (-70.0, 70.0):
            lung = ((X - cx) / 55.0) ** 2 + ((Y + 5.0) / 75.0) ** 2 + (Z / 110.0) ** 2 < 1.0
            hu[lung] = LUNG_HU
        if trachea:
            hu[(np.hypot(X, Y + 20.0) < 9.0) & (Z > 40.0)] = AIR_HU
            for sign in (-1.0, 1.0):  # bronchi from the carina (z = 40) into each lung
                t = np.clip((X * sign) / 45.0, 0.0, 1.0)
                on = (X * sign >= 0) & (X * sign <= 45.0)
                hu[on & (np.hypot(Y + 20.0, Z - (40.0 - 10.0 * t)) < 5.0)] = AIR_HU
    if noise > 0:
        hu += np.random.default_rng(seed).normal(0.0, noise, hu.shape).astype(np.float32)
    if fov_padding is not None:
        hu[np.hypot(X, Y) > fov_radius] = fov_padding
    array = np.ascontiguousarray(np.transpose(hu, (2, 1, 0)))  # (z, y, x) = (k, j, i)
    # lay the same patient grid out along ``direction`` (flip axes as needed)
    flips = [direction[a, a] < 0 for a in range(3)]  # only axis flips are supported here
    origin = np.array([xs[0], ys[0], zs[0]])
    for axis, flip in enumerate(flips):
        if flip:
            array = np.flip(array, axis=2 - axis)
            origin[axis] = (xs, ys, zs)[axis][-1]
    return Volume(np.ascontiguousarray(array), (spacing,) * 3, tuple(origin), direction)


@pytest.fixture(scope="session")
def chest() -> Callable[..., Volume]:
    """The :func:`make_chest` factory."""
    return make_chest


@pytest.fixture(scope="session")
def fresh_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny generator cohort (2 patients per site) with a seed never used while developing."""
    from survfed.common.synth.cohort import make_cohort

    out = tmp_path_factory.mktemp("fresh") / "cohort"
    make_cohort(out, {"iowa": 2, "maastro": 2, "stanford": 2}, seed=FRESH_SEED, progress=False)
    return out
