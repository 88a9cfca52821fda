"""Step 1: the LPS isotropic grid, field-of-view padding, outside-scan NaN; torch == SimpleITK."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from survfed.common.imaging.preprocess.config import PreprocessConfig, PreprocessError
from survfed.common.imaging.preprocess.resample import padding_values, resample_hu
from survfed.common.imaging.preprocess.torch_path import resample_hu as resample_torch
from survfed.common.imaging.volume import Volume


def test_grid_is_patient_axes_whatever_the_orientation(chest) -> None:
    config = PreprocessConfig(spacing_mm=2.5)
    hfs, grid_a = resample_hu(chest(), config)
    ffs, grid_b = resample_hu(chest(direction=np.diag([-1.0, 1.0, -1.0])), config)
    assert grid_a == grid_b
    assert grid_a.origin_mm == (-200.0, -150.0, -160.0)
    np.testing.assert_allclose(hfs, ffs, atol=1e-3)
    # array order [z, y, x], z towards the head: the trachea (x = 0, y = -20) is at the top only
    _, y, x = (np.asarray(grid_a.origin_mm[::-1]) * -1 / 2.5).astype(int)  # index of (0, 0, 0)
    assert hfs[-3, y - 8, x] == pytest.approx(-1000.0, abs=1.0)
    assert hfs[3, y - 8, x] == pytest.approx(40.0, abs=1.0)


def test_resampling_to_a_finer_grid_interpolates_linearly(chest) -> None:
    volume = chest(spacing=2.5)
    hu, grid = resample_hu(volume, PreprocessConfig(spacing_mm=1.25))
    assert grid.shape == (2 * volume.shape[0] - 1, 2 * volume.shape[1] - 1, 2 * volume.shape[2] - 1)
    np.testing.assert_allclose(hu[::2, ::2, ::2], volume.array, atol=1e-3)
    mid = 0.5 * (volume.array[:, :, :-1] + volume.array[:, :, 1:])
    np.testing.assert_allclose(hu[::2, ::2, 1::2], mid, atol=1e-3)


def test_fov_padding_is_not_measured(chest) -> None:
    volume = chest(fov_padding=-2000.0)
    values = padding_values(volume.array, PreprocessConfig())
    assert np.all(values == -2000.0)
    hu, _ = resample_hu(volume, PreprocessConfig(spacing_mm=2.5))
    assert np.isnan(hu[:, 0, 0]).all() and not np.isnan(hu[:, 60, 80]).any()
    assert np.nanmin(hu) >= -1000.0 - 1e-3  # no -2000 mixed into the interpolated values
    # constant air corners (-1000) are not padding
    assert np.isnan(padding_values(chest().array, PreprocessConfig())).all()


def test_bad_volumes_are_refused_with_a_reason() -> None:
    flat = Volume(np.zeros((1, 64, 64), np.float32), (1.0, 0.7, 0.7))
    with pytest.raises(PreprocessError, match="1 slice"):
        resample_hu(flat, PreprocessConfig())
    thin = Volume(np.zeros((5, 64, 64), np.float32), (1.0, 0.7, 0.7))
    with pytest.raises(PreprocessError, match="too small"):
        resample_hu(thin, PreprocessConfig())


def test_torch_resampling_matches_simpleitk_on_an_oblique_scan() -> None:
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(3)
    from scipy.ndimage import gaussian_filter

    array = gaussian_filter(rng.normal(0, 400, (24, 40, 36)), 2).astype(np.float32)
    direction = Rotation.from_euler("zxy", [20, -12, 7], degrees=True).as_matrix()
    volume = Volume(array, (3.0, 1.7, 1.9), (-30.0, 12.0, 40.0), direction)
    config = PreprocessConfig(spacing_mm=1.6)
    ref, grid = resample_hu(volume, config)
    got, grid_t = resample_torch(volume, config, torch.device("cpu"))
    got = got.numpy()
    assert grid == grid_t
    both = ~np.isnan(ref) & ~np.isnan(got)
    assert both.mean() > 0.4
    assert (np.isnan(ref) == np.isnan(got)).mean() > 0.995
    assert np.abs(ref[both] - got[both]).max() < 0.05
