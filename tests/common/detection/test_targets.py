"""Tests for anchor labels and regression targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from survfed.common.detection.anchors import anchor_grid, cube_iou, decode_cubes
from survfed.common.detection.config import DetectorConfig
from survfed.common.detection.targets import IGNORE, NEGATIVE, POSITIVE, make_targets

P = 32
CFG = DetectorConfig(
    patch_size=P, nodule_margin_vox=4, spacing_mm=1.0, anchors_mm=(4, 12), min_diameter_mm=0.0
)


def _rng(seed=0):
    return np.random.default_rng(seed)


def test_no_nodule_means_every_anchor_negative():
    t = make_targets(np.zeros((0, 4)), (P, P, P), CFG, _rng())
    assert t["labels"].shape == (8, 8, 8, 2) and t["deltas"].shape == (8, 8, 8, 2, 4)
    assert (t["labels"] == NEGATIVE).all() and (t["deltas"] == 0).all()


def test_exactly_one_positive_per_nodule_and_counts_by_hand():
    # a 12-voxel nodule centred on the anchor of output voxel (3, 3, 3): centre 13.5
    nodule = np.array([[13.5, 13.5, 13.5, 12.0]])
    t = make_targets(nodule, (P, P, P), CFG, _rng())
    labels = t["labels"]
    assert int((labels == POSITIVE).sum()) == 1
    anchors = anchor_grid((8, 8, 8), (4.0, 12.0)).view(8, 8, 8, 2, 4)
    iou = cube_iou(anchors.reshape(-1, 4), torch.tensor(nodule)).view(8, 8, 8, 2)
    # only the 12-voxel anchor of voxel (3, 3, 3) has IoU > 0.5: its neighbours are 4 voxels
    # off on one axis, IoU = 8·12·12 / (2·12³ − 8·12·12) = 0.5, not above
    assert int((iou > 0.5).sum()) == 1 and bool(labels[3, 3, 3, 1] == POSITIVE)
    # not negative = IoU >= 0.02 with the nodule; everything else is negative
    assert int((labels == IGNORE).sum()) == int((iou >= 0.02).sum()) - 1
    assert int((labels == NEGATIVE).sum()) == int((iou < 0.02).sum())
    # its target decodes back to the nodule
    pos = labels == POSITIVE
    back = decode_cubes(t["deltas"][pos], anchors[pos])
    np.testing.assert_allclose(back.numpy(), nodule, atol=1e-5)


def test_positive_is_drawn_at_random_among_candidates():
    nodule = np.array([[15.5, 15.5, 15.5, 12.0]])  # between anchors: 8 candidates
    cfg = CFG.replace(iou_positive=0.3)
    picks = set()
    for seed in range(20):
        labels = make_targets(nodule, (P, P, P), cfg, _rng(seed))["labels"]
        assert int((labels == POSITIVE).sum()) == 1
        picks.add(tuple(int(v) for v in (labels == POSITIVE).nonzero()[0]))
    assert len(picks) > 3  # not always the same anchor


def test_several_nodules_each_get_one():
    nodules = np.array([[5.5, 5.5, 5.5, 4.0], [21.5, 13.5, 13.5, 12.0], [25.5, 25.5, 9.5, 4.0]])
    labels = make_targets(nodules, (P, P, P), CFG, _rng())["labels"]
    assert int((labels == POSITIVE).sum()) == 3


def test_nodule_with_centre_outside_patch_is_only_ignored():
    nodule = np.array([[-2.0, 13.5, 13.5, 12.0]])  # centre outside, half of it inside
    labels = make_targets(nodule, (P, P, P), CFG, _rng())["labels"]
    assert int((labels == POSITIVE).sum()) == 0
    assert int((labels == IGNORE).sum()) > 0
    assert bool((labels[0, 3, 3] == IGNORE).all())  # the anchors it overlaps are not negatives
    # a nodule cut by the border but centred inside still gets its positive
    nodule = np.array([[1.5, 13.5, 13.5, 12.0]])
    labels = make_targets(nodule, (P, P, P), CFG.replace(iou_positive=0.3), _rng())["labels"]
    assert int((labels == POSITIVE).sum()) == 1


def test_fallback_takes_the_best_anchor():
    nodule = np.array([[15.5, 15.5, 15.5, 7.0]])  # between sizes and anchors: no IoU > 0.5
    assert int((make_targets(nodule, (P, P, P), CFG, _rng())["labels"] == POSITIVE).sum()) == 0
    cfg = CFG.replace(positive_fallback=True)
    labels = make_targets(nodule, (P, P, P), cfg, _rng())["labels"]
    assert int((labels == POSITIVE).sum()) == 1
    anchors = anchor_grid((8, 8, 8), (4.0, 12.0))
    iou = cube_iou(anchors, torch.tensor(nodule))[:, 0]
    assert float(iou[labels.flatten() == POSITIVE]) == pytest.approx(float(iou.max()))


def test_input_checks():
    with pytest.raises(ValueError, match="patch_shape"):
        make_targets(np.zeros((0, 4)), (30, 32, 32), CFG, _rng())
    with pytest.raises(ValueError, match="nodules"):
        make_targets(np.zeros((1, 3)), (P, P, P), CFG, _rng())
    with pytest.raises(TypeError, match="rng"):
        make_targets(np.zeros((0, 4)), (P, P, P), CFG, 0)


def test_nodules_below_the_minimum_diameter_are_ignored_not_negative():
    """Seed 003 trains on nodules >= 6 mm: a smaller one gets no positive, and the anchors it
    overlaps are ignored rather than taught as background."""
    cfg = CFG.replace(min_diameter_mm=6.0, positive_fallback=True)  # 1 mm grid: 5 voxels = 5 mm
    small = np.array([[16.0, 16.0, 16.0, 5.0]])
    labels = make_targets(small, (P, P, P), cfg, _rng())["labels"]
    assert int((labels == POSITIVE).sum()) == 0
    assert int((labels == IGNORE).sum()) > 0
    big = np.array([[16.0, 16.0, 16.0, 8.0]])
    assert int((make_targets(big, (P, P, P), cfg, _rng())["labels"] == POSITIVE).sum()) == 1
