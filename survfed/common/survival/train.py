"""One local training epoch and batch prediction for the crop survival model.

Used unchanged by the pooled baseline and by each federated site, so the two are comparable:
the same site-stratified mini-batches (:class:`~survfed.common.survival.batching.
SiteStratifiedBatchSampler`), the same two-task loss (:func:`~survfed.common.survival.losses.
two_task_loss`: BCE on ``sigmoid(g)`` for patients with a known cancer label + mini-batched Cox
on ``g``, the batch being the risk set), and optionally the FedProx proximal term
``(mu / 2) * ||w - w_global||^2`` over all trainable parameters.

The dataset is any map-style ``torch.utils.data.Dataset`` whose items are mappings with

* ``"crops"``: ``(k, 1, S, S, S)`` float crops, ``"present"``: ``(k,)`` bool,
* ``"time"``: follow-up (days), ``"event"``: 0/1, ``"cancer"``: 0/1 or NaN (unknown),
* optionally ``"site"``: an integer site code — then the Cox risk sets are additionally
  stratified by site (a no-op with the site-stratified sampler, a safeguard with any other).

:class:`survfed.client.crop_cache.CropDataset` is such a dataset.
"""

from __future__ import annotations

import math
import time as _time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from survfed.common.imaging.augment import random_flip_rotate
from survfed.common.survival.losses import two_task_loss

__all__ = ["LossConfig", "predict", "predict_outputs", "proximal_term", "train_epoch"]


