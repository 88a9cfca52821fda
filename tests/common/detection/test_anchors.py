"""Tests for the anchor grid, cube IoU (MONAI) and the box coder."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.apps.detection.utils.box_coder import BoxCoder
from monai.data.box_utils import convert_box_mode

from survfed.common.detection.anchors import (
    anchor_grid,
    cube_iou,
    cubes_to_corners,
    decode_cubes,
    encode_cubes,
)


def test_grid_count_order_and_centres():
    grid = anchor_grid((2, 3, 4), (10.0, 30.0, 60.0), stride=4)
    assert grid.shape == (2 * 3 * 4 * 3, 4)
    view = grid.view(2, 3, 4, 3, 4)
    # output voxel (1, 2, 3), anchor 2: centre 4 * (i + 0.5) - 0.5, edge 60
    assert view[1, 2, 3, 2].tolist() == [5.5, 9.5, 13.5, 60.0]
    assert view[0, 0, 0, 0].tolist() == [1.5, 1.5, 1.5, 10.0]
    assert view[..., 3].unique().tolist() == [10.0, 30.0, 60.0]


def test_corners_via_monai():
    corners = cubes_to_corners(torch.tensor([[10.0, 20.0, 30.0, 4.0]]))
    assert corners.tolist() == [[8.0, 18.0, 28.0, 12.0, 22.0, 32.0]]


def test_cube_iou_by_hand():
    a = torch.tensor([[0.0, 0.0, 0.0, 2.0]])
    b = torch.tensor(
        [
            [0.0, 0.0, 0.0, 2.0],  # identical: 1
            [1.0, 0.0, 0.0, 2.0],  # shifted by half an edge: 4 / (8 + 8 - 4) = 1/3
            [1.0, 1.0, 1.0, 2.0],  # shifted on all axes: 1 / 15
            [0.0, 0.0, 0.0, 4.0],  # nested: 8 / 64
            [3.0, 0.0, 0.0, 2.0],  # disjoint: 0
        ]
    )
    iou = cube_iou(a, b)
    assert iou.shape == (1, 5)
    np.testing.assert_allclose(iou[0].numpy(), [1.0, 1 / 3, 1 / 15, 1 / 8, 0.0], atol=1e-6)
    assert cube_iou(a, torch.zeros((0, 4))).shape == (1, 0)


def test_coder_round_trip_and_hand_values():
    anchors = torch.tensor([[5.5, 9.5, 13.5, 10.0], [1.5, 1.5, 1.5, 30.0]])
    gt = torch.tensor([[7.5, 8.5, 13.5, 20.0], [1.5, 4.5, 0.0, 15.0]])
    d = encode_cubes(gt, anchors)
    np.testing.assert_allclose(
        d.numpy(),
        [[0.2, -0.1, 0.0, math.log(2.0)], [0.0, 0.1, -0.05, math.log(0.5)]],
        rtol=1e-6,
        atol=1e-7,
    )
    torch.testing.assert_close(decode_cubes(d, anchors), gt)
    # an untrained network's huge dr is clamped, never inf
    assert torch.isfinite(decode_cubes(torch.tensor([[0.0, 0.0, 0.0, 1e4]]), anchors[:1])).all()


def test_coder_matches_monai_boxcoder_for_cubes():
    rng = np.random.default_rng(0)
    anchors = torch.tensor(np.c_[rng.uniform(0, 100, (50, 3)), rng.uniform(5, 60, 50)])
    gt = torch.tensor(np.c_[rng.uniform(0, 100, (50, 3)), rng.uniform(3, 40, 50)])
    ours = encode_cubes(gt, anchors)

    def standard(c):
        return convert_box_mode(
            torch.cat([c[:, :3], c[:, 3:].expand(-1, 3)], 1), src_mode="cccwhd", dst_mode="xyzxyz"
        )

    coder = BoxCoder(weights=(1.0,) * 6)
    theirs = coder.encode_single(standard(gt), standard(anchors))
    torch.testing.assert_close(ours[:, :3], theirs[:, :3])
    for k in range(3, 6):  # MONAI's three size terms are all dr for cubes
        torch.testing.assert_close(ours[:, 3], theirs[:, k])
    back = coder.decode_single(theirs, standard(anchors))
    # MONAI decodes the sizes in float32
    torch.testing.assert_close(back, standard(decode_cubes(ours, anchors)), rtol=1e-5, atol=1e-5)


def test_shape_errors_name_arguments():
    with pytest.raises(ValueError, match="a must have shape"):
        cube_iou(torch.zeros(3), torch.zeros((1, 4)))
    with pytest.raises(ValueError, match="gt and anchors"):
        encode_cubes(torch.zeros((2, 4)), torch.zeros((3, 4)))
