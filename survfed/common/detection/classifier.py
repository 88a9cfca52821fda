r"""Case classifier on the detector's proposals: the leaky noisy-OR model (seed 003 §V).

For each patient the ``k`` = 5 most confident proposals (during training: ``k`` drawn with
probability proportional to confidence, :func:`pick_proposals`) are cut as crops of
``crop_size``³ voxels (paper 96³) centred on the proposal. Each crop goes through the **shared
N-Net backbone**; from its last feature map (the left combining unit, 128 channels at width 24,
``crop_size / 4`` voxels across) the central 2×2×2 voxels are max-pooled into one feature
vector per proposal, and a two-layer perceptron (``hidden`` = 64 units, ReLU) gives the
proposal's cancer logit :math:`z_i`, :math:`P_i = \sigma(z_i)`.

**Leaky noisy-OR** (eq. 5). The nodules are independent causes of cancer, plus a *leak* — a
dummy nodule for a cancer the detector missed — with a learned probability
:math:`P_d = \sigma(b)`:

.. math:: P = 1 - (1 - P_d) \prod_{i\ \text{present}} (1 - P_i).

Absent proposals (a patient with fewer than ``k``) are left out of the product (the paper fed
blank crops instead), so a patient without any proposal gets :math:`P = P_d`. In log space,
:math:`\log(1 - P) = -\operatorname{softplus}(b) - \sum_i \operatorname{softplus}(z_i)`
(:func:`noisy_or_log_complement`, from logits: exact for any :math:`z_i`, bounded gradients),
and :math:`P = -\operatorname{expm1}(\log(1 - P))` keeps precision when every probability is
tiny. The loss over patients is the BCE of :math:`P` (:func:`case_bce`), patients with an
unknown label (NaN) left out.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from survfed.common.detection.config import DetectorConfig
from survfed.common.detection.nnet import NNet
from survfed.common.detection.noisy_or import case_bce, leaky_noisy_or, noisy_or_log_complement
from survfed.common.detection.sampling import extract_block
from survfed.common.detection.scan import (
    check_image,
    check_lung_box,
    location_crop,
    normalise_intensity,
)

__all__ = [
    "CaseClassifier",
    "CaseOutput",
    "build_case_classifier",
    "case_bce",
    "leaky_noisy_or",
    "noisy_or_log_complement",
    "pick_proposals",
    "proposal_crops",
]

_LEAK_INIT = -3.0  # initial leak logit: P_d = 0.047


def pick_proposals(
    proposals: np.ndarray, k: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    """``k`` proposals of a scan: the most confident, or (``rng`` given, for training) ``k``
    drawn without replacement with probability proportional to confidence.

    Args:
        proposals: ``(n, 5)`` ``(z, y, x, d, confidence)``.
        k: how many (fewer if ``n < k``).
        rng: ``None`` for the top ``k``.

    Returns:
        ``(min(n, k), 5)``, highest confidence first.
    """
    props = np.asarray(proposals, dtype=np.float64).reshape(-1, 5)
    order = np.argsort(-props[:, 4], kind="stable")
    props = props[order]
    m = min(len(props), int(k))
    if rng is None or m == len(props):
        return props[:m]
    w = np.clip(props[:, 4], 0.0, None)
    p = w / w.sum() if w.sum() > 0 else None
    chosen = np.sort(rng.choice(len(props), size=m, replace=False, p=p))
    return props[chosen]


def proposal_crops(
    image: np.ndarray,
    proposals: np.ndarray,
    config: DetectorConfig,
    *,
    lung_box: np.ndarray | None = None,
) -> dict[str, torch.Tensor]:
    """Crops around (up to ``top_k``) proposals, padded to ``top_k`` slots.

    Args:
        image: uint8 ``(Z, Y, X)`` scan.
        proposals: ``(n, 5)``, already picked (:func:`pick_proposals`); only the first
            ``top_k`` are used.
        config: ``crop_size``, ``top_k``, ``stride``.
        lung_box: for the location crops; ``None`` = the scan's extent.

    Returns:
        ``{"crops": float32 (k, 1, C, C, C), "coord": float32 (k, 3, C/4, C/4, C/4),
        "present": bool (k,)}``; absent slots hold 170-valued crops and are ``False``.
    """
    image = check_image(image)
    box = check_lung_box(lung_box, image.shape)
    props = np.asarray(proposals, dtype=np.float64).reshape(-1, 5)[: config.top_k]
    k, c, s = config.top_k, config.crop_size, config.stride
    crops = torch.full((k, 1, c, c, c), (170.0 - 128.0) / 128.0)
    coord = torch.zeros((k, 3, c // s, c // s, c // s))
    present = torch.zeros(k, dtype=torch.bool)
    for i, prop in enumerate(props):
        start = tuple(round(float(v)) - c // 2 for v in prop[:3])
        crops[i, 0] = normalise_intensity(extract_block(image, start, (c, c, c)))
        coord[i] = location_crop(start, (c // s,) * 3, box, stride=s)
        present[i] = True
    return {"crops": crops, "coord": coord, "present": present}


class CaseOutput(NamedTuple):
    """What :class:`CaseClassifier` returns.

    Attributes:
        p_case: ``(B,)`` cancer probability :math:`P`.
        log_complement: ``(B,)`` :math:`\\log(1 - P)` (for :func:`case_bce`).
        p_nodule: ``(B, k)`` per-proposal :math:`P_i` (NaN where absent).
    """

    p_case: torch.Tensor
    log_complement: torch.Tensor
    p_nodule: torch.Tensor


class CaseClassifier(nn.Module):
    """Shared N-Net backbone → central 2×2×2 max pool → MLP → leaky noisy-OR.

    Args:
        nnet: the detector (its :meth:`~survfed.common.detection.nnet.NNet.features` is shared,
            not copied: training the classifier trains the detector's backbone too).
        hidden: hidden units of the per-nodule perceptron (64).
    """

    def __init__(self, nnet: NNet, hidden: int = 64) -> None:
        super().__init__()
        if not isinstance(nnet, NNet):
            raise TypeError(f"nnet must be an NNet, got {type(nnet).__name__}")
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be a positive integer, got {hidden!r}")
        self.nnet = nnet
        self.mlp = nn.Sequential(
            nn.Linear(nnet.feature_channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1)
        )
        self.leak_logit = nn.Parameter(torch.tensor(_LEAK_INIT))

    def nodule_features(self, crops: torch.Tensor, coord: torch.Tensor) -> torch.Tensor:
        """``(N, 1, C, C, C)`` crops + ``(N, 3, C/4, …)`` location crops → ``(N, F)``: the
        max over the central 2×2×2 voxels of the N-Net's last feature map."""
        feats = self.nnet.features(crops, coord)
        c = feats.shape[-1] // 2
        return feats[..., c - 1 : c + 1, c - 1 : c + 1, c - 1 : c + 1].amax(dim=(-3, -2, -1))

    def forward(
        self, crops: torch.Tensor, coord: torch.Tensor, present: torch.Tensor
    ) -> CaseOutput:
        """Case probabilities of ``B`` patients.

        Args:
            crops: ``(B, k, 1, C, C, C)`` from :func:`proposal_crops`, stacked.
            coord: ``(B, k, 3, C/4, C/4, C/4)``.
            present: ``(B, k)`` bool; absent crops are not run through the network.

        Returns:
            :class:`CaseOutput`.
        """
        if crops.ndim != 6 or crops.shape[2] != 1:
            raise ValueError(f"crops must have shape (B, k, 1, C, C, C), got {tuple(crops.shape)}")
        b, k = crops.shape[:2]
        if tuple(present.shape) != (b, k):
            raise ValueError(f"present must have shape {(b, k)}, got {tuple(present.shape)}")
        if coord.ndim != 6 or tuple(coord.shape[:3]) != (b, k, 3):
            raise ValueError(f"coord must have shape ({b}, {k}, 3, ...), got {tuple(coord.shape)}")
        present = present.to(device=crops.device, dtype=torch.bool)
        logits = crops.new_full((b, k), float("nan"))
        if bool(present.any()):
            z = self.mlp(self.nodule_features(crops[present], coord[present])).squeeze(-1)
            logits = logits.index_put((present,), z.to(logits.dtype))
        log_c = noisy_or_log_complement(logits, present, self.leak_logit)
        p_nodule = torch.where(present, torch.sigmoid(logits), logits)
        return CaseOutput(p_case=-torch.expm1(log_c), log_complement=log_c, p_nodule=p_nodule)


def build_case_classifier(nnet: NNet, config: DetectorConfig) -> CaseClassifier:
    """A :class:`CaseClassifier` on ``nnet`` with ``config.hidden`` hidden units."""
    if not isinstance(config, DetectorConfig):
        raise TypeError(f"config must be a DetectorConfig, got {type(config).__name__}")
    return CaseClassifier(nnet, hidden=config.hidden)
