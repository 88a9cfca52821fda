"""Tests for DetectorConfig and the CPU preset."""

from __future__ import annotations

import json

import pytest

from survfed.common.detection.config import DetectorConfig, cpu_preset


def test_defaults_are_the_papers():
    cfg = DetectorConfig()
    assert (cfg.width, cfg.patch_size, cfg.spacing_mm) == (24, 128, 1.0)
    assert cfg.anchors_mm == (10.0, 30.0, 60.0) and cfg.anchors_vox == (10.0, 30.0, 60.0)
    assert (cfg.iou_positive, cfg.iou_negative, cfg.positive_fraction) == (0.5, 0.02, 0.7)
    assert (cfg.tile_size, cfg.tile_overlap, cfg.top_k, cfg.crop_size) == (208, 32, 5, 96)
    assert cfg.output_size == 32 and cfg.num_anchors == 3


def test_round_trip_through_json():
    cfg = cpu_preset(anchors_mm=(12, 24), oversample=((40, 6), (30, 2)))
    back = DetectorConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    assert back.oversample == ((30.0, 2.0), (40.0, 6.0))  # sorted


def test_cpu_preset_scales_anchors_with_spacing():
    cfg = cpu_preset()
    assert cfg.spacing_mm == 2.5 and cfg.anchors_vox == (4.0, 12.0, 24.0)
    assert (cfg.num_hard, cfg.positive_fallback, cfg.loss_weighting) == (16, True, "balanced")
    assert cpu_preset(width=4).width == 4


def test_nodule_weight_uses_largest_threshold():
    cfg = DetectorConfig()
    assert [cfg.nodule_weight(d) for d in (10, 30, 30.5, 40, 41)] == [1, 1, 2, 2, 6]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"patch_size": 100}, "patch_size"),
        ({"tile_overlap": 24}, "tile_overlap"),
        ({"tile_overlap": 208}, "tile_overlap"),
        ({"stride": 2}, "stride"),
        ({"iou_negative": 0.6}, "iou_negative"),
        ({"anchors_mm": ()}, "anchors_mm"),
        ({"norm": "batch"}, "norm"),
        ({"loss_weighting": "mean"}, "loss_weighting"),
        ({"num_hard": 900}, "num_hard"),
        ({"nodule_margin_vox": 64}, "nodule_margin_vox"),
        ({"resize_range": (1.2, 0.8)}, "resize_range"),
        ({"width": True}, "width"),
        ({"crop_size": 40}, "crop_size"),
        ({"spacing_mm": 0}, "spacing_mm"),
    ],
)
def test_invalid_values_name_the_field(change, field):
    with pytest.raises(ValueError, match=field):
        DetectorConfig(**change)


def test_unknown_keys_are_errors():
    with pytest.raises(ValueError, match="unknown detector config keys"):
        DetectorConfig.from_dict({"widht": 8})
