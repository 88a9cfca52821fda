"""Step 4: convex hulls (exact and torch) against scikit-image, ratio rule, taxicab dilation."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from skimage.morphology import convex_hull_image

from survfed.common.imaging.preprocess.config import PreprocessConfig
from survfed.common.imaging.preprocess.hull_dilate import (
    convex_hull_2d,
    dilate_taxicab,
    final_mask,
    hull_or_mask,
)
from survfed.common.imaging.preprocess.torch_path import convex_hull_slices
from survfed.common.imaging.preprocess.torch_path import dilate_taxicab as dilate_torch
from survfed.common.imaging.preprocess.torch_path import final_mask as final_mask_torch


def _shapes(n: int = 12) -> np.ndarray:
    rng = np.random.default_rng(5)
    blobs = ndimage.gaussian_filter(rng.normal(size=(n, 70, 90)), (0, 4, 4)) > 0.08
    blobs[0] = False
    blobs[1, 30, 40] = True  # a single pixel
    return blobs


def test_exact_hull_equals_scikit_image() -> None:
    for plane in _shapes():
        ours = convex_hull_2d(plane)
        if not plane.any():
            assert not ours.any()
            continue
        np.testing.assert_array_equal(ours, convex_hull_image(plane))


def test_torch_hull_agrees_with_scikit_image() -> None:
    masks = _shapes()
    got = convex_hull_slices(torch.from_numpy(masks)).numpy()
    ref = np.stack([convex_hull_image(m) if m.any() else m for m in masks])
    np.testing.assert_array_equal(got, ref)
    assert not got[0].any()


def test_crescent_keeps_its_mask() -> None:
    yy, xx = np.mgrid[:80, :80]
    disc = np.hypot(yy - 40, xx - 40) < 30
    crescent = disc & ~(np.hypot(yy - 40, xx - 52) < 26)
    lung = np.stack([disc, crescent])
    out = hull_or_mask(lung, 1.5)
    assert convex_hull_2d(crescent).sum() > 1.5 * crescent.sum()
    np.testing.assert_array_equal(out[1], crescent)
    np.testing.assert_array_equal(out[0], convex_hull_image(disc))


def test_dilation_is_the_iterated_cross() -> None:
    mask = np.zeros((30, 30, 30), dtype=bool)
    mask[15, 15, 15] = mask[3, 4, 28] = True
    cross = ndimage.generate_binary_structure(3, 1)
    ref = ndimage.binary_dilation(mask, cross, iterations=6)
    np.testing.assert_array_equal(dilate_taxicab(mask, 6), ref)
    np.testing.assert_array_equal(dilate_torch(torch.from_numpy(mask), 6).numpy(), ref)
    single = np.zeros_like(mask)
    single[15, 15, 15] = True
    assert dilate_taxicab(single, 6).sum() == 377  # the octahedron |dz|+|dy|+|dx| <= 6


def test_final_mask_cpu_and_torch_agree() -> None:
    rng = np.random.default_rng(2)
    blob = ndimage.gaussian_filter(rng.normal(size=(20, 50, 70)), 3) > 0.05
    right, left = blob.copy(), blob.copy()
    right[:, :, 35:] = False
    left[:, :, :35] = False
    config = PreprocessConfig(spacing_mm=2.0)
    cpu, _ = final_mask(right, left, config)
    got = final_mask_torch(torch.from_numpy(right), torch.from_numpy(left), config).numpy()
    assert (cpu != got).sum() <= 1e-3 * cpu.sum()
    assert (cpu >= (right | left)).all()
