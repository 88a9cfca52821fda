"""Training the N-Net: one local epoch (what a federated site runs), a pooled loop, and the
saved form of a detector.

:func:`train_detector_epoch` is the unit a Flower client calls each round: one pass over a
:class:`~survfed.common.detection.sampling.PatchSampler` epoch, the loss of
:func:`~survfed.common.detection.loss.nnet_loss` (hard negatives mined online), optionally the
FedProx proximal term ``(mu / 2) · ‖w − w_global‖²`` over all trainable parameters (the same
term as the survival model's :func:`~survfed.common.survival.train.train_epoch`), gradient
clipping (the paper clips the gradient norm at 1 late in training) and bf16 autocast on CUDA.
:func:`train_detector` is the pooled baseline over a list of scans.

:func:`save_detector` / :func:`load_detector` keep the weights with the
:class:`~survfed.common.detection.config.DetectorConfig` they were trained with (the file is
read with ``weights_only=True``).
"""

from __future__ import annotations

import math
import os
import tempfile
import time as _time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from survfed.common.detection.config import DetectorConfig
from survfed.common.detection.loss import nnet_loss
from survfed.common.detection.nnet import NNet, build_nnet
from survfed.common.detection.sampling import PatchSampler
from survfed.common.detection.scan import DetectionScan
from survfed.common.survival.train import GlobalParams, _global_tensors, proximal_term
from survfed.common.torch_files import load_payload

__all__ = ["load_detector", "save_detector", "train_detector", "train_detector_epoch"]

_FORMAT = "survfed.nnet_detector"
_FORMAT_VERSION = 1


def _seed_from(*words: int) -> int:
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> 1)


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def train_detector_epoch(
    model: nn.Module,
    sampler: PatchSampler,
    optimizer: torch.optim.Optimizer,
    config: DetectorConfig,
    *,
    device: str | torch.device,
    epoch: int,
    batch_size: int = 2,
    proximal_mu: float = 0.0,
    global_params: GlobalParams | None = None,
    max_grad_norm: float | None = None,
    amp: bool = False,
    num_workers: int = 0,
    progress: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """Train ``model`` on one epoch of ``sampler``'s patches.

    Args:
        model: an :class:`~survfed.common.detection.nnet.NNet` already on ``device`` (move it
            before building the optimizer).
        sampler: the patches; its epoch is set to ``epoch`` here.
        optimizer: over ``model``'s parameters.
        config: ``num_hard`` and ``neg_pool`` of the loss.
        device: ``"cuda"``, ``"cpu"`` or a ``torch.device``.
        epoch: selects the patches and the negative pools (``(sampler.seed, epoch)``).
        batch_size: patches per step (paper: 2 per GPU).
        proximal_mu: FedProx ``mu`` (>= 0); 0 disables the term.
        global_params: the round's global weights, by name or in ``named_parameters()`` order;
            required when ``proximal_mu > 0``.
        max_grad_norm: clip the gradient norm to this (``None``: no clipping).
        amp: bf16 autocast of the forward pass on CUDA (ignored on CPU).
        num_workers: ``DataLoader`` workers building patches.
        progress: called after each step with ``{"batch", "loss", "n_pos"}``.

    Returns:
        ``"loss"``, ``"cls"``, ``"reg"``, ``"prox"``: patch-weighted means over the epoch's
        steps (``loss`` includes ``prox``); ``"n_patches"`` (the FedAvg weight),
        ``"n_batches"``, ``"n_pos"`` (positive anchors used), ``"n_neg"`` (hard negatives),
        ``"pos_recall"`` (share of those positives with confidence > 0.5), ``"seconds"``,
        ``"patches_per_s"``.
    """
    device = torch.device(device)
    if not isinstance(config, DetectorConfig):
        raise TypeError(f"config must be a DetectorConfig, got {type(config).__name__}")
    if not isinstance(sampler, PatchSampler):
        raise TypeError(f"sampler must be a PatchSampler, got {type(sampler).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not (isinstance(proximal_mu, int | float) and math.isfinite(proximal_mu)):
        raise ValueError(f"proximal_mu must be a finite number >= 0, got {proximal_mu!r}")
    if proximal_mu < 0:
        raise ValueError(f"proximal_mu must be >= 0, got {proximal_mu!r}")
    if proximal_mu > 0 and global_params is None:
        raise ValueError("global_params is required when proximal_mu > 0 (FedProx)")
    if max_grad_norm is not None and not max_grad_norm > 0:
        raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm!r}")
    first = next(model.parameters(), None)
    if first is not None and first.device.type != device.type:
        raise ValueError(f"model is on {first.device}, device is {device}: call model.to(device)")
    pairs = _global_tensors(model, global_params, device) if proximal_mu > 0 else []

    sampler.set_epoch(epoch)
    loader = DataLoader(
        sampler,
        batch_size=batch_size,
        shuffle=False,  # items are independent draws already
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    generator = torch.Generator().manual_seed(_seed_from(sampler.seed, epoch, 1))
    sums = dict.fromkeys(("loss", "cls", "reg", "prox"), 0.0)
    n_patches = n_batches = 0
    n_pos = n_neg = pos_correct = 0.0
    model.train()
    start = _time.perf_counter()
    for batch in loader:
        patch = batch["patch"].to(device, non_blocking=True)
        coord = batch["coord"].to(device, non_blocking=True)
        targets = {k: batch[k].to(device, non_blocking=True) for k in ("labels", "deltas")}
        b = int(patch.shape[0])
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, amp):
            out = model(patch, coord)
        loss, stats = nnet_loss(
            out.float(),
            targets,
            num_hard=config.num_hard,
            neg_pool=config.neg_pool,
            generator=generator,
            weighting=config.loss_weighting,
        )
        prox = 0.0
        if pairs:
            prox_t = proximal_term(pairs, proximal_mu)
            loss = loss + prox_t
            prox = float(prox_t.detach())
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss in batch {n_batches} (cls={stats['cls']}, reg={stats['reg']}); "
                "lower the learning rate or set max_grad_norm"
            )
        loss.backward()
        if max_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        sums["loss"] += (stats["loss"] + prox) * b
        sums["cls"] += stats["cls"] * b
        sums["reg"] += stats["reg"] * b
        sums["prox"] += prox * b
        n_patches += b
        n_batches += 1
        n_pos += stats["n_pos"]
        n_neg += stats["n_neg"]
        pos_correct += stats["pos_correct"]
        if progress is not None:
            progress({"batch": n_batches, "loss": stats["loss"] + prox, "n_pos": stats["n_pos"]})
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = _time.perf_counter() - start
    result = {k: (v / n_patches if n_patches else float("nan")) for k, v in sums.items()}
    result.update(
        n_patches=float(n_patches),
        n_batches=float(n_batches),
        n_pos=n_pos,
        n_neg=n_neg,
        pos_recall=pos_correct / n_pos if n_pos else float("nan"),
        seconds=seconds,
        patches_per_s=n_patches / seconds if seconds > 0 else float("nan"),
    )
    return result