@dataclass(frozen=True)
class LossConfig:
    """Weights and tie handling of the two-task loss (seed 000, eq. 6).

    Attributes:
        cox_weight: weight of the mini-batched Cox term (>= 0).
        bce_weight: weight of the cancer BCE term (>= 0); 0 trains survival only.
        ties: ``"efron"`` or ``"breslow"`` handling of tied event times.
    """

    cox_weight: float = 1.0
    bce_weight: float = 1.0
    ties: Literal["efron", "breslow"] = "efron"

    def __post_init__(self) -> None:
        for name in ("cox_weight", "bce_weight"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.cox_weight == 0 and self.bce_weight == 0:
            raise ValueError("cox_weight and bce_weight are both 0: nothing to train")
        if self.ties not in ("efron", "breslow"):
            raise ValueError(f"ties must be 'efron' or 'breslow', got {self.ties!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LossConfig:
        """Inverse of :meth:`to_dict`; unknown keys are errors."""
        unknown = sorted(set(data) - {"cox_weight", "bce_weight", "ties"})
        if unknown:
            raise ValueError(f"unknown loss config keys {unknown}")
        return cls(**dict(data))


GlobalParams = Mapping[str, torch.Tensor | np.ndarray] | Sequence[torch.Tensor | np.ndarray]


def _global_tensors(
    model: nn.Module, global_params: GlobalParams, device: torch.device
) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """Pair each trainable parameter with its global value (detached, on ``device``)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if isinstance(global_params, Mapping):
        missing = [n for n, _ in named if n not in global_params]
        if missing:
            raise ValueError(f"global_params lacks parameters {missing[:5]} (and maybe more)")
        values = [global_params[n] for n, _ in named]
    else:
        values = list(global_params)
        if len(values) != len(named):
            raise ValueError(
                f"global_params has {len(values)} arrays but the model has {len(named)} "
                "trainable parameters (pass them in model.named_parameters() order or by name)"
            )
    pairs = []
    for (name, p), v in zip(named, values, strict=True):
        t = torch.as_tensor(v).detach().to(device=device, dtype=p.dtype)
        if t.shape != p.shape:
            raise ValueError(
                f"global_params[{name!r}] has shape {tuple(t.shape)}, "
                f"the model's parameter has {tuple(p.shape)}"
            )
        pairs.append((p, t))
    return pairs


def proximal_term(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], mu: float) -> torch.Tensor:
    """FedProx term ``(mu / 2) * sum_p ||w_p - w_global_p||^2`` for ``(w, w_global)`` pairs."""
    total = sum((w - g).pow(2).sum() for w, g in pairs)
    return 0.5 * mu * total  # type: ignore[return-value]


def _batch_to(batch: Mapping[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    out = {}
    for key in ("crops", "present", "time", "event", "cancer"):
        if key not in batch:
            raise KeyError(f"dataset items must hold {key!r} (see survfed.common.survival.train)")
        out[key] = torch.as_tensor(batch[key]).to(device, non_blocking=True)
    if "site" in batch:
        out["site"] = torch.as_tensor(batch["site"]).to(device, non_blocking=True)
    return out


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _progress_bar(progress: bool | Callable[[dict[str, float]], None] | None, total: int):
    if progress is True:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="train", unit="batch", leave=False, disable=None)
    return None


def train_epoch(
    model: nn.Module,
    dataset: Dataset,
    sampler: Sampler[list[int]],
    optimizer: torch.optim.Optimizer,
    loss_cfg: LossConfig,
    *,
    device: str | torch.device,
    proximal_mu: float = 0.0,
    global_params: GlobalParams | None = None,
    progress: bool | Callable[[dict[str, float]], None] | None = None,
    max_grad_norm: float | None = None,
    amp: bool = False,
    num_workers: int = 0,
    augment: torch.Generator | None = None,
) -> dict[str, float]:
    """Train ``model`` for one pass over the batches ``sampler`` yields.

    Args:
        model: maps ``(crops (B, k, 1, S, S, S), present (B, k))`` to ``g`` ``(B,)``; already
            on ``device`` (move it before building the optimizer).
        dataset: see the module docstring for the item format.
        sampler: yields lists of dataset indices (one batch each), e.g. a
            ``SiteStratifiedBatchSampler`` — call its ``set_epoch`` before this function.
        optimizer: over ``model``'s parameters.
        loss_cfg: two-task loss weights and ties.
        device: ``"cuda"``, ``"cpu"`` or a ``torch.device``; chosen by the caller.
        proximal_mu: FedProx ``mu`` (>= 0); 0 disables the proximal term.
        global_params: the weights received from the server at the start of the round, by
            parameter name or in ``model.named_parameters()`` order (trainable ones only).
            Required when ``proximal_mu > 0``.
        progress: ``True`` for a tqdm bar, or a callable receiving the running statistics
            after each batch, or ``None``/``False`` for silence.
        max_grad_norm: clip the gradient norm to this value (``None``: no clipping).
        amp: bf16 autocast for the model's forward pass on CUDA (ignored on CPU).
        num_workers: ``DataLoader`` workers.
        augment: a seeded CPU generator to apply random flips and axial quarter turns to every
            crop (:func:`~survfed.common.imaging.augment.random_flip_rotate`); ``None`` = off.

    Returns:
        ``{"loss", "cox", "bce", "prox"}``: patient-weighted means over the epoch's batches
        (``cox`` over batches with an event, ``bce`` over labelled patients' batches),
        ``"n_patients"`` (patients seen; the FedAvg weight), ``"n_batches"``,
        ``"n_cox_batches"``, ``"n_events"``, ``"seconds"``, ``"crops_per_s"`` (crops through
        the encoder per second, counting all k slots).
    """
    device = torch.device(device)
    if not (isinstance(proximal_mu, int | float) and math.isfinite(proximal_mu)):
        raise ValueError(f"proximal_mu must be a finite number >= 0, got {proximal_mu!r}")
    if proximal_mu < 0:
        raise ValueError(f"proximal_mu must be >= 0, got {proximal_mu!r}")
    if proximal_mu > 0 and global_params is None:
        raise ValueError("global_params is required when proximal_mu > 0 (FedProx)")
    if max_grad_norm is not None and not max_grad_norm > 0:
        raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm!r}")
    if not isinstance(loss_cfg, LossConfig):
        raise TypeError(f"loss_cfg must be a LossConfig, got {type(loss_cfg).__name__}")
    first = next(model.parameters(), None)
    if first is not None and first.device.type != device.type:
        raise ValueError(f"model is on {first.device}, device is {device}: call model.to(device)")
    pairs = _global_tensors(model, global_params, device) if proximal_mu > 0 else []

    loader = DataLoader(
        dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=device.type == "cuda"
    )
    bar = _progress_bar(progress, len(sampler) if hasattr(sampler, "__len__") else 0)
    sums = {"loss": 0.0, "cox": 0.0, "bce": 0.0, "prox": 0.0}
    weights = {"loss": 0, "cox": 0, "bce": 0, "prox": 0}
    n_batches = n_cox = n_events = n_crops = 0
    model.train()
    start = _time.perf_counter()
    for raw in loader:
        batch = _batch_to(raw, device)
        if augment is not None:
            batch["crops"] = random_flip_rotate(batch["crops"], augment)
        b = int(batch["time"].shape[0])
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, amp):
            g, cancer_logit = _outputs(model, batch["crops"], batch["present"])
        parts = two_task_loss(
            g.float(),
            batch["event"],
            batch["time"],
            batch["cancer"],
            cox_weight=loss_cfg.cox_weight,
            bce_weight=loss_cfg.bce_weight,
            ties=loss_cfg.ties,
            strata=batch.get("site"),
            allow_no_events=True,
            cancer_logit=None if cancer_logit is g else cancer_logit.float(),
        )
        loss = parts.total
        if pairs:
            prox = proximal_term(pairs, proximal_mu)
            loss = loss + prox
            sums["prox"] += float(prox.detach()) * b
            weights["prox"] += b
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss in batch {n_batches} (cox={float(parts.cox.detach())}, "
                f"bce={float(parts.bce.detach())}); lower the learning rate or set max_grad_norm"
            )
        loss.backward()
        if max_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()

        sums["loss"] += float(loss.detach()) * b
        weights["loss"] += b
        if parts.n_events > 0 and loss_cfg.cox_weight > 0:
            sums["cox"] += float(parts.cox.detach()) * b
            weights["cox"] += b
            n_cox += 1
        if parts.n_labelled > 0 and loss_cfg.bce_weight > 0:
            sums["bce"] += float(parts.bce.detach()) * b
            weights["bce"] += b
        n_events += parts.n_events
        n_batches += 1
        n_crops += int(batch["present"].numel())
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{sums['loss'] / weights['loss']:.4f}")
        elif callable(progress):
            progress({"batch": n_batches, "loss": float(loss.detach()), "n_patients": b})
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = _time.perf_counter() - start
    if bar is not None:
        bar.close()
    stats: dict[str, float] = {
        key: (sums[key] / weights[key] if weights[key] else float("nan")) for key in sums
    }
    if not pairs:
        stats["prox"] = 0.0
    stats.update(
        n_patients=weights["loss"],
        n_batches=n_batches,
        n_cox_batches=n_cox,
        n_events=n_events,
        seconds=seconds,
        crops_per_s=n_crops / seconds if seconds > 0 else float("nan"),
    )
    return stats


def _outputs(
    model: nn.Module, crops: torch.Tensor, present: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g, cancer_logit)`` of a model with :meth:`~CropSurvivalModel.outputs`, else ``(g, g)``."""
    if hasattr(model, "outputs"):
        return model.outputs(crops, present)
    g = model(crops, present)
    return g, g


def predict(
    model: nn.Module,
    dataset: Dataset,
    *,
    device: str | torch.device,
    batch_size: int = 8,
    amp: bool = False,
    num_workers: int = 0,
) -> np.ndarray:
    """Model output ``g`` for every item of ``dataset``, in dataset order (see
    :func:`predict_outputs`, which also returns the cancer logits)."""
    return predict_outputs(
        model, dataset, device=device, batch_size=batch_size, amp=amp, num_workers=num_workers
    )[0]


def predict_outputs(
    model: nn.Module,
    dataset: Dataset,
    *,
    device: str | torch.device,
    batch_size: int = 8,
    amp: bool = False,
    num_workers: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Log hazards ``g`` and cancer logits for every item of ``dataset``, in dataset order.

    Args:
        model: on ``device``; put in eval mode for the call and restored afterwards.
        dataset: items as for :func:`train_epoch` (only ``crops`` and ``present`` are used).
        device: where to run.
        batch_size: patients per forward pass (>= 1).
        amp: bf16 autocast on CUDA.
        num_workers: ``DataLoader`` workers.

    Returns:
        ``(g, cancer_logit)``, each ``(n,)`` float64; ``1 / (1 + exp(-cancer_logit))`` is the
        cancer probability (equal to ``g`` with the two-task head).
    """
    device = torch.device(device)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    out: list[np.ndarray] = []
    cancer: list[np.ndarray] = []
    try:
        with torch.no_grad():
            for raw in loader:
                crops = torch.as_tensor(raw["crops"]).to(device)
                present = torch.as_tensor(raw["present"]).to(device)
                with _autocast(device, amp):
                    g, logit = _outputs(model, crops, present)
                out.append(g.float().cpu().numpy())
                cancer.append(logit.float().cpu().numpy())
    finally:
        model.train(was_training)
    if not out:
        return np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.float64)
    return np.concatenate(out).astype(np.float64), np.concatenate(cancer).astype(np.float64)
