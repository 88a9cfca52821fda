"""Step 2a: Gaussian (torch == SciPy), eccentricity (== scikit-image), 2D component filter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.measure import label, regionprops

from survfed.common.imaging.preprocess.binarize import (
    eccentricity_from_moments,
    filter_slice_components,
    smooth_threshold,
)
from survfed.common.imaging.preprocess.config import PreprocessConfig
from survfed.common.imaging.preprocess.runs import label_runs
from survfed.common.imaging.preprocess.torch_path import gaussian_slices


def _blobs(seed: int, shape=(6, 48, 52)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.normal(size=shape), (0, 2.0, 2.0)) > 0.05


def test_eccentricity_and_area_match_regionprops() -> None:
    mask = _blobs(1)
    labels, n = ndimage.label(
        mask, structure=np.array([np.zeros((3, 3)), np.ones((3, 3)), np.zeros((3, 3))])
    )
    runs = label_runs(labels)
    a, b, r = (runs.x0.astype(float), runs.x1.astype(float), runs.y.astype(float))
    cnt = b - a + 1
    s_c = (a + b) * cnt / 2
    s_cc = (b * (b + 1) * (2 * b + 1) - (a - 1) * a * (2 * a - 1)) / 6
    sums = [
        np.bincount(runs.label, w, minlength=n + 1)
        for w in (cnt, r * cnt, s_c, r * r * cnt, s_cc, r * s_c)
    ]
    ecc = eccentricity_from_moments(*sums)
    checked = 0
    for z in range(mask.shape[0]):
        for prop in regionprops(label(mask[z], connectivity=2)):
            ours = labels[z][tuple(prop.coords[0])]
            assert sums[0][ours] == prop.area
            assert ecc[ours] == pytest.approx(prop.eccentricity, abs=1e-9)
            checked += 1
    assert checked > 30
    assert eccentricity_from_moments(*[np.array([1.0]), *[np.array([0.0])] * 5])[0] == 0.0


def test_filter_drops_small_and_line_like_components() -> None:
    air = np.zeros((3, 60, 60), dtype=bool)
    air[1, 10:20, 10:20] = True  # 100 px, round: kept
    air[1, 40:43, 40:43] = True  # 9 px = 9 mm² at 1 mm: too small
    air[1, 30, 5:55] = True  # a line: eccentricity 1
    air[2, 5:7, 5:40] = True  # 70 px, 2 x 35: eccentricity 0.9984 >= 0.99
    air[0, 50:56, 50:56] = True  # 36 px: kept at 1 mm, dropped at 0.9 mm (29.2 mm²)
    out = filter_slice_components(air, PreprocessConfig(spacing_mm=1.0))
    assert out[1, 10:20, 10:20].all() and out.sum() == 136
    finer = filter_slice_components(air, PreprocessConfig(spacing_mm=0.9))
    assert finer.sum() == 100


def test_torch_gaussian_matches_scipy_with_nan() -> None:
    rng = np.random.default_rng(0)
    hu = rng.normal(-500, 300, (4, 30, 33)).astype(np.float32)
    hu[:, :3, :3] = np.nan
    for sigma in (1.0, 0.4):
        ref = ndimage.gaussian_filter(hu, (0, sigma, sigma), truncate=2.0)
        got = gaussian_slices(torch.from_numpy(hu), sigma, 2.0).numpy()
        assert (np.isnan(ref) == np.isnan(got)).all()
        np.testing.assert_allclose(got[~np.isnan(ref)], ref[~np.isnan(ref)], atol=1e-3)


def test_threshold_treats_nan_as_not_air() -> None:
    hu = np.full((3, 20, 20), -1000.0, dtype=np.float32)
    hu[:, :, :5] = np.nan
    air, measured = smooth_threshold(hu, PreprocessConfig())
    assert not air[:, :, :7].any() and air[:, :, 7:].all()
    assert measured is not None and not measured[:, :, :7].any()
    assert smooth_threshold(np.zeros((3, 8, 8), np.float32), PreprocessConfig())[1] is None
