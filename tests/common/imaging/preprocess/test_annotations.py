"""Annotated nodules against the final mask, on the analytic chest phantom."""

from __future__ import annotations

import numpy as np
import pytest

from survfed.common.imaging.preprocess import PreprocessConfig, preprocess_volume
from survfed.common.imaging.preprocess.annotations import (
    MIN_SHARE_INSIDE,
    annotation_warnings,
    share_inside,
)


@pytest.fixture(scope="module")
def scan(request):
    chest = request.getfixturevalue("chest")
    return preprocess_volume(chest(), PreprocessConfig(spacing_mm=2.5), device="cpu")


def _voxel_share(scan, centre: np.ndarray, diameter: float) -> float:
    """The same share counted on the scan's own voxels: mask voxels whose centres lie within
    the sphere, over the sphere's volume in voxels (the crop may hold only part of it)."""
    k, j, i = np.indices(scan.shape).reshape(3, -1)
    xyz = np.asarray(scan.origin_mm) + np.stack([i, j, k], axis=1) * np.asarray(scan.spacing_mm)
    inside_sphere = np.linalg.norm(xyz - centre, axis=1) <= diameter / 2.0
    sphere_voxels = np.pi / 6.0 * diameter**3 / float(np.prod(scan.spacing_mm))
    return float(np.count_nonzero(scan.mask.reshape(-1)[inside_sphere])) / sphere_voxels


def test_share_agrees_with_a_voxel_count(scan) -> None:
    """Spheres in a lung, across the mask's edge and outside the body: the sampled share is
    the share of the scan's voxels within the sphere that are in the mask, within 0.05."""
    cases = {
        "in the right lung": (np.array([-70.0, -5.0, 0.0]), 20.0),
        "across the lateral edge": (np.array([-140.0, -5.0, 0.0]), 40.0),
        "across the back": (np.array([-70.0, -88.0, 30.0]), 50.0),
        "outside the body": (np.array([0.0, 140.0, 0.0]), 10.0),
    }
    shares = {}
    for name, (centre, diameter) in cases.items():
        shares[name] = share_inside(scan, centre, diameter)
        assert shares[name] == pytest.approx(_voxel_share(scan, centre, diameter), abs=0.05), name
    assert shares["in the right lung"] == 1.0 and shares["outside the body"] == 0.0
    assert 0.1 < shares["across the lateral edge"] < 0.9
    assert 0.1 < shares["across the back"] < 0.9


def test_warnings_name_the_erased_nodules(scan) -> None:
    nodules = np.array(
        [
            [-70.0, -5.0, 0.0, 20.0],  # inside: no warning
            [70.0, -5.0, 60.0, 8.0],  # inside the left lung: no warning
            [-140.0, -5.0, 0.0, 40.0],  # centre beyond the mask's lateral edge
            [0.0, 140.0, 0.0, 10.0],  # in the air in front of the body
        ]
    )
    notes = annotation_warnings(scan, nodules)
    assert len(notes) == 2
    assert notes[0].startswith("annotated nodule at (-140.0, -5.0, 0.0) mm, 40.0 mm: its centre")
    assert notes[1].startswith("annotated nodule at (0.0, 140.0, 0.0) mm, 10.0 mm: its centre")
    assert ", 0% of it inside;" in notes[1]
    assert annotation_warnings(scan, np.zeros((0, 4))) == []
    # centre inside, but most of the sphere outside: warned as partly outside
    xs = np.arange(-160.0, -100.0, 1.0)
    x = xs[scan.contains(np.stack([xs, 0 * xs - 5.0, 0 * xs], axis=1))].min()  # at the edge
    share = share_inside(scan, np.array([x, -5.0, 0.0]), 60.0)
    assert share < MIN_SHARE_INSIDE
    (note,) = annotation_warnings(scan, np.array([[x, -5.0, 0.0, 60.0]]))
    assert ": partly outside, " in note
