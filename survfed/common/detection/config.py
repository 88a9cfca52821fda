"""Settings of the N-Net nodule detector and its case classifier (seed 003 §IV–V).

One frozen :class:`DetectorConfig` holds everything that shapes the model, its training targets,
its patch sampling and its inference, so a saved detector (:func:`~survfed.common.detection.
train.save_detector`) carries the exact recipe it was trained with. Lengths are in **voxels of
the preprocessed isotropic grid** (``spacing_mm`` per voxel) unless the name ends in ``_mm``.

The defaults are the paper's (1 mm grid, 128³ patches, 24-channel width, 208³ test tiles with a
32-voxel overlap). :func:`cpu_preset` is a small configuration for tests, the demo and laptops.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

__all__ = ["NORMS", "DetectorConfig", "cpu_preset"]

NORMS: tuple[str, ...] = ("group", "voxel")
"""Normalisation layers :class:`~survfed.common.detection.nnet.NNet` accepts (see there)."""

_MAX_STRIDE = 16  # four 2×2×2 poolings: input sizes must be multiples of 16
_STRIDE = 4  # output grid of the N-Net: two poolings below the input


def _int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _float(value: object, name: str, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")
    return value


def _multiple(value: int, name: str, of: int) -> int:
    if value % of:
        raise ValueError(f"{name} must be a multiple of {of} (the N-Net pools 4×), got {value}")
    return value


@dataclass(frozen=True)
class DetectorConfig:
    """Architecture, targets, sampling, inference and classifier settings of the detector.

    Attributes:
        width: channel multiplier; 24 is the paper's N-Net (channels scale with ``width / 24``).
        norm: ``"group"`` (GroupNorm, statistics over channel groups and space; default) or
            ``"voxel"`` (statistics over the channels of each voxel only: exactly
            translation-equivariant, see :mod:`survfed.common.detection.nnet`).
        dropout: channel dropout before the output convolutions (grt123: 0.2; 0 disables).
        patch_size: training patch edge ``P`` in voxels (multiple of 16; paper 128).
        spacing_mm: isotropic voxel size of the preprocessed scans, mm (paper 1).
        anchors_mm: anchor cube edges in mm (paper 10, 30, 60).
        stride: output grid step in voxels; fixed at 4 by the architecture.
        iou_positive: an anchor whose cube IoU with a nodule exceeds this is a positive candidate.
        iou_negative: an anchor whose IoU with every nodule is below this is a negative.
        positive_fallback: when no anchor of a nodule exceeds ``iou_positive``, use its best anchor
            if that IoU is at least ``iou_negative`` (Faster R-CNN's "low-quality match"; not in
            the paper, where such a nodule has no positive in that patch).
        positive_fraction: share of training patches drawn around a nodule (paper 0.7).
        min_diameter_mm: nodules smaller than this are no training targets: patches are not
            drawn around them and the anchors overlapping them are ignored (neither positive
            nor negative). Seed 003 removed the LUNA16 nodules under 6 mm ("usually not
            dangerous"), and a 3 mm nodule is about one voxel of a 2.5 mm grid. 0 = all.
        nodule_margin_vox: a sampled nodule's centre lies at least this far from the patch
            border (paper 12 at ``P`` = 128; scale it with ``P``).
        oversample: ``((diameter_mm, weight), ...)``: a nodule larger than ``diameter_mm`` is
            drawn ``weight`` times as often (the largest matching threshold wins; paper ×2 above
            30 mm, ×6 above 40 mm).
        resize_range: random zoom factor range of training patches (paper 0.8–1.15); ``(1, 1)``
            disables resizing.
        flip: random mirroring of training patches along y and x (each with probability 1/2).
        neg_pool: size of the random candidate pool of negatives per patch (grt123: 800).
        num_hard: hard negatives kept per patch from that pool, highest confidence first (2).
        loss_weighting: ``"balanced"`` (½ positives, ½ hard negatives, as the authors' code) or
            ``"anchors"`` (one mean over the selected anchors, the paper's text); see
            :mod:`survfed.common.detection.loss`.
        tile_size: inference tile edge in voxels (multiple of 16; paper 208).
        tile_overlap: overlap of neighbouring tiles in voxels (multiple of 16; paper 32).
        mirror_tta: test-time mirroring: each tile also runs mirrored along y, along x and
            along both (the training flips), and the four output maps are averaged after
            mirroring them back — 4× the inference time (not in the paper; off by default).
        score_threshold: proposals need a confidence (sigmoid of the objectness) above this.
        pre_nms: at most this many highest-confidence candidates enter NMS.
        nms_iou: NMS drops a proposal whose cube IoU with a better one exceeds this.
        max_proposals: proposals kept per scan after NMS.
        top_k: proposals per patient handed to the case classifier (paper 5).
        crop_size: classifier crop edge in voxels around each proposal (multiple of 16;
            paper 96).
        hidden: hidden units of the classifier's per-nodule perceptron (paper 64).
    """

    width: int = 24
    norm: Literal["group", "voxel"] = "group"
    dropout: float = 0.2
    patch_size: int = 128
    spacing_mm: float = 1.0
    anchors_mm: tuple[float, ...] = (10.0, 30.0, 60.0)
    stride: int = _STRIDE
    iou_positive: float = 0.5
    iou_negative: float = 0.02
    positive_fallback: bool = False
    positive_fraction: float = 0.7
    min_diameter_mm: float = 6.0
    nodule_margin_vox: int = 12
    oversample: tuple[tuple[float, float], ...] = ((30.0, 2.0), (40.0, 6.0))
    resize_range: tuple[float, float] = (0.8, 1.15)
    flip: bool = True
    neg_pool: int = 800
    num_hard: int = 2
    loss_weighting: Literal["balanced", "anchors"] = "balanced"
    tile_size: int = 208
    tile_overlap: int = 32
    mirror_tta: bool = False
    score_threshold: float = 0.05
    pre_nms: int = 3000
    nms_iou: float = 0.1
    max_proposals: int = 100
    top_k: int = 5
    crop_size: int = 96
    hidden: int = 64

    def __post_init__(self) -> None:
        _int(self.width, "width", 4)
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        object.__setattr__(self, "dropout", _float(self.dropout, "dropout", 0.0, 0.99))
        _multiple(_int(self.patch_size, "patch_size", _MAX_STRIDE), "patch_size", _MAX_STRIDE)
        spacing = _float(self.spacing_mm, "spacing_mm")
        if spacing <= 0:
            raise ValueError(f"spacing_mm must be > 0, got {self.spacing_mm!r}")
        object.__setattr__(self, "spacing_mm", spacing)
        try:
            anchors = tuple(float(a) for a in self.anchors_mm)
        except (TypeError, ValueError) as err:
            raise ValueError(f"anchors_mm must be numbers, got {self.anchors_mm!r}") from err
        if not anchors or any(not (math.isfinite(a) and a > 0) for a in anchors):
            raise ValueError(f"anchors_mm must be one or more sizes > 0, got {self.anchors_mm!r}")
        object.__setattr__(self, "anchors_mm", anchors)
        if self.stride != _STRIDE:
            raise ValueError(f"stride must be {_STRIDE} (fixed by the N-Net), got {self.stride!r}")
        pos = _float(self.iou_positive, "iou_positive", 0.0, 1.0)
        neg = _float(self.iou_negative, "iou_negative", 0.0, 1.0)
        if not neg < pos:
            raise ValueError(f"iou_negative ({neg}) must be below iou_positive ({pos})")
        object.__setattr__(self, "iou_positive", pos)
        object.__setattr__(self, "iou_negative", neg)
        if not isinstance(self.positive_fallback, bool):
            raise ValueError(f"positive_fallback must be a bool, got {self.positive_fallback!r}")
        object.__setattr__(
            self,
            "positive_fraction",
            _float(self.positive_fraction, "positive_fraction", 0.0, 1.0),
        )
        object.__setattr__(
            self, "min_diameter_mm", _float(self.min_diameter_mm, "min_diameter_mm", 0.0)
        )
        margin = _int(self.nodule_margin_vox, "nodule_margin_vox", 0)
        if 2 * margin >= self.patch_size:
            raise ValueError(
                f"nodule_margin_vox ({margin}) must be below half of patch_size ({self.patch_size})"
            )
        try:
            over = tuple((float(d), float(w)) for d, w in self.oversample)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"oversample must be ((diameter_mm, weight), ...), got {self.oversample!r}"
            ) from err
        if any(not (math.isfinite(d) and d >= 0 and math.isfinite(w) and w > 0) for d, w in over):
            raise ValueError(f"oversample needs diameters >= 0 and weights > 0, got {over!r}")
        object.__setattr__(self, "oversample", tuple(sorted(over)))
        try:
            lo, hi = (float(v) for v in self.resize_range)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"resize_range must be two numbers, got {self.resize_range!r}"
            ) from err
        if not (0.25 <= lo <= hi <= 4.0):
            raise ValueError(f"resize_range must satisfy 0.25 <= low <= high <= 4, got {(lo, hi)}")
        object.__setattr__(self, "resize_range", (lo, hi))
        if not isinstance(self.flip, bool):
            raise ValueError(f"flip must be a bool, got {self.flip!r}")
        _int(self.neg_pool, "neg_pool", 1)
        _int(self.num_hard, "num_hard", 1)
        if self.loss_weighting not in ("balanced", "anchors"):
            raise ValueError(
                f"loss_weighting must be 'balanced' or 'anchors', got {self.loss_weighting!r}"
            )
        if self.num_hard > self.neg_pool:
            raise ValueError(
                f"num_hard ({self.num_hard}) must not exceed neg_pool ({self.neg_pool})"
            )
        _multiple(_int(self.tile_size, "tile_size", _MAX_STRIDE), "tile_size", _MAX_STRIDE)
        _multiple(_int(self.tile_overlap, "tile_overlap", 0), "tile_overlap", _MAX_STRIDE)
        if self.tile_overlap >= self.tile_size:
            raise ValueError(
                f"tile_overlap ({self.tile_overlap}) must be below tile_size ({self.tile_size})"
            )
        if not isinstance(self.mirror_tta, bool):
            raise ValueError(f"mirror_tta must be a bool, got {self.mirror_tta!r}")
        object.__setattr__(
            self, "score_threshold", _float(self.score_threshold, "score_threshold", 0.0, 1.0)
        )
        _int(self.pre_nms, "pre_nms", 1)
        object.__setattr__(self, "nms_iou", _float(self.nms_iou, "nms_iou", 0.0, 1.0))
        _int(self.max_proposals, "max_proposals", 1)
        _int(self.top_k, "top_k", 1)
        _multiple(_int(self.crop_size, "crop_size", _MAX_STRIDE), "crop_size", _MAX_STRIDE)
        _int(self.hidden, "hidden", 1)

    @property
    def anchors_vox(self) -> tuple[float, ...]:
        """Anchor cube edges in voxels: ``anchors_mm / spacing_mm``."""
        return tuple(a / self.spacing_mm for a in self.anchors_mm)

    @property
    def num_anchors(self) -> int:
        """Anchors per output voxel ``A``."""
        return len(self.anchors_mm)

    @property
    def output_size(self) -> int:
        """Edge of the output grid of a training patch: ``patch_size / stride``."""
        return self.patch_size // self.stride

    def nodule_weight(self, diameter_mm: float) -> float:
        """Sampling weight of a nodule of ``diameter_mm`` (the largest threshold it exceeds)."""
        weight = 1.0
        for threshold, w in self.oversample:
            if diameter_mm > threshold:
                weight = w
        return weight

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples as lists)."""
        out = asdict(self)
        out["anchors_mm"] = list(self.anchors_mm)
        out["oversample"] = [list(p) for p in self.oversample]
        out["resize_range"] = list(self.resize_range)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorConfig:
        """Inverse of :meth:`to_dict`; missing keys take the defaults, unknown keys are errors."""
        if not isinstance(data, dict):
            raise TypeError(f"data must be a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown detector config keys {unknown}; known keys: {sorted(known)}")
        values = dict(data)
        for key in ("anchors_mm", "resize_range"):
            if key in values:
                values[key] = tuple(values[key])
        if "oversample" in values:
            values["oversample"] = tuple(tuple(p) for p in values["oversample"])
        return cls(**values)

    def replace(self, **changes: Any) -> DetectorConfig:
        """A copy with ``changes`` applied (validated again)."""
        return replace(self, **changes)


def cpu_preset(**overrides: Any) -> DetectorConfig:
    """A small detector for CPUs: tests, the demo and laptops.

    Width 8 (0.62 M parameters), 48³ patches on a 2.5 mm grid (120 mm of context, room for a
    30 mm nodule and its surroundings; the anchors are then 4, 12 and 24 voxels), no dropout,
    margin 6 and a pool of 200 negatives (scaled with the patch), 16 hard negatives per patch
    and ``positive_fallback`` (so that a few hundred patches train it), 128³ inference tiles,
    48³ classifier crops. ``overrides`` replace any field. 48³ patches train at about 8.5
    patches/s on 2 CPU cores, 2.5× the rate of 64³, and learned as well on the phantoms.
    """
    base = DetectorConfig(
        width=8,
        dropout=0.0,
        patch_size=48,
        spacing_mm=2.5,
        nodule_margin_vox=6,
        neg_pool=200,
        num_hard=16,
        positive_fallback=True,
        tile_size=128,
        tile_overlap=32,
        crop_size=48,
    )
    return base.replace(**overrides) if overrides else base
