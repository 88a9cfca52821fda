"""Random flips and axial quarter turns of crops (checked against MONAI's Flip/Rotate90)."""

from __future__ import annotations

import itertools

import pytest
import torch
from monai.transforms import Flip, Rotate90

from survfed.common.imaging.augment import random_flip_rotate


def _variants(crop: torch.Tensor) -> list[torch.Tensor]:
    """All 32 results of flips on (z, y, x) then a quarter turn in (y, x), made with MONAI."""
    out = []
    for flips in itertools.product((False, True), repeat=3):
        x = crop
        for axis, on in enumerate(flips):
            if on:
                x = Flip(spatial_axis=axis)(x)
        for k in range(4):
            out.append(torch.as_tensor(Rotate90(k=k, spatial_axes=(1, 2))(x)))
    return out


def test_every_crop_is_a_monai_flip_rotation_of_itself() -> None:
    torch.manual_seed(0)
    crops = torch.rand(3, 4, 1, 6, 6, 6)
    out = random_flip_rotate(crops, torch.Generator().manual_seed(1))
    assert out.shape == crops.shape and out.dtype == crops.dtype
    for b, k in itertools.product(range(3), range(4)):
        assert any(torch.equal(out[b, k], v) for v in _variants(crops[b, k]))
    assert not torch.equal(out, crops)  # something moved
    assert torch.equal(crops, crops.clone())  # input untouched


def test_seeded_and_varied() -> None:
    crops = torch.rand(64, 1, 1, 5, 5, 5)
    a = random_flip_rotate(crops, torch.Generator().manual_seed(7))
    b = random_flip_rotate(crops, torch.Generator().manual_seed(7))
    c = random_flip_rotate(crops, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    changed = sum(not torch.equal(a[i], crops[i]) for i in range(64))
    assert changed > 50  # 2 of the 32 flip/turn draws are the identity


def test_rejects_non_square_planes() -> None:
    with pytest.raises(ValueError, match="crops"):
        random_flip_rotate(torch.zeros(2, 1, 4, 4, 5), torch.Generator())
