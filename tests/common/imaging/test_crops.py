"""Tests for nodule-centred, patient-axis-aligned crops."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from survfed.common.imaging.crops import AIR_HU, extract_crops, window_hu
from survfed.common.imaging.volume import Volume

SPHERE_CENTER = np.array([-31.0, 12.5, -118.0])  # LPS mm
SPHERE_RADIUS = 6.0
SPHERE_HU = 40.0
LUNG_HU = -850.0


def _phantom(spacing: tuple[float, float, float], direction: np.ndarray, half_mm: float = 34.0):
    """A lung-like background with a soft-edged sphere, sampled on the given geometry.

    The volume's centre lies at ``SPHERE_CENTER``; it extends ``half_mm`` each way along every
    index axis, so any crop up to ~2*half_mm/sqrt(3) mm wide lies inside the scan.
    """
    sk, sj, si = spacing
    n = [round(2 * half_mm / s) + 1 for s in (sk, sj, si)]
    extent_ijk = np.array([(n[2] - 1) * si, (n[1] - 1) * sj, (n[0] - 1) * sk])
    origin = SPHERE_CENTER - direction @ (extent_ijk / 2)
    skeleton = Volume(np.zeros(n, np.float32), spacing, tuple(origin), direction)
    kji = np.stack(np.meshgrid(*[np.arange(m) for m in n], indexing="ij"), axis=-1)
    xyz = skeleton.voxel_to_patient(kji)
    r = np.linalg.norm(xyz - SPHERE_CENTER, axis=-1)
    inside = 1.0 / (1.0 + np.exp((r - SPHERE_RADIUS) / 0.4))
    hu = LUNG_HU + (SPHERE_HU - LUNG_HU) * inside
    return Volume(hu.astype(np.float32), spacing, tuple(origin), direction)


def _geometries() -> dict[str, Volume]:
    rot = Rotation.from_euler("zxy", [33, 17, -24], degrees=True).as_matrix()
    return {
        "axial": _phantom((2.5, 0.7, 0.7), np.eye(3)),
        "feet_first": _phantom((1.25, 0.8, 0.8), np.diag([-1.0, 1.0, -1.0])),
        "coronal": _phantom((1.0, 1.5, 0.9), np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0.0]])),
        "rotated": _phantom((1.1, 0.9, 1.0), rot),
    }


@pytest.fixture(scope="module")
def geometries() -> dict[str, Volume]:
    return _geometries()


def _center_of_mass(crop: np.ndarray) -> np.ndarray:
    background = window_hu(np.array(LUNG_HU))
    return np.asarray(ndimage.center_of_mass(np.clip(crop - background, 0, None)))


def test_same_anatomy_gives_same_crop_for_any_orientation_and_spacing(geometries):
    size = 24
    crops = {}
    for name, vol in geometries.items():
        c, present = extract_crops(vol, SPHERE_CENTER[None], k=2, size_vox=size)
        assert c.shape == (2, 1, size, size, size) and c.dtype == np.float32
        assert present.tolist() == [True, False]
        crops[name] = c[0, 0]
        # centred: the sphere's centre of mass is the crop centre, within a tenth of a voxel
        np.testing.assert_allclose(_center_of_mass(c[0, 0]), (size - 1) / 2, atol=0.1)
        # the sphere's known HU at the centre, the lung outside
        mid = size // 2
        centre_hu = c[0, 0, mid - 1 : mid + 1, mid - 1 : mid + 1, mid - 1 : mid + 1].mean()
        assert centre_hu == pytest.approx(window_hu(np.array(SPHERE_HU)), abs=0.01)
        assert c[0, 0, 0, 0, 0] == pytest.approx(window_hu(np.array(LUNG_HU)), abs=1e-3)
    names = list(crops)
    for a in names:
        for b in names:
            corr = np.corrcoef(crops[a].ravel(), crops[b].ravel())[0, 1]
            assert corr > 0.95, (a, b, corr)


def test_axes_and_signs_follow_patient_space(geometries):
    """A crop centred off the nodule shows it displaced along the right crop axes."""
    offset = np.array([5.0, -3.0, 7.0])  # mm along x, y, z
    size, spacing = 32, 1.0
    for name, vol in geometries.items():
        c, _ = extract_crops(
            vol, (SPHERE_CENTER - offset)[None], k=1, size_vox=size, spacing_mm=spacing
        )
        expected_zyx = (size - 1) / 2 + offset[::-1] / spacing
        np.testing.assert_allclose(_center_of_mass(c[0, 0]), expected_zyx, atol=0.15, err_msg=name)


def test_equals_resampling_the_whole_scan(geometries):
    """Cutting the covering block first changes nothing, also at the scan's borders."""
    import SimpleITK as sitk

    from survfed.common.imaging.crops import crop_grid_origin

    size, spacing = 20, 0.8
    for name, vol in geometries.items():
        inside = vol.voxel_to_patient(np.array(vol.shape) / 2)
        edge = vol.voxel_to_patient((0.0, vol.shape[1] - 3.0, 2.0))
        outside = vol.voxel_to_patient((-40.0, 0.0, 0.0))
        centers = np.array([SPHERE_CENTER + np.array([4.3, -2.1, 1.7]), inside, edge, outside])
        crops, _ = extract_crops(vol, centers, k=4, size_vox=size, spacing_mm=spacing)
        image = vol.to_sitk()
        for n, center in enumerate(centers):
            ref = sitk.Resample(
                image,
                (size,) * 3,
                sitk.Transform(),
                sitk.sitkLinear,
                tuple(crop_grid_origin(center, size, spacing)),
                (spacing,) * 3,
                tuple(np.eye(3).ravel()),
                AIR_HU,
                sitk.sitkFloat32,
            )
            expected = window_hu(sitk.GetArrayFromImage(ref))
            np.testing.assert_allclose(crops[n, 0], expected, atol=1e-6, err_msg=f"{name} {n}")
    assert np.all(crops[3] == window_hu(np.array(AIR_HU)))