def train_detector(
    scans: Sequence[DetectionScan],
    config: DetectorConfig,
    *,
    epochs: int,
    batch_size: int = 2,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    schedule: str = "cosine",
    seed: int = 0,
    device: str | torch.device = "cpu",
    amp: bool = False,
    max_grad_norm: float | None = None,
    samples_per_epoch: int | None = None,
    model: NNet | None = None,
    time_limit_s: float | None = None,
    progress: Callable[[dict[str, float]], None] | None = None,
) -> tuple[NNet, list[dict[str, float]]]:
    """Pooled training of an N-Net on ``scans`` (AdamW; the paper used SGD with momentum and a
    step schedule).

    Seeded end to end: the initial weights, dropout, the patches and the negative pools depend
    only on ``seed`` (the global torch RNG state is restored afterwards).

    Args:
        scans: training scans on ``config``'s grid.
        config: the detector settings.
        epochs: passes over the sampler (>= 1).
        batch_size, max_grad_norm, amp: as in :func:`train_detector_epoch`.
        lr, weight_decay: AdamW settings.
        schedule: ``"cosine"`` (the learning rate decays to 0 over ``epochs``, stepped per
            epoch) or ``"constant"``.
        seed: everything random.
        device: where to train.
        samples_per_epoch: patches per epoch (default: see
            :class:`~survfed.common.detection.sampling.PatchSampler`).
        model: continue training this network instead of a fresh one (moved to ``device``).
        time_limit_s: stop after the epoch during which this many seconds have passed.
        progress: called after each epoch with its statistics plus ``"epoch"``.

    Returns:
        ``(model, history)``: the trained network (train mode, on ``device``) and one dict of
        :func:`train_detector_epoch` statistics per epoch.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    device = torch.device(device)
    sampler = PatchSampler(scans, config, seed=seed, samples_per_epoch=samples_per_epoch)
    history: list[dict[str, float]] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed_from(seed, 0))
        net = (model if model is not None else build_nnet(config)).to(device)
        optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
        scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
            if schedule == "cosine"
            else None
        )
        begin = _time.perf_counter()
        for epoch in range(epochs):
            stats = train_detector_epoch(
                net,
                sampler,
                optimizer,
                config,
                device=device,
                epoch=epoch,
                batch_size=batch_size,
                max_grad_norm=max_grad_norm,
                amp=amp,
            )
            if scheduler is not None:
                scheduler.step()
            stats["epoch"] = float(epoch)
            history.append(stats)
            if progress is not None:
                progress(stats)
            if time_limit_s is not None and _time.perf_counter() - begin >= time_limit_s:
                break
    return net, history


def save_detector(path: str | os.PathLike[str], model: NNet, config: DetectorConfig) -> Path:
    """Write the weights and the config to ``path`` (atomically) and return the path."""
    if not isinstance(model, NNet):
        raise TypeError(f"model must be an NNet, got {type(model).__name__}")
    if not isinstance(config, DetectorConfig):
        raise TypeError(f"config must be a DetectorConfig, got {type(config).__name__}")
    pairs = {
        "width": (model.width, config.width),
        "norm": (model.norm, config.norm),
        "num_anchors": (model.num_anchors, config.num_anchors),
    }
    bad = {n: p for n, p in pairs.items() if p[0] != p[1]}
    if bad:
        detail = ", ".join(f"{n}: model {m!r} vs config {c!r}" for n, (m, c) in bad.items())
        raise ValueError(f"config does not describe model ({detail})")
    from survfed import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "survfed_version": __version__,
        "config": config.to_dict(),
        "state_dict": {name: t.detach().cpu() for name, t in model.state_dict().items()},
    }
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_detector(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> tuple[NNet, DetectorConfig]:
    """Read a file written by :func:`save_detector`; returns ``(model in eval mode, config)``."""
    path = Path(path)
    payload = load_payload(path, what="N-Net detector", map_location=map_location)
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"path: {path} is not a survfed N-Net detector file")
    if payload.get("format_version") != _FORMAT_VERSION:
        raise ValueError(
            f"path: {path} has detector format version {payload.get('format_version')!r}; "
            f"this survfed reads version {_FORMAT_VERSION}"
        )
    config = DetectorConfig.from_dict(payload["config"])
    model = build_nnet(config)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, config
