"""Step 5 (uint8, fill 170, bone band, crop) and the result type (coordinates, files)."""

from __future__ import annotations

import numpy as np
import pytest

from survfed.common.imaging.preprocess.config import PreprocessConfig
from survfed.common.imaging.preprocess.normalize import crop_box, normalize, to_uint8
from survfed.common.imaging.preprocess.result import PreprocessedScan, ScanFileError


def test_uint8_window_truncates_like_the_paper() -> None:
    hu = np.array([-2000, -1200, -1000, 0, 600, 3000, np.nan], dtype=np.float32)
    out = to_uint8(hu, (-1200.0, 600.0), nan_hu=-1000.0)
    # (hu + 1200) / 1800 * 255, truncated
    assert out.tolist() == [0, 0, 28, 170, 255, 255, 28]


def test_fill_and_bone_band() -> None:
    config = PreprocessConfig()
    hu = np.full((1, 1, 5), 600.0, dtype=np.float32)  # bright everywhere (255)
    hu[0, 0, 1] = -850.0  # lung tissue value inside the lung
    lungs = np.array([[[False, True, True, False, False]]])
    mask = np.array([[[False, True, True, True, False]]])
    out = normalize(hu, lungs, mask, config)
    # outside the mask: 170; in the lung: the value (even bone-bright); in the band: >210 -> 170
    assert out.tolist() == [[[170, 49, 255, 170, 170]]]
    hu[0, 0, 3] = 100.0  # soft tissue in the band stays (184 <= 210)
    assert normalize(hu, lungs, mask, config)[0, 0, 3] == 184


def test_crop_keeps_the_margin_and_clips() -> None:
    lungs = np.zeros((30, 40, 50), dtype=bool)
    lungs[10:20, 5:30, 20:48] = True
    start, stop = crop_box(lungs, 4)
    assert start == (6, 1, 16) and stop == (24, 34, 50)


def _scan() -> PreprocessedScan:
    rng = np.random.default_rng(0)
    shape = (7, 9, 11)
    labels = rng.integers(0, 3, shape).astype(np.uint8)
    return PreprocessedScan(
        image=rng.integers(0, 256, shape).astype(np.uint8),
        spacing_mm=(2.0, 2.0, 2.0),
        origin_mm=(-100.0, 20.0, -300.0),
        lung_labels=labels,
        mask=labels > 0,
        lung_fraction=rng.random(shape[0]).astype(np.float32),
        crop_offset=(3, 4, 5),
        resampled_shape=(20, 30, 40),
        warnings=("a note",),
        fingerprint="abc",
    )


def test_coordinates_map_both_ways() -> None:
    scan = _scan()
    assert scan.voxel_to_patient((0, 0, 0)).tolist() == [-100.0, 20.0, -300.0]
    assert scan.voxel_to_patient((1, 2, 3)).tolist() == [-94.0, 24.0, -298.0]
    xyz = np.array([[-94.0, 24.0, -298.0], [-80.5, 31.0, -290.0]])
    np.testing.assert_allclose(scan.voxel_to_patient(scan.patient_to_voxel(xyz)), xyz)
    assert scan.contains(np.array([[-94.0, 24.0, -298.0], [500.0, 0.0, 0.0]])).tolist() == [
        bool(scan.mask[1, 2, 3]),
        False,
    ]


def test_save_load_round_trip_and_damage(tmp_path) -> None:
    scan = _scan()
    path = tmp_path / "scan.npz"
    scan.save(path)
    back = PreprocessedScan.load(path)
    for name in ("image", "lung_labels", "mask", "lung_fraction"):
        np.testing.assert_array_equal(getattr(back, name), getattr(scan, name))
    assert (back.spacing_mm, back.origin_mm, back.crop_offset, back.resampled_shape) == (
        scan.spacing_mm,
        scan.origin_mm,
        scan.crop_offset,
        scan.resampled_shape,
    )
    assert back.warnings == ("a note",) and back.fingerprint == "abc"
    with np.load(path) as data:  # same layout, one voxel changed: the checksum catches it
        arrays = {k: data[k] for k in data.files}
    arrays["image"][0, 0, 0] ^= 1
    np.savez(path, **arrays)
    with pytest.raises(ScanFileError, match="checksum"):
        PreprocessedScan.load(path)
    scan.save(path)
    path.write_bytes(path.read_bytes()[:-200])  # truncated
    with pytest.raises(ScanFileError):
        PreprocessedScan.load(path)
    path.write_bytes(b"not a zip")
    with pytest.raises(ScanFileError, match="not a readable"):
        PreprocessedScan.load(path)
    with pytest.raises(ScanFileError, match="no such file"):
        PreprocessedScan.load(tmp_path / "missing.npz")


def test_result_checks_its_arrays() -> None:
    scan = _scan()
    with pytest.raises(ValueError, match="mask"):
        PreprocessedScan(**{**scan.__dict__, "mask": scan.mask[:-1]})
