"""Anatomy, nodules, phantom rendering and scanner geometry."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from skimage.measure import regionprops

from survfed.common.synth.anatomy import draw_anatomy, lung_labels
from survfed.common.synth.nodules import (
    MASS_DIAMETER_MM,
    draw_nodules,
    fibonacci_directions,
    place_nodules,
    rasterise_nodule,
)
from survfed.common.synth.phantom import render_thorax
from survfed.common.synth.scanner import SeriesPlan, acquire


def _lung_box(a):
    ia, ib = a.inner_axes
    bx, by = a.body_centre
    z0, z1 = a.lung_z_range
    return np.array([bx - ia, by - ib, z0]), np.array([bx + ia, by + ib, z1])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_lungs_have_realistic_volumes(seed):
    a = draw_anatomy(np.random.default_rng(seed))
    step = 2.5
    lo, hi = _lung_box(a)
    xs, ys, zs = (np.arange(lo[d] - 5, hi[d] + 5, step) for d in range(3))
    labels = lung_labels(a, xs[None, None, :], ys[None, :, None], zs[:, None, None])
    right, left = ((labels == k).sum() * step**3 / 1e6 for k in (1, 2))
    assert 0.6 <= right <= 3.5 and 0.5 <= left <= 3.5
    assert 0.68 <= right + left <= 7.5
    assert right > left  # the heart takes room from the left lung
    # right lung on the patient's right (-x), left lung on +x
    kji = np.argwhere(labels == 1)
    assert xs[kji[:, 2]].mean() < a.body_centre[0] < xs[np.argwhere(labels == 2)[:, 2]].mean()
    assert len(a.vessels) > 100
    assert a.vessels.radius_start.max() >= 4.0 and a.vessels.radius_end.min() < 1.0


def test_fibonacci_directions_are_uniform_unit_vectors():
    d = fibonacci_directions(2000)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(d.mean(axis=0), 0.0, atol=2e-3)
    np.testing.assert_allclose(d.T @ d / 2000, np.eye(3) / 3, atol=2e-3)


def test_nodule_kinds_sizes_and_rasterised_volume():
    rng = np.random.default_rng(5)
    seen = set()
    for _ in range(60):
        cancer = bool(rng.random() < 0.6)
        nodules = draw_nodules(rng, cancer)
        assert cancer == any(n.malignant for n in nodules)
        for n in nodules:
            seen.add((n.kind, n.malignant))
            lo, hi = (8.0, 30.0) if n.malignant else (3.0, 8.0)
            assert lo - 1e-6 <= n.diameter_mm <= hi + 1e-6
            if n.kind == "calcified":
                assert n.hu >= 300.0 and not n.malignant
            if n.kind == "part_solid":
                assert n.hu_ggo < -300.0 < n.hu
    assert {
        ("spiculated", True),
        ("part_solid", True),
        ("calcified", False),
        ("juxtapleural", False),
        ("solid", False),
    } <= seen
    # partial-volume occupancy integrates to the equivalent-sphere volume
    spiculated = next(n for n in draw_nodules(np.random.default_rng(1), True) if n.malignant)
    from dataclasses import replace

    nodule = replace(spiculated, centre=(0.3, -0.2, 0.1))
    axis = np.arange(-40.0, 40.0, 0.5)
    box, occ, _ = rasterise_nodule(nodule, axis, axis, axis)
    volume = occ.sum() * 0.125
    assert volume == pytest.approx(np.pi / 6 * nodule.diameter_mm**3, rel=0.03)
    # scikit-image agrees on the centroid of the binary mask
    mask = np.zeros((axis.size,) * 3, dtype=np.uint8)
    mask[box] = occ >= 0.5
    centroid_kji = regionprops(mask)[0].centroid
    assert axis[0] + 0.5 * centroid_kji[2] == pytest.approx(0.3, abs=1.5)


def test_masses_on_request_and_the_same_draws_without():
    """``mass_fraction`` 1 turns every malignant lesion into a 30-60 mm mass, which still finds
    a place in the lungs; 0 leaves the stream untouched (cohorts keep their bytes)."""

    def key(nodules):
        return [(n.kind, n.malignant, n.r0, n.irregularity, n.hu) for n in nodules]

    for seed in range(20):
        default = key(draw_nodules(np.random.default_rng(seed), True))
        assert key(draw_nodules(np.random.default_rng(seed), True, 0.0)) == default
    diameters, placed = [], 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        a = draw_anatomy(rng)
        drafts = draw_nodules(rng, True, 1.0)
        masses = [n for n in drafts if n.malignant]
        diameters += [n.diameter_mm for n in masses]
        assert all(n.diameter_mm <= 8.0 for n in drafts if not n.malignant)
        lo, hi = _lung_box(a)
        found = place_nodules(rng, drafts, functools.partial(lung_labels, a), lo, hi)
        placed += sum(n.malignant for n in found)
    lo, hi = MASS_DIAMETER_MM
    assert all(lo - 1e-6 <= d <= hi + 1e-6 for d in diameters)
    assert max(diameters) > 50.0 and placed == len(diameters)


def test_nodules_are_placed_inside_the_lungs_and_juxtapleural_touch_the_wall():
    rng = np.random.default_rng(2)
    a = draw_anatomy(rng)
    lo, hi = _lung_box(a)
    fn = lambda x, y, z: lung_labels(a, x, y, z)  # noqa: E731
    placed = []
    for _ in range(6):
        placed += place_nodules(rng, draw_nodules(rng, True), fn, lo, hi)
    dirs = fibonacci_directions(200)
    for n in placed:
        c = np.asarray(n.centre)
        assert fn(*c) > 0
        surface = c + dirs * n.radius(dirs)[:, None]
        outside = np.mean(fn(surface[:, 0], surface[:, 1], surface[:, 2]) == 0)
        if n.kind == "juxtapleural":
            assert 0.03 < outside < 0.7
        else:
            assert outside == 0.0


def test_phantom_tissues_have_ct_numbers():
    rng = np.random.default_rng(4)
    a = draw_anatomy(rng)
    lo, hi = _lung_box(a)
    nodules = place_nodules(
        rng, draw_nodules(rng, True), lambda x, y, z: lung_labels(a, x, y, z), lo, hi
    )
    xs = np.arange(-200.0, 200.0, 2.5)
    zs = np.arange(lo[2] - 30, hi[2] + 20, 4.0)
    p = render_thorax(a, nodules, xs, xs, zs)
    assert p.hu.shape == p.lung.shape == p.nodules.shape == (zs.size, xs.size, xs.size)
    lung = p.lung > 0
    assert -900 <= np.median(p.hu[lung]) <= -780
    assert p.hu[0, 0, 0] == -1000.0  # air in the corner
    assert (p.hu > 600).sum() > 200  # cortical bone
    bx, by = a.body_centre
    i0, j0 = np.searchsorted(xs, bx), np.searchsorted(xs, by)
    # the fat layer under the skin on the anterior midline
    j_fat = np.searchsorted(xs, by - a.body_axes[1] + a.fat_mm / 2)
    assert -130 <= p.hu[zs.size // 2, j_fat, i0] <= -70
    assert p.hu[zs.size // 2, j0, i0] > -200  # mediastinum
    for n in nodules:
        assert (p.nodules == n.index).sum() >= 1
        malignant_hu = p.hu[p.nodules == n.index]
        assert malignant_hu.mean() > np.median(p.hu[lung]) + 200


def test_scanner_geometry_noise_and_orientation():
    rng = np.random.default_rng(6)
    a = draw_anatomy(rng)
    z0, z1 = a.lung_z_range
    common = dict(
        matrix=96,
        pixel_spacing=4.0,
        slice_spacing=6.0,
        centre_xy=a.body_centre,
        z_range=(z0 - 20, z1 + 20),
        noise_sd_hu=30.0,
        psf_sigma_mm=0.5,
    )
    hfs = acquire(
        a, [], SeriesPlan(**common, feet_first=False, head_to_feet=True), np.random.default_rng(0)
    )
    ffs = acquire(
        a,
        [],
        SeriesPlan(**common, feet_first=True, head_to_feet=False, outside_fov_hu=-2000.0),
        np.random.default_rng(0),
    )
    np.testing.assert_allclose(hfs.image.direction, np.diag([1.0, 1.0, -1.0]))
    np.testing.assert_allclose(ffs.image.direction, np.diag([-1.0, 1.0, 1.0]))
    # the label volumes are in reader order: k along row x column
    for acq in (hfs, ffs):
        d = acq.lung.direction
        np.testing.assert_allclose(d[:, 2], np.cross(d[:, 0], d[:, 1]))
    # the same patient point is the same tissue in both series
    point = np.array([a.lung_centre_x(-1), a.lung_centre_y, (z0 + z1) / 2])
    for acq in (hfs, ffs):
        for vol in (acq.lung, acq.image):
            kji = tuple(np.round(vol.patient_to_voxel(point)).astype(int))
            if vol is acq.lung:
                assert vol.array[kji] == 1
            else:
                assert vol.array[kji] < -600
    # noise in a uniform soft-tissue region (abdomen under the diaphragm)
    vol = hfs.image
    below = np.array([a.body_centre[0], a.body_centre[1] - 30.0, z0 - 15])
    k, j, i = np.round(vol.patient_to_voxel(below)).astype(int)
    patch = vol.array[k, j - 4 : j + 5, i - 4 : i + 5]
    assert patch.mean() == pytest.approx(35.0, abs=15.0)
    assert patch.std() == pytest.approx(30.0, rel=0.35)
    assert ffs.image.array[:, 0, 0].max() == -2000.0  # outside the reconstruction circle
    assert hfs.image.array.min() >= -1024.0


def test_a_classic_lung_segmentation_finds_the_lungs():
    """Threshold, drop air touching the border, keep big components: Dice with truth > 0.9."""
    from scipy import ndimage

    rng = np.random.default_rng(8)
    a = draw_anatomy(rng)
    z0, z1 = a.lung_z_range
    plan = SeriesPlan(
        matrix=128,
        pixel_spacing=3.0,
        slice_spacing=5.0,
        centre_xy=a.body_centre,
        z_range=(z0 - 25, z1 + 25),
        feet_first=False,
        head_to_feet=True,
        noise_sd_hu=35.0,
        psf_sigma_mm=0.5,
        outside_fov_hu=-2000.0,
    )
    acq = acquire(a, [], plan, np.random.default_rng(1))
    image = acq.image.array[::-1]  # reader order, as the masks (HFS: +z)
    air = ndimage.median_filter(image, size=(1, 3, 3)) < -400
    labels, n = ndimage.label(air)
    border = np.unique(
        np.concatenate(
            [
                labels[:, 0].ravel(),
                labels[:, -1].ravel(),
                labels[:, :, 0].ravel(),
                labels[:, :, -1].ravel(),
            ]
        )
    )
    sizes = ndimage.sum(air, labels, index=np.arange(1, n + 1))
    voxel_l = np.prod(acq.image.spacing) / 1e6
    keep = [k + 1 for k in range(n) if k + 1 not in border and sizes[k] * voxel_l > 0.2]
    seg = np.isin(labels, keep)
    truth = acq.lung.array > 0
    dice = 2 * (seg & truth).sum() / (seg.sum() + truth.sum())
    assert dice > 0.9, dice
