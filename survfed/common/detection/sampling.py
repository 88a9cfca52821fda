"""Training patches for the N-Net (seed 003 §IV-A, §IV-E): a map-style dataset over scans.

Each item is one ``P``³ patch (``P`` = ``DetectorConfig.patch_size``):

* with probability ``positive_fraction`` (0.7) a **nodule patch**: a nodule is drawn from all
  nodules of all scans, weighted by size (×2 above 30 mm, ×6 above 40 mm with the paper's
  ``oversample``; diameter in mm = voxels × ``spacing_mm``), and the patch is placed so that
  the nodule's centre lies at a uniformly random position at least ``nodule_margin_vox`` from
  every face of the patch;
* otherwise a **random patch**: a scan drawn uniformly, a position drawn uniformly (the patch
  inside the scan where it fits, else a random placement that overhangs).

**Augmentation** (``augment=True``): a zoom factor ``s`` drawn uniformly in ``resize_range``
(0.8–1.15): a block of ``r = round(P / s)`` voxels is cut and resampled to ``P``³
(trilinear, ``align_corners=False``; the exact factor is ``s = P / r``) and the nodules' centres
and diameters are mapped with it; then, with ``flip``, mirroring along y and along x, each with
probability 1/2 (as the authors' code; never head–foot). The location crop is mirrored with the
patch, so every voxel keeps the coordinates of its place in the scan.

Voxels beyond the scan are :data:`~survfed.common.detection.scan.PAD_VALUE` (170).
Intensities become ``(v − 128) / 128``. Everything an item draws comes from
``numpy.random.SeedSequence((seed, epoch, index))``, so an item depends only on those three
numbers (set the epoch with :meth:`PatchSampler.set_epoch`), whatever the worker or the order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from survfed.common.detection.config import DetectorConfig
from survfed.common.detection.scan import (
    PAD_VALUE,
    DetectionScan,
    location_crop,
    normalise_intensity,
)
from survfed.common.detection.targets import make_targets

__all__ = ["PatchSample", "PatchSampler", "extract_block"]


def extract_block(image: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """The block ``image[start : start + size]`` (any start, also negative or beyond the end),
    with :data:`PAD_VALUE` where it leaves the image; uint8 of shape ``size``."""
    out = np.full(tuple(int(s) for s in size), PAD_VALUE, dtype=np.uint8)
    src, dst = [], []
    for s, n, full in zip(start, size, image.shape, strict=True):
        lo, hi = max(int(s), 0), min(int(s) + int(n), full)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - int(s), hi - int(s)))
    out[tuple(dst)] = image[tuple(src)]
    return out


@dataclass(frozen=True)
class PatchSample:
    """One training patch with the bookkeeping the tests and debugging need.

    Attributes:
        patch: float32 ``(1, P, P, P)`` normalised intensities.
        coord: float32 ``(3, P/4, P/4, P/4)`` location crop.
        labels: int8 ``(P/4, P/4, P/4, A)``; deltas: float32 ``(P/4, P/4, P/4, A, 4)``.
        nodules: ``(n, 4)`` nodules near the patch in patch voxel coordinates.
        scan_index: which scan; start: scan voxel of the cut block's corner;
        scale: zoom factor ``P / r``; flipped: ``(y, x)`` mirrored; positive: a nodule patch.
    """

    patch: torch.Tensor
    coord: torch.Tensor
    labels: torch.Tensor
    deltas: torch.Tensor
    nodules: np.ndarray
    scan_index: int
    start: tuple[int, int, int]
    scale: float
    flipped: tuple[bool, bool]
    positive: bool

    def as_item(self) -> dict[str, torch.Tensor]:
        """The collatable dict :meth:`PatchSampler.__getitem__` returns."""
        return {
            "patch": self.patch,
            "coord": self.coord,
            "labels": self.labels,
            "deltas": self.deltas,
        }


class PatchSampler(Dataset):
    """Map-style dataset of training patches over ``scans`` (see the module docstring).

    Args:
        scans: the scans (all on ``config``'s grid); at least one.
        config: patch size, sampling, augmentation and anchor settings.
        seed: base seed.
        samples_per_epoch: items per epoch; default ``ceil(W / positive_fraction)`` with ``W``
            the total sampling weight of the nodules (each nodule about once per epoch, as in
            the authors' code), at least the number of scans.
        augment: zoom and flips (off for a deterministic, unaugmented view).
    """

    def __init__(
        self,
        scans: Sequence[DetectionScan],
        config: DetectorConfig,
        *,
        seed: int = 0,
        samples_per_epoch: int | None = None,
        augment: bool = True,
    ) -> None:
        if not isinstance(config, DetectorConfig):
            raise TypeError(f"config must be a DetectorConfig, got {type(config).__name__}")
        scans = list(scans)
        if not scans:
            raise ValueError("scans must hold at least one scan")
        for i, scan in enumerate(scans):
            if not isinstance(scan, DetectionScan):
                raise TypeError(f"scans[{i}] must be a DetectionScan, got {type(scan).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.scans, self.config, self.seed, self.augment = scans, config, seed, bool(augment)
        self.epoch = 0
        refs, weights = [], []
        for i, scan in enumerate(scans):
            for j, d in enumerate(scan.nodules[:, 3]):
                if float(d) * config.spacing_mm < config.min_diameter_mm:
                    continue  # not a target (see DetectorConfig.min_diameter_mm)
                refs.append((i, j))
                weights.append(config.nodule_weight(float(d) * config.spacing_mm))
        self._refs = refs
        total = float(sum(weights))
        self._probs = np.asarray(weights, dtype=np.float64) / total if refs else None
        if samples_per_epoch is None:
            if refs and config.positive_fraction > 0:
                samples_per_epoch = max(len(scans), math.ceil(total / config.positive_fraction))
            else:
                samples_per_epoch = len(scans)
        if (
            isinstance(samples_per_epoch, bool)
            or not isinstance(samples_per_epoch, int)
            or samples_per_epoch < 1
        ):
            raise ValueError(
                f"samples_per_epoch must be a positive integer, got {samples_per_epoch!r}"
            )
        self.samples_per_epoch = samples_per_epoch

    @property
    def num_nodules(self) -> int:
        """Nodules over all scans."""
        return len(self._refs)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose items :meth:`__getitem__` returns."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """``{"patch", "coord", "labels", "deltas"}`` of item ``index`` (:class:`PatchSample`)."""
        return self.sample(index).as_item()

    def sample(self, index: int) -> PatchSample:
        """Item ``index`` of the current epoch with its bookkeeping."""
        if not 0 <= int(index) < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        cfg, p = self.config, self.config.patch_size
        rng = np.random.default_rng(np.random.SeedSequence((self.seed, self.epoch, int(index))))
        lo, hi = cfg.resize_range if self.augment else (1.0, 1.0)
        r = round(p / rng.uniform(lo, hi)) if hi > lo else p
        scale = p / r
        positive = self._probs is not None and rng.random() < cfg.positive_fraction
        if positive:
            i, j = self._refs[int(rng.choice(len(self._refs), p=self._probs))]
            scan = self.scans[i]
            start = self._nodule_start(scan.nodules[j, :3], r, scale, rng)
        else:
            i = int(rng.integers(len(self.scans)))
            scan = self.scans[i]
            start = tuple(
                int(rng.integers(min(0, n - r), max(0, n - r) + 1)) for n in scan.image.shape
            )
        block = normalise_intensity(extract_block(scan.image, start, (r, r, r)))[None]
        if r != p:
            block = F.interpolate(block[None], size=(p, p, p), mode="trilinear")[0]
        nodules = scan.nodules.copy()
        nodules[:, :3] = (nodules[:, :3] - np.asarray(start) + 0.5) * scale - 0.5
        nodules[:, 3] *= scale
        reach = nodules[:, 3] / 2 + max(cfg.anchors_vox)
        near = ((nodules[:, :3] > -reach[:, None]) & (nodules[:, :3] < p + reach[:, None])).all(1)
        nodules = nodules[near]
        d = p // cfg.stride
        coord = location_crop(start, (d, d, d), scan.lung_box, stride=cfg.stride, scale=scale)
        flipped = [False, False]
        if self.augment and cfg.flip:
            for k, axis in enumerate((1, 2)):
                if rng.random() < 0.5:
                    flipped[k] = True
                    block = block.flip(axis + 1)
                    coord = coord.flip(axis + 1)
                    nodules[:, axis] = p - 1 - nodules[:, axis]
        targets = make_targets(nodules, (p, p, p), cfg, rng)
        return PatchSample(
            patch=block.contiguous(),
            coord=coord.contiguous(),
            labels=targets["labels"],
            deltas=targets["deltas"],
            nodules=nodules,
            scan_index=i,
            start=start,  # type: ignore[arg-type]
            scale=scale,
            flipped=(flipped[0], flipped[1]),
            positive=bool(positive),
        )

    def _nodule_start(
        self, centre: np.ndarray, r: int, scale: float, rng: np.random.Generator
    ) -> tuple[int, int, int]:
        """A block corner that puts ``centre`` at least the margin inside the zoomed patch.

        Patch coordinate of the centre: ``q = (c − start + 0.5) · scale − 0.5``; ``m ≤ q ≤
        P − 1 − m`` ⇔ ``c + 0.5 − (P − 0.5 − m) / scale ≤ start ≤ c + 0.5 − (m + 0.5) / scale``.
        """
        p, m = self.config.patch_size, self.config.nodule_margin_vox
        out = []
        for c in centre:
            lo = math.ceil(c + 0.5 - (p - 0.5 - m) / scale)
            hi = math.floor(c + 0.5 - (m + 0.5) / scale)
            if hi < lo:  # only for margins close to P/2: centre the nodule
                lo = hi = round(c + 0.5 - p / 2 / scale)
            out.append(int(rng.integers(lo, hi + 1)))
        return out[0], out[1], out[2]
