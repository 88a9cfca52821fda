"""3D crop encoders: one nodule crop ``(B, C, S, S, S)`` → one feature vector ``(B, F)``.

The three networks of seed 000 §5.3 (tables 5–7) plus a small CPU preset:

``resnet18``
    MONAI's 3D ResNet-18 (``monai.networks.nets.resnet18``): 7³ stem convolution with stride 2
    and a stride-2 max pool as in table 7, four residual stages (64, 128, 256, 512 channels;
    stages 2–4 downsample by 2), global average pool → 512 → FC to ``feature_dim``.
``vgg16``
    Table 6: 13 convolutions (64, 64 | 128, 128 | 256 ×3 | 512 ×3 | 512 ×3) in five blocks each
    followed by a 2³ max pool, flatten 512·3³ = 13 824, FC 4096, FC 4096, FC ``feature_dim``.
``alexnet``
    Table 5: convolutions with 96, 256, 384 and 256 kernels, max pools after the first, second and
    fourth, flatten 256·4³ = 16 384, FC 4096, FC ``feature_dim``.
``small``
    Four 3³ convolutions with strides 2/2/2/1 (16, 32, 64, 64 channels; a 32³ crop is worked on
    at 16³, 8³ and 4³), global average pool, FC to ``feature_dim``: 0.19 M parameters, fast
    enough to train on a laptop CPU.
``nnet`` / ``nnet-small``
    Seed 003 §V: the N-Net detector's backbone (width 24 / the CPU preset's 8) up to its last
    feature map; the central 2×2×2 voxels are max-pooled into one vector (128 channels at width
    24), then FC to ``feature_dim``. Crops are mapped to the detector's intensity scale
    (``(v − 128) / 128`` of the same HU window as uint8) and its location channels are zero
    (a crop does not know where the lungs end). Its weights can start from a trained detector
    (:func:`load_detector_backbone`); crops then best have the detector's voxel size. Crop
    sizes must be multiples of 16.

Choices the seed leaves open (its kernel sizes were lost in extraction), stated here:

* Kernels: 3³ with padding 1 everywhere except AlexNet's first layer (5³, padding 2) and
  ResNet's stem (7³, stride 2, as table 7); VGG/AlexNet convolutions have stride 1 and their
  pools are 2³ stride 2 with ``ceil_mode``, so crops smaller than the paper's still work.
* The flatten sizes of tables 5–6 are kept for any crop size by an adaptive average pool to the
  paper's grid (4³ for AlexNet — exactly the grid a 32³ crop reaches after three pools — and 3³ for
  VGG16 — exactly what a 96³ crop reaches after five pools), the way torchvision's 2D VGG does.
* Normalisation: GroupNorm after every convolution (32 groups; 8 in the small preset), including
  MONAI's ResNet (``norm=("group", {"num_groups": 32})``, and the BatchNorm layers MONAI 1.6
  still puts in the residual blocks despite that argument replaced by GroupNorm). Group
  statistics are per sample, so training works with a batch of one patient per site, and there are
  no running statistics that federated averaging would have to merge. The seed's networks had no
  (VGG/Alex) or batch (ResNet) normalisation; GroupNorm is our departure.
* Activation ReLU; no dropout.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
from torch import nn

__all__ = [
    "ENCODER_NAMES",
    "NNetCropEncoder",
    "build_encoder",
    "count_parameters",
    "load_detector_backbone",
]

ENCODER_NAMES: tuple[str, ...] = ("resnet18", "vgg16", "alexnet", "small", "nnet", "nnet-small")
"""Names accepted by :func:`build_encoder`."""

_MIN_CROP = 8


class _ConvNormAct(nn.Sequential):
    """3D convolution → GroupNorm → ReLU with 'same' padding (odd kernels).

    The layout (``conv``, ``adn.N``, ``adn.A``) and so the state-dict keys are those of MONAI's
    ``Convolution(adn_ordering="NA")`` block, which these encoders used before; the block is
    spelled out in torch because ``import monai`` costs about 2 s, and a site pays that in every
    Flower message (Flower starts a fresh ClientApp process per message). The equality of the
    two blocks is tested (``tests/common/survival/test_encoders.py``).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, groups: int) -> None:
        super().__init__(
            OrderedDict(
                conv=nn.Conv3d(in_ch, out_ch, kernel, stride=stride, padding=(kernel - 1) // 2),
                adn=nn.Sequential(
                    OrderedDict(N=nn.GroupNorm(min(groups, out_ch), out_ch), A=nn.ReLU())
                ),
            )
        )


def _conv(
    in_ch: int, out_ch: int, *, kernel: int = 3, stride: int = 1, groups: int = 32
) -> nn.Module:
    """3D convolution → GroupNorm → ReLU, 'same' padding."""
    return _ConvNormAct(in_ch, out_ch, kernel, stride, groups)


def _pool() -> nn.MaxPool3d:
    return nn.MaxPool3d(kernel_size=2, stride=2, ceil_mode=True)


class _FlattenHead(nn.Sequential):
    """Adaptive average pool to a fixed grid → flatten → fully connected layers with ReLU."""

    def __init__(self, channels: int, grid: int, widths: Sequence[int]) -> None:
        layers: list[nn.Module] = [nn.AdaptiveAvgPool3d(grid), nn.Flatten()]
        width = channels * grid**3
        for n, out in enumerate(widths):
            layers.append(nn.Linear(width, out))
            if n < len(widths) - 1:
                layers.append(nn.ReLU(inplace=True))
            width = out
        super().__init__(*layers)


def _vgg16(in_channels: int, feature_dim: int) -> nn.Module:
    blocks = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
    layers: list[nn.Module] = []
    ch = in_channels
    for block in blocks:
        for out in block:
            layers.append(_conv(ch, out))
            ch = out
        layers.append(_pool())
    return nn.Sequential(
        nn.Sequential(*layers), _FlattenHead(ch, grid=3, widths=(4096, 4096, feature_dim))
    )


def _alexnet(in_channels: int, feature_dim: int) -> nn.Module:
    features = nn.Sequential(
        _conv(in_channels, 96, kernel=5),
        _pool(),
        _conv(96, 256),
        _pool(),
        _conv(256, 384),
        _conv(384, 256),
        _pool(),
    )
    return nn.Sequential(features, _FlattenHead(256, grid=4, widths=(4096, feature_dim)))


def _small(in_channels: int, feature_dim: int) -> nn.Module:
    return nn.Sequential(
        _conv(in_channels, 16, stride=2, groups=8),
        _conv(16, 32, stride=2, groups=8),
        _conv(32, 64, stride=2, groups=8),
        _conv(64, 64, groups=8),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(64, feature_dim),
    )


class NNetCropEncoder(nn.Module):
    """The N-Net backbone's features at the centre of a crop (see the module docstring).

    Args:
        width: the N-Net's channel multiplier (24 = paper, 8 = CPU preset).
        feature_dim: output length.
    """

    def __init__(self, width: int, feature_dim: int) -> None:
        super().__init__()
        from survfed.common.detection.nnet import NNet

        self.nnet = NNet(width=width, num_anchors=3, dropout=0.0)
        self.nnet.head = nn.Identity()  # the detector's RPN output is not used here
        self.proj = nn.Linear(self.nnet.feature_channels, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, S, S, S)`` crops in ``[0, 1]`` → ``(B, feature_dim)``."""
        b, _, d, h, w = x.shape
        scaled = x * (255.0 / 128.0) - 1.0  # the detector's (v - 128) / 128 on uint8 grey
        coord = x.new_zeros((b, 3, d // 4, h // 4, w // 4))
        feats = self.nnet.features(scaled, coord)
        cz, cy, cx = (n // 2 for n in feats.shape[2:])
        centre = feats[:, :, cz - 1 : cz + 1, cy - 1 : cy + 1, cx - 1 : cx + 1]
        return self.proj(centre.amax(dim=(2, 3, 4)))


def load_detector_backbone(encoder: nn.Module, detector_state: Mapping[str, torch.Tensor]) -> int:
    """Copy a trained detector's backbone into an :class:`NNetCropEncoder` (same width).

    Every detector weight but the RPN head whose name and shape match is copied; returns how
    many tensors were (0 when the widths differ). The paper's stage A: the case classifier
    starts from the detector.
    """
    if not isinstance(encoder, NNetCropEncoder):
        raise TypeError(f"encoder must be an NNetCropEncoder, got {type(encoder).__name__}")
    own = encoder.nnet.state_dict()
    take = {
        k: v
        for k, v in detector_state.items()
        if not k.startswith("head.") and k in own and tuple(own[k].shape) == tuple(v.shape)
    }
    if len(take) < len(own):
        return 0
    encoder.nnet.load_state_dict(take, strict=False)
    return len(take)


def _resnet18(in_channels: int, feature_dim: int) -> nn.Module:
    from monai.networks.nets import resnet18

    net = resnet18(
        spatial_dims=3,
        n_input_channels=in_channels,
        num_classes=feature_dim,
        conv1_t_size=7,
        conv1_t_stride=2,
        norm=("group", {"num_groups": 32}),
    )
    _batchnorm_to_groupnorm(net, num_groups=32)
    return net


def _batchnorm_to_groupnorm(module: nn.Module, num_groups: int) -> None:
    """Replace every BatchNorm in ``module`` (in place) by a fresh GroupNorm.

    MONAI <= 1.6 hands ResNet's ``norm`` argument to the stem only; the residual blocks and
    shortcuts keep BatchNorm (Project-MONAI/MONAI PR #9028). Once MONAI threads ``norm``
    through, nothing is left to replace and this is a no-op.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            channels = child.num_features
            setattr(module, name, nn.GroupNorm(min(num_groups, channels), channels))
        else:
            _batchnorm_to_groupnorm(child, num_groups)


def _positive_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def build_encoder(
    name: str, *, in_channels: int = 1, feature_dim: int = 128, crop_size: int = 32
) -> nn.Module:
    """Build a crop encoder mapping ``(B, in_channels, S, S, S)`` → ``(B, feature_dim)``.

    Args:
        name: one of :data:`ENCODER_NAMES`.
        in_channels: channels per crop (1 for windowed CT).
        feature_dim: length of the output feature (128 in seed 000).
        crop_size: crop edge ``S`` in voxels the encoder will see (>= 8). Every encoder accepts
            any ``S >= 8`` (adaptive pooling); the argument is checked here so a wrong
            configuration fails at build time, not in the first batch.

    Returns:
        An ``nn.Module`` in training mode.
    """
    if name not in ENCODER_NAMES:
        raise ValueError(f"name must be one of {ENCODER_NAMES}, got {name!r}")
    in_channels = _positive_int(in_channels, "in_channels")
    feature_dim = _positive_int(feature_dim, "feature_dim")
    _positive_int(crop_size, "crop_size", minimum=_MIN_CROP)
    if name.startswith("nnet"):
        if in_channels != 1 or crop_size % 16:
            raise ValueError(
                f"encoder {name!r} needs 1 input channel and a crop_size that is a multiple of "
                f"16 (the N-Net pools four times), got {in_channels} and {crop_size}"
            )
        return NNetCropEncoder(24 if name == "nnet" else 8, feature_dim)
    builders = {
        "resnet18": _resnet18,
        "vgg16": _vgg16,
        "alexnet": _alexnet,
        "small": _small,
    }
    return builders[name](in_channels, feature_dim)


def count_parameters(module: nn.Module, *, trainable_only: bool = True) -> int:
    """Number of (trainable) scalar parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
