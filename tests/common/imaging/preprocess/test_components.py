"""Step 2b: corner components, volume and distance criteria, top slices, FOV, hole filling."""

from __future__ import annotations

import numpy as np
import pytest

from survfed.common.imaging.preprocess.binarize import filter_slice_components, smooth_threshold
from survfed.common.imaging.preprocess.components import fill_holes_3d, select_lungs
from survfed.common.imaging.preprocess.config import PreprocessConfig, PreprocessError
from survfed.common.imaging.preprocess.resample import resample_hu

CONFIG = PreprocessConfig(spacing_mm=2.5)


def _air(volume):
    hu, _ = resample_hu(volume, CONFIG)
    air, measured = smooth_threshold(hu, CONFIG)
    return filter_slice_components(air, CONFIG), measured


def _truth_lungs(volume) -> np.ndarray:
    return (volume.array > -900) & (volume.array < -800)


def test_lungs_are_chosen_and_outside_air_is_not(chest) -> None:
    volume = chest()
    air, measured = _air(volume)
    found = select_lungs(air, CONFIG, valid=measured)
    lungs = _truth_lungs(volume)
    assert found.top_cut == 0 and found.n_components == 1  # joined by the airways
    assert found.volumes_l[0] == pytest.approx(3.8, abs=0.15)
    assert not found.mask[0, 0, 0] and not found.mask[:, :3].any()  # outside air dropped
    assert (found.mask & lungs).sum() / lungs.sum() > 0.97


def test_air_beyond_a_circular_fov_is_still_outside_air(chest) -> None:
    air, measured = _air(chest(fov_padding=-2000.0))
    assert measured is not None and not measured[0, 0, 0]
    found = select_lungs(air, CONFIG, valid=measured)
    assert found.n_components == 1 and found.volumes_l[0] == pytest.approx(3.8, abs=0.15)


def test_trachea_open_to_the_outside_air_is_cut_then_filled_back(chest) -> None:
    volume = chest(open_top=True)
    air, measured = _air(volume)
    found = select_lungs(air, CONFIG, valid=measured)
    top = air.shape[0] - 1
    # the smallest cut that separates the trachea from the air above the body (z >= 130 mm)
    assert found.top_cut == top + 1 - round((130.0 + 160.0) / 2.5)
    # the trachea reaches the top slice again, but not the outside air around it
    assert found.mask[top - found.top_cut : top + 1].any()
    assert not found.mask[top, 0, 0] and not found.mask[top, :5].any()
    closed = select_lungs(*_air(chest())[:1], CONFIG).mask
    below = top + 1 - found.top_cut
    np.testing.assert_array_equal(found.mask[:below], closed[:below])
    # added back: the trachea, plus (as the paper's code) air above the body within
    # ``top_cut`` voxels of it; nothing inside the body (which ends below z = 130 mm)
    extra = found.mask & ~closed
    body_top = round((130.0 + 160.0) / 2.5)  # first slice above the body
    assert extra.any() and not extra[:body_top].any()
    assert (closed[below:] <= found.mask[below:]).all()


def test_no_lungs_is_a_clear_error(chest) -> None:
    air, measured = _air(chest(lungs=False))
    with pytest.raises(PreprocessError, match="no lung found") as info:
        select_lungs(air, CONFIG, valid=measured)
    assert "field of view" not in str(info.value)  # the phantom's is wide enough


def test_component_far_from_the_centre_is_dropped() -> None:
    air = np.zeros((40, 200, 200), dtype=bool)
    air[:, 90:110, 20:60] = True  # 40 slices x 800 px x (2.5 mm)^3 = 0.5 L: too small
    air[:, 70:130, 140:190] = True  # 1.9 L, 7500 mm² slices, centre 164 mm off the middle
    with pytest.raises(
        PreprocessError, match=r"largest air component inside the body 1\.88 L"
    ) as info:
        select_lungs(air, CONFIG)
    # the distance rule alone dropped it: its nearest voxel is 40.5 voxels (101 mm) from the
    # middle on every slice
    assert str(info.value).endswith(
        "; air of lung size lies 101 mm from the image centre on average (the limit is 62 mm): "
        "is the patient far off the centre of the field of view?"
    )
    air[:, 70:130, 100:150] = True  # now touching the centre: kept
    assert select_lungs(air, CONFIG).n_components == 1


def test_fill_holes_3d_fills_enclosed_background_only() -> None:
    mask = np.zeros((12, 12, 12), dtype=bool)
    mask[2:10, 2:10, 2:10] = True
    mask[4:6, 4:6, 4:6] = False  # enclosed cavity
    mask[5:7, 5:7, 9] = False  # notch open to the outside
    out = fill_holes_3d(mask)
    assert out[4:6, 4:6, 4:6].all() and not out[5:7, 5:7, 9].any()