def test_crop_spacing_scales_the_field_of_view(geometries):
    vol = geometries["axial"]
    c1, _ = extract_crops(vol, SPHERE_CENTER[None], k=1, size_vox=24, spacing_mm=1.0)
    c2, _ = extract_crops(vol, SPHERE_CENTER[None], k=1, size_vox=24, spacing_mm=2.0)
    inside1 = (c1 > window_hu(np.array(-400.0))).sum()
    inside2 = (c2 > window_hu(np.array(-400.0))).sum()
    # sphere volume in voxels scales with 1/spacing^3: 4/3*pi*6^3 = 905 mm^3
    assert inside1 == pytest.approx(905, rel=0.06)
    assert inside2 == pytest.approx(905 / 8, rel=0.12)


def test_outside_the_scan_is_air(geometries):
    vol = geometries["axial"]
    corner = vol.voxel_to_patient((0, 0, 0))
    c, present = extract_crops(vol, corner[None], k=1, size_vox=16)
    assert present.tolist() == [True]
    # the crop's first octant (lower x, y, z than the corner) lies outside the scan
    np.testing.assert_array_equal(c[0, 0, :7, :7, :7], window_hu(np.array(AIR_HU)))
    assert c[0, 0, 9:, 9:, 9:] == pytest.approx(window_hu(np.array(LUNG_HU)), abs=1e-4)


def test_blank_crops_and_top_k(geometries):
    vol = geometries["axial"]
    none, present = extract_crops(vol, np.zeros((0, 3)), k=5, size_vox=8)
    assert none.shape == (5, 1, 8, 8, 8) and not present.any() and not none.any()
    centers = SPHERE_CENTER + np.array([[0, 0, 0], [16, 0, 0], [0, 16, 0], [0, 0, 16.0]])
    c, present = extract_crops(vol, centers, k=3, size_vox=8)
    assert present.tolist() == [True, True, True]
    # the first k are kept in the given order: the sphere is only in the first crop
    assert c[0].max() > 0.4 and c[1].max() < 0.2 and c[2].max() < 0.2
    c, present = extract_crops(vol, centers[:2], k=5, size_vox=8)
    assert present.tolist() == [True, True, False, False, False]
    assert not c[2:].any()


def test_window_scaling_is_exact_and_matches_monai():
    from monai.transforms import ScaleIntensityRange

    hu = np.array([-3000, -1200, -1000, -300, 0, 600, 2000], dtype=np.float32)
    expected = np.array([0, 0, 200 / 1800, 900 / 1800, 1200 / 1800, 1, 1], dtype=np.float32)
    np.testing.assert_allclose(window_hu(hu, (-1200, 600)), expected, rtol=0, atol=1e-7)
    monai = ScaleIntensityRange(a_min=-1200, a_max=600, b_min=0, b_max=1, clip=True)(hu)
    np.testing.assert_allclose(window_hu(hu), np.asarray(monai), atol=1e-7)


def test_crop_values_are_windowed_hu():
    """A uniform scan at a known HU gives that HU, windowed, everywhere inside."""
    vol = Volume(np.full((20, 20, 20), -300.0, np.float32), (2.0, 2.0, 2.0))
    c, _ = extract_crops(
        vol, np.array([[19.0, 19.0, 19.0]]), k=1, size_vox=10, hu_window=(-1000, 400)
    )
    np.testing.assert_allclose(c, 700 / 1400, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"centers_mm": np.zeros((2, 2))}, "centers_mm"),
        ({"centers_mm": np.array([[0, np.nan, 0]])}, "centers_mm"),
        ({"k": 0}, "k must"),
        ({"size_vox": 2.5}, "size_vox"),
        ({"spacing_mm": -1}, "spacing_mm"),
        ({"hu_window": (600, -1200)}, "hu_window"),
        ({"hu_window": (0,)}, "hu_window"),
    ],
)
def test_arguments_are_checked(kwargs, match):
    vol = Volume(np.zeros((4, 4, 4), np.float32), (1.0, 1.0, 1.0))
    args = {"centers_mm": np.zeros((1, 3))} | kwargs
    centers = args.pop("centers_mm")
    with pytest.raises(ValueError, match=match):
        extract_crops(vol, centers, **args)
    with pytest.raises(TypeError, match="volume"):
        extract_crops(np.zeros((4, 4, 4)), np.zeros((1, 3)))
