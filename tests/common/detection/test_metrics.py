"""Tests for FROC, CPM and top-k recall."""

from __future__ import annotations

import numpy as np
import pytest

from survfed.common.detection.metrics import FP_RATES, SizeBin, detection_metrics, recall_by_size

# scan A: N1 (d 8) found twice, N2 (d 6) missed by a proposal exactly on its surface,
# N3 (d 2) small; scan B: N4 (d 10) found with a low confidence
NODULES = [
    np.array([[10, 10, 10, 8], [30, 30, 30, 6], [50, 50, 50, 2]], dtype=float),
    np.array([[20, 20, 20, 10]], dtype=float),
]
PROPOSALS = [
    np.array(
        [
            [10, 10, 11, 8, 0.9],  # hits N1
            [10, 12, 10, 8, 0.6],  # hits N1 again: counted once
            [40, 40, 40, 8, 0.8],  # false positive
            [50, 50, 50.5, 2, 0.7],  # hits the small N3 only
            [30, 30, 33, 6, 0.5],  # on N2's surface: not strictly inside → false positive
        ]
    ),
    np.array([[0, 0, 0, 5, 0.95], [20, 20, 22, 9, 0.4], [60, 60, 60, 5, 0.3]]),
]


def test_hand_example_froc_cpm_and_recall():
    m = detection_metrics(PROPOSALS, NODULES, min_diameter=3.0)
    assert (m.n_scans, m.n_nodules, m.n_excluded, m.n_proposals) == (2, 3, 1, 8)
    # operating points (FPs per scan, sensitivity): t=0.95 (0.5, 0), 0.9 (0.5, 1/3),
    # 0.8 (1, 1/3), 0.5 (1.5, 1/3), 0.4 (1.5, 2/3), 0.3 (2, 2/3)
    expected = {0.125: 0.0, 0.25: 0.0, 0.5: 1 / 3, 1.0: 1 / 3, 2.0: 2 / 3, 4.0: 2 / 3, 8.0: 2 / 3}
    assert m.sensitivities == pytest.approx(expected)
    assert m.cpm == pytest.approx(8 / 21)
    assert m.recall_top_k == pytest.approx(2 / 3) and m.max_sensitivity == pytest.approx(2 / 3)
    assert detection_metrics(PROPOSALS, NODULES, min_diameter=3.0, k=1).recall_top_k == (
        pytest.approx(1 / 3)
    )
    d = m.to_dict()
    assert d["sens@0.125"] == 0 and d["cpm"] == pytest.approx(8 / 21)


def test_recall_by_size_counts_each_nodule_in_its_bin():
    bins = recall_by_size(PROPOSALS, NODULES, [0, 3, 9])
    # N3 (d 2) hit at rank 3; N1 (8) hit first, N2 (6) missed; N4 (10) hit at rank 2
    assert bins == [SizeBin(0, 3, 1, 1, 1), SizeBin(3, 9, 2, 1, 1), SizeBin(9, np.inf, 1, 1, 1)]
    top1 = recall_by_size(PROPOSALS, NODULES, [0, 3, 9], k=1)
    assert [(b.top_k, b.any) for b in top1] == [(0, 1), (1, 1), (0, 1)]
    # nodules below the first edge are not counted; an empty bin stays
    assert recall_by_size(PROPOSALS, NODULES, [5, 20]) == [
        SizeBin(5, 20, 3, 2, 2),
        SizeBin(20, np.inf, 0, 0, 0),
    ]
    assert SizeBin(20, np.inf, 0, 0, 0).to_dict()["high"] is None
    with pytest.raises(ValueError, match="edges"):
        recall_by_size(PROPOSALS, NODULES, [3, 3])
    with pytest.raises(ValueError, match="same scans"):
        recall_by_size(PROPOSALS[:1], NODULES, [0])


def test_small_nodules_count_when_not_excluded():
    m = detection_metrics(PROPOSALS, NODULES)
    assert m.n_nodules == 4 and m.n_excluded == 0
    assert m.max_sensitivity == pytest.approx(3 / 4)  # N3 is now a hit (0.7)
    # p4 is now a true positive rather than ignored: at t = 0.7 there are 2 FPs (0.95, 0.8)
    assert m.sensitivities[1.0] == pytest.approx(2 / 4)


def test_no_real_point_is_lost_when_everything_is_found():
    # every nodule is found, the last one at the lowest confidence of all: MONAI's sweep skips
    # the smallest value, which must be the sentinel 0, not this real operating point
    nodules = [np.array([[10, 10, 10, 6.0]]), np.array([[5, 5, 5, 6.0]])]
    props = [np.array([[10, 10, 10, 6, 0.9], [40, 0, 0, 6, 0.5]]), np.array([[5, 5, 6, 6, 0.1]])]
    m = detection_metrics(props, nodules)
    assert m.sensitivities[0.5] == pytest.approx(1.0)
    assert m.sensitivities[0.25] == pytest.approx(0.5)
    assert m.max_sensitivity == 1.0


def test_curve_points_match_brute_force_counting():
    rng = np.random.default_rng(0)
    nodules = [np.c_[rng.uniform(0, 60, (4, 3)), rng.uniform(4, 12, 4)] for _ in range(5)]
    props = []
    for n in nodules:
        near = n[:, :3] + rng.normal(0, 2.5, (4, 3))
        far = rng.uniform(0, 60, (6, 3))
        xyz = np.r_[near, far]
        props.append(np.c_[xyz, np.full(10, 6.0), rng.uniform(0.01, 1, 10)])
    m = detection_metrics(props, nodules)
    for t_fps, t_sens in zip(m.fps_per_scan, m.sensitivity, strict=True):
        # find a threshold giving this point and count by hand
        found = False
        for t in sorted({p for pr in props for p in pr[:, 4]} | {1.1}):
            fps, hit = 0, 0
            for pr, nod in zip(props, nodules, strict=True):
                keep = pr[pr[:, 4] >= t]
                d = np.linalg.norm(keep[:, None, :3] - nod[None, :, :3], axis=-1)
                h = d < nod[None, :, 3] / 2
                fps += int((~h.any(1)).sum())
                hit += int(h.any(0).sum())
            if fps / 5 == pytest.approx(t_fps) and hit / 20 == pytest.approx(t_sens):
                found = True
                break
        assert found, (t_fps, t_sens)


def test_empty_cohorts_and_checks():
    m = detection_metrics([np.zeros((0, 5))], [np.zeros((0, 4))])
    assert np.isnan(m.cpm) and m.n_nodules == 0
    m = detection_metrics([np.zeros((0, 5))], [np.array([[1, 1, 1, 5.0]])])
    assert m.cpm == 0 and m.recall_top_k == 0
    assert set(m.sensitivities) == set(FP_RATES)
    with pytest.raises(ValueError, match="same scans"):
        detection_metrics([np.zeros((0, 5))], [])
    with pytest.raises(ValueError, match=r"proposals\[0\]"):
        detection_metrics([np.zeros((1, 4))], [np.zeros((0, 4))])
    with pytest.raises(ValueError, match="confidences"):
        detection_metrics([np.array([[1, 1, 1, 1, -0.1]])], [np.zeros((0, 4))])
