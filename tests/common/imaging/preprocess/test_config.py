"""PreprocessConfig: the paper's defaults, mm → voxel conversions, validation, fingerprint."""

from __future__ import annotations

import pytest

from survfed.common.imaging.preprocess import config as config_module
from survfed.common.imaging.preprocess.config import PreprocessConfig


def test_defaults_are_the_papers_thresholds() -> None:
    c = PreprocessConfig()
    assert (c.threshold_hu, c.min_area_mm2, c.max_eccentricity) == (-600.0, 30.0, 0.99)
    assert (c.min_volume_l, c.max_volume_l) == (0.68, 7.5)
    assert (c.min_slice_area_mm2, c.max_mean_distance_mm) == (6000.0, 62.0)
    assert (c.max_hull_ratio, c.hu_window, c.pad_value, c.bone_threshold) == (
        1.5,
        (-1200.0, 600.0),
        170,
        210,
    )
    # 1 mm grid: the paper's voxel counts
    assert (c.sigma_vox, c.dilation_vox, c.margin_vox, c.max_erosion_vox) == (1.0, 10, 10, 22)
    assert c.top_cut_step_vox == 2


def test_voxel_counts_follow_the_grid() -> None:
    c = PreprocessConfig(spacing_mm=2.5)
    assert c.sigma_vox == pytest.approx(0.4)
    assert (c.dilation_vox, c.margin_vox, c.max_erosion_vox, c.top_cut_step_vox) == (4, 4, 9, 1)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"spacing_mm": 0}, "spacing_mm"),
        ({"max_volume_l": 0.5}, "max_volume_l"),
        ({"max_eccentricity": 1.5}, "max_eccentricity"),
        ({"pad_value": 300}, "pad_value"),
        ({"hu_window": (600, -1200)}, "hu_window"),
        ({"sigma_mm": float("nan")}, "sigma_mm"),
        ({"dilation_mm": "10"}, "dilation_mm"),
    ],
)
def test_bad_settings_name_the_argument(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        PreprocessConfig(**kwargs)


def test_fingerprint_covers_settings_and_pipeline_version(monkeypatch) -> None:
    base = PreprocessConfig()
    assert base.fingerprint() == PreprocessConfig().fingerprint()
    assert len(base.fingerprint()) == 16
    assert PreprocessConfig(spacing_mm=1.5).fingerprint() != base.fingerprint()
    assert PreprocessConfig(threshold_hu=-601).fingerprint() != base.fingerprint()
    before = base.fingerprint()
    monkeypatch.setattr(config_module, "PIPELINE_VERSION", config_module.PIPELINE_VERSION + 1)
    assert base.fingerprint() != before
