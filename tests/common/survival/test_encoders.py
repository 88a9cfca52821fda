"""Tests for the 3D crop encoders."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from survfed.common.survival.encoders import ENCODER_NAMES, build_encoder, count_parameters

# Expected sizes, counted by hand from the layer lists (3D kernels, GroupNorm affine = 2/channel).
_VGG_CONV = [(1, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256)]
_VGG_CONV += [(256, 512)] + [(512, 512)] * 5


def _conv_gn(cin: int, cout: int, k: int = 3) -> int:
    return cin * cout * k**3 + cout + 2 * cout


def _fc(cin: int, cout: int) -> int:
    return cin * cout + cout


EXPECTED = {
    "vgg16": sum(_conv_gn(a, b) for a, b in _VGG_CONV)
    + _fc(13824, 4096)
    + _fc(4096, 4096)
    + _fc(4096, 128),
    "alexnet": _conv_gn(1, 96, 5)
    + _conv_gn(96, 256)
    + _conv_gn(256, 384)
    + _conv_gn(384, 256)
    + _fc(16384, 4096)
    + _fc(4096, 128),
    "small": _conv_gn(1, 16)
    + _conv_gn(16, 32)
    + _conv_gn(32, 64)
    + _conv_gn(64, 64)
    + _fc(64, 128),
}


@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_output_shape_and_finite(name):
    torch.manual_seed(0)
    enc = build_encoder(name, crop_size=16)
    x = torch.rand(3, 1, 16, 16, 16)
    y = enc(x)
    assert y.shape == (3, 128)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    grads = [p.grad for p in enc.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ["small", "alexnet"])
def test_crop_size_32_and_other_feature_dims(name):
    enc = build_encoder(name, feature_dim=64, crop_size=32, in_channels=2)
    assert enc(torch.rand(1, 2, 32, 32, 32)).shape == (1, 64)


def test_parameter_counts():
    counts = {name: count_parameters(build_encoder(name)) for name in ENCODER_NAMES}
    for name, expected in EXPECTED.items():
        assert counts[name] == expected, name
    assert 100_000 < counts["small"] < 300_000
    # MONAI's 3D ResNet-18 (BasicBlock [2, 2, 2, 2]): ~33.2 M with a 7^3 stem and FC 512 -> 128
    assert 33_000_000 < counts["resnet18"] < 33_400_000
    assert counts["vgg16"] > counts["alexnet"] > counts["resnet18"] > counts["small"]


def test_groupnorm_everywhere_so_batch_of_one_and_fedavg_work():
    for name in ENCODER_NAMES:
        enc = build_encoder(name, crop_size=16)
        kinds = {type(m) for m in enc.modules()}
        assert nn.GroupNorm in kinds, name
        assert not any(issubclass(k, nn.modules.batchnorm._BatchNorm) for k in kinds), name
        assert not list(enc.buffers()), name  # no running statistics to average


def test_per_sample_independence():
    """GroupNorm: a sample's output does not depend on the rest of the batch."""
    torch.manual_seed(1)
    enc = build_encoder("small").train()
    x = torch.rand(4, 1, 16, 16, 16)
    together = enc(x)
    alone = torch.cat([enc(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "resnet50"}, "name must be one of"),
        ({"name": "small", "crop_size": 4}, "crop_size"),
        ({"name": "small", "feature_dim": 0}, "feature_dim"),
        ({"name": "small", "in_channels": 1.0}, "in_channels"),
    ],
)
def test_arguments_are_checked(kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=match):
        build_encoder(name, **kwargs)


def test_conv_block_equals_monais_convolution():
    """The torch-only block has MONAI Convolution's state-dict keys and computes the same."""
    from monai.networks.blocks import Convolution

    from survfed.common.survival.encoders import _conv

    ours = _conv(3, 8, kernel=5, stride=2, groups=4)
    monai_block = Convolution(
        spatial_dims=3,
        in_channels=3,
        out_channels=8,
        strides=2,
        kernel_size=5,
        adn_ordering="NA",
        act="RELU",
        norm=("GROUP", {"num_groups": 4}),
    )
    assert list(ours.state_dict()) == list(monai_block.state_dict())
    monai_block.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 11, 12, 13)
    torch.testing.assert_close(ours(x), monai_block(x))
