"""Step 2a: per-slice binarisation (seed 003 §III.B.1, first half).

Each slice is smoothed with a 2D Gaussian (sigma 1 pixel at 1 mm, kernel cut at 2 sigma as in
the paper's code) and thresholded at -600 HU. NaN voxels (no measurement, see
:mod:`~survfed.common.imaging.preprocess.resample`) spread NaN over the kernel and are never
below the threshold, so the outside of a circular field of view is not air.

Then every 2D connected component (8-connected within its slice) of 30 mm² or less, or with an
eccentricity of 0.99 or more, is removed. All slices are labelled at once with a structuring
element without z-connectivity; areas and eccentricities come from the components' second
central moments, computed in closed form from the components' row runs
(:mod:`.runs`) (the same definition as scikit-image's
``regionprops``: eccentricity = sqrt(1 - l2 / l1) with l1 >= l2 the eigenvalues of the inertia
tensor).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from survfed.common.imaging.preprocess.backend import NUMPY, ArrayBackend
from survfed.common.imaging.preprocess.config import PreprocessConfig
from survfed.common.imaging.preprocess.runs import label_runs

__all__ = [
    "SLICE_8",
    "eccentricity_from_moments",
    "filter_slice_components",
    "gaussian_kernel1d",
    "smooth_threshold",
]

SLICE_8 = np.zeros((3, 3, 3), dtype=bool)
SLICE_8[1] = True
SLICE_8.flags.writeable = False
"""8-connectivity within a slice, none across slices."""


def gaussian_kernel1d(sigma: float, truncate: float) -> np.ndarray:
    """The sampled, normalised 1D Gaussian that ``scipy.ndimage.gaussian_filter`` uses.

    Returns:
        float64 ``(2 r + 1,)`` with ``r = int(truncate * sigma + 0.5)``.
    """
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / float(sigma) ** 2 * x**2)
    return phi / phi.sum()


def smooth_threshold(
    hu: np.ndarray, config: PreprocessConfig
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-slice Gaussian (scipy, mode ``reflect``) then ``< threshold_hu`` (CPU).

    Args:
        hu: ``(Z, Y, X)`` float32 HU, NaN where nothing was measured.

    Returns:
        ``(air, measured)``: bool ``(Z, Y, X)``, True = air-like (lung or outside air); and
        where the smoothed image is defined (not NaN), or None when it is everywhere.
    """
    from scipy.ndimage import gaussian_filter

    smooth = gaussian_filter(
        hu, sigma=(0.0, config.sigma_vox, config.sigma_vox), truncate=config.gaussian_truncate
    )
    with np.errstate(invalid="ignore"):
        air = smooth < np.float32(config.threshold_hu)
    measured = ~np.isnan(smooth)
    return air, (None if measured.all() else measured)


def eccentricity_from_moments(
    n: Any, s_r: Any, s_c: Any, s_rr: Any, s_cc: Any, s_rc: Any, xp: Any = np
) -> Any:
    """Eccentricity of 2D regions from raw moment sums (scikit-image's definition).

    Args:
        n, s_r, s_c, s_rr, s_cc, s_rc: per region the pixel count and the sums of row, column,
            row², column² and row·column (float64 arrays of one shape).
        xp: ``numpy`` or ``cupy``.

    Returns:
        float64 array: ``sqrt(1 - l2 / l1)``, 0 where ``l1 == 0`` (a single pixel).
    """
    safe_n = xp.maximum(n, 1.0)
    var_r = s_rr / safe_n - (s_r / safe_n) ** 2
    var_c = s_cc / safe_n - (s_c / safe_n) ** 2
    cov = s_rc / safe_n - (s_r / safe_n) * (s_c / safe_n)
    half_sum = 0.5 * (var_r + var_c)
    root = xp.sqrt(xp.maximum(0.25 * (var_r - var_c) ** 2 + cov**2, 0.0))
    l1 = half_sum + root
    l2 = xp.maximum(half_sum - root, 0.0)
    ratio = xp.where(l1 > 1e-12, l2 / xp.where(l1 > 1e-12, l1, 1.0), 1.0)
    return xp.sqrt(xp.clip(1.0 - ratio, 0.0, 1.0))


def _moments(labels: Any, n: int, backend: ArrayBackend) -> tuple[Any, ...]:
    """Per label ``0..n``: pixel count and raw moment sums (row, col, row², col², row·col)."""
    xp = backend.xp
    runs = label_runs(labels, backend)
    a = runs.x0.astype(xp.float64)
    b = runs.x1.astype(xp.float64)
    r = runs.y.astype(xp.float64)
    count = b - a + 1
    s_c = (a + b) * count / 2
    s_cc = (b * (b + 1) * (2 * b + 1) - (a - 1) * a * (2 * a - 1)) / 6
    weights = (count, r * count, s_c, r * r * count, s_cc, r * s_c)
    return tuple(xp.bincount(runs.label, weights=w, minlength=n + 1) for w in weights)


def filter_slice_components(
    air: Any, config: PreprocessConfig, backend: ArrayBackend = NUMPY
) -> Any:
    """Remove small and line-like 2D components from every slice.

    Args:
        air: bool ``(Z, Y, X)`` from the threshold (NumPy or CuPy, matching ``backend``).
        config: ``min_area_mm2``, ``max_eccentricity``, ``spacing_mm``.
        backend: the array backend holding ``air``.

    Returns:
        bool ``(Z, Y, X)``: the components with area > ``min_area_mm2`` and eccentricity
        < ``max_eccentricity``.
    """
    xp = backend.xp
    labels, n = backend.ndi.label(air, structure=xp.asarray(SLICE_8))
    n = int(n)
    if n == 0:
        return xp.zeros(air.shape, dtype=bool)
    count, s_r, s_c, s_rr, s_cc, s_rc = _moments(labels, n, backend)
    ecc = eccentricity_from_moments(count, s_r, s_c, s_rr, s_cc, s_rc, xp=xp)
    area_mm2 = count * config.spacing_mm**2
    keep = (area_mm2 > config.min_area_mm2) & (ecc < config.max_eccentricity)
    keep[0] = False
    return keep[labels]
