"""Tests for the training patch sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from survfed.common.detection.config import cpu_preset
from survfed.common.detection.sampling import PatchSampler, extract_block
from survfed.common.detection.scan import PAD_VALUE, DetectionScan
from survfed.common.detection.targets import POSITIVE

CFG = cpu_preset(patch_size=32, nodule_margin_vox=6, anchors_mm=(10.0, 25.0), spacing_mm=2.5)


def test_extract_block_pads_with_170():
    image = np.arange(27, dtype=np.uint8).reshape(3, 3, 3)
    block = extract_block(image, (-1, 1, 2), (3, 3, 3))
    assert block.shape == (3, 3, 3)
    assert (block[0] == PAD_VALUE).all() and (block[:, 2:] == PAD_VALUE).all()
    assert block[1, 0, 0] == image[0, 1, 2] and block[2, 1, 0] == image[1, 2, 2]
    assert (extract_block(image, (5, 5, 5), (2, 2, 2)) == PAD_VALUE).all()


def test_items_are_deterministic_and_depend_on_the_epoch(sphere_scan):
    scan = sphere_scan((40, 48, 48), [(20, 24, 24, 8)])
    sampler = PatchSampler([scan], CFG, seed=3, samples_per_epoch=6)
    first = [sampler[i]["patch"] for i in range(6)]
    again = PatchSampler([scan], CFG, seed=3, samples_per_epoch=6)
    assert all(torch.equal(a, again[i]["patch"]) for i, a in enumerate(first))
    sampler.set_epoch(1)
    assert not all(torch.equal(a, sampler[i]["patch"]) for i, a in enumerate(first))
    item = sampler[0]
    assert item["patch"].shape == (1, 32, 32, 32) and item["patch"].dtype == torch.float32
    assert item["coord"].shape == (3, 8, 8, 8) and item["labels"].shape == (8, 8, 8, 2)
    assert item["deltas"].shape == (8, 8, 8, 2, 4)


def test_nodule_patches_keep_the_margin_and_show_the_nodule(sphere_scan):
    scan = sphere_scan((40, 48, 48), [(12, 30, 20, 8)])
    cfg = CFG.replace(positive_fraction=1.0)
    sampler = PatchSampler([scan], cfg, seed=0, samples_per_epoch=40)
    for i in range(40):
        s = sampler.sample(i)
        assert s.positive and len(s.nodules) == 1
        c = s.nodules[0]
        assert ((c[:3] >= 6 - 1e-9) & (c[:3] <= 32 - 1 - 6 + 1e-9)).all(), c
        assert 0.8 <= s.scale <= 1.15 and c[3] == pytest.approx(8 * s.scale)
        # the (flipped, zoomed) patch is bright at the mapped centre: grey 200 → 0.5625
        z, y, x = np.round(c[:3]).astype(int)
        assert float(s.patch[0, z, y, x]) > 0.5
        # and the location crop holds the scan coordinate of the nodule there
        a = np.clip(np.floor(c[:3] / 4).astype(int), 0, 7)
        coord = s.coord[:, a[0], a[1], a[2]].numpy()
        scan_pos = (coord + 1) / 2 * (np.array(scan.shape) - 1)
        assert np.abs(scan_pos - scan.nodules[0, :3]).max() < 4 / s.scale + 1


def test_flips_and_zooms_occur_without_augment_they_do_not(sphere_scan):
    scan = sphere_scan((40, 48, 48), [(20, 24, 24, 8)])
    sampler = PatchSampler([scan], CFG, seed=0, samples_per_epoch=30)
    samples = [sampler.sample(i) for i in range(30)]
    assert {s.flipped for s in samples} == {
        (False, False),
        (True, False),
        (False, True),
        (True, True),
    }
    assert len({round(s.scale, 4) for s in samples}) > 3
    plain = PatchSampler([scan], CFG, seed=0, samples_per_epoch=10, augment=False)
    assert all(
        plain.sample(i).scale == 1.0 and plain.sample(i).flipped == (False, False)
        for i in range(10)
    )


def test_positive_fraction_and_random_patches(sphere_scan):
    scan = sphere_scan((40, 48, 48), [(20, 24, 24, 8)])
    sampler = PatchSampler([scan], CFG, seed=0, samples_per_epoch=400, augment=False)
    share = np.mean([sampler.sample(i).positive for i in range(400)])
    assert 0.63 < share < 0.77
    empty = DetectionScan(image=np.full((20, 20, 20), 40, dtype=np.uint8))
    neg = PatchSampler([empty], CFG, seed=0)
    assert len(neg) == 1 and not neg.sample(0).positive
    s = neg.sample(0)
    # the 32³ patch overhangs the 20³ scan: padding is 170 → (170 − 128) / 128
    assert float(s.patch.max()) == pytest.approx((PAD_VALUE - 128) / 128)
    assert int((s.labels == POSITIVE).sum()) == 0


def test_big_nodules_are_oversampled(sphere_scan):
    # 4 voxels = 10 mm, 14 voxels = 35 mm (×2), 18 voxels = 45 mm (×6)
    scan = sphere_scan((60, 60, 60), [(15, 15, 15, 4), (30, 40, 40, 14), (40, 15, 40, 18)])
    cfg = CFG.replace(positive_fraction=1.0)
    sampler = PatchSampler([scan], cfg, seed=0, samples_per_epoch=900, augment=False)
    counts = np.zeros(3)
    for i in range(900):
        s = sampler.sample(i)
        centre = np.asarray(s.start) + 16  # every sampled centre lies within 10 of the middle
        counts[np.argmin(np.linalg.norm(scan.nodules[:, :3] - centre, axis=1))] += 1
    np.testing.assert_allclose(counts / counts.sum(), np.array([1, 2, 6]) / 9, atol=0.04)
    assert len(PatchSampler([scan], cfg)) == 9  # default epoch: total weight / 1.0


def test_input_checks(sphere_scan):
    scan = sphere_scan((20, 20, 20), [])
    with pytest.raises(ValueError, match="scans"):
        PatchSampler([], CFG)
    with pytest.raises(TypeError, match=r"scans\[0\]"):
        PatchSampler([np.zeros((4, 4, 4))], CFG)
    with pytest.raises(ValueError, match="samples_per_epoch"):
        PatchSampler([scan], CFG, samples_per_epoch=0)
    with pytest.raises(IndexError):
        PatchSampler([scan], CFG).sample(5)
    with pytest.raises(ValueError, match="uint8"):
        DetectionScan(image=np.zeros((4, 4, 4)))
    with pytest.raises(ValueError, match="diameters"):
        DetectionScan(image=np.zeros((4, 4, 4), np.uint8), nodules=[[1, 1, 1, 0]])
