"""One site's part of a federated round, without Flower: train locally, report aggregates.

The ClientApp (:mod:`survfed.app.client_app`) only translates messages; this module does the
work with the shared survival code: site-local Cox mini-batches
(:class:`~survfed.common.survival.batching.SiteStratifiedBatchSampler`), the two-task loss and
the FedProx proximal term (:func:`~survfed.common.survival.train.train_epoch`), and the Breslow
sums on the common grid (:func:`~survfed.common.survival.baseline.breslow_aggregates`).

What it returns is already the egress policy's shape: weights, a patient count, and (for sites
with at least ``min_patients_for_metrics`` patients) scalar aggregates over all patients.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from survfed.client.crop_cache import CropDataset
from survfed.common.config import DetectorTrainConfig, TrainConfig, resolve_device
from survfed.common.survival.baseline import BreslowAggregates, breslow_aggregates, make_time_grid
from survfed.common.survival.batching import SiteStratifiedBatchSampler
from survfed.common.survival.metrics import harrell_c
from survfed.common.survival.model import CropSurvivalModel
from survfed.common.survival.train import predict, train_epoch

__all__ = [
    "TRAIN_METRICS",
    "LocalUpdate",
    "load_optimizer_arrays",
    "local_breslow_aggregates",
    "local_learning_rates",
    "optimizer_arrays",
    "round_seed",
    "train_locally",
]

TRAIN_METRICS = (
    "num-examples",
    "train-loss",
    "train-cox",
    "train-bce",
    "train-prox",
    "train-c-index",
    "train-seconds",
    "site-seconds",
)
"""The only metric names a site's train reply may carry (see the egress whitelist).

``train-seconds`` is the time in the training loop; ``site-seconds`` the whole handler (opening
the data, building the model, training, the training C-index), set by the ClientApp."""

StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class LocalUpdate:
    """What one site's local training produced.

    Attributes:
        state_dict: the updated weights (CPU tensors, same keys as the model's state dict).
        num_examples: training patients (the FedAvg weight).
        metrics: scalar aggregates keyed by :data:`TRAIN_METRICS` names; only
            ``num-examples`` when the site is below ``min_patients_for_metrics``.
        optimizer_state: the site's AdamW moments after the round (flat arrays, see
            :func:`optimizer_arrays`); kept at the site for its next round, never sent.
    """

    state_dict: dict[str, torch.Tensor]
    num_examples: int
    metrics: dict[str, int | float]
    optimizer_state: dict[str, np.ndarray] | None = None


def round_seed(seed: int, server_round: int, site: str) -> int:
    """The batch-shuffling seed of ``site`` in ``server_round``: differs per round and site."""
    if server_round < 0:
        raise ValueError(f"server_round must be >= 0, got {server_round}")
    return int(seed) * 1_000_003 + server_round * 1009 + zlib.crc32(site.encode()) % 1009


def _model_from(state_dict: StateDict, config: TrainConfig, device: str) -> CropSurvivalModel:
    model = config.model.build_model()
    model.load_state_dict(dict(state_dict))
    return model.to(device)


def train_locally(
    state_dict: StateDict,
    dataset: CropDataset,
    config: TrainConfig,
    *,
    site: str,
    server_round: int,
    proximal_mu: float = 0.0,
    min_patients_for_metrics: int = 10,
    optimizer_state: Mapping[str, np.ndarray] | None = None,
    total_rounds: int | None = None,
) -> LocalUpdate:
    """Train the global model ``state_dict`` on the site's patients for ``config.epochs``.

    Args:
        state_dict: the global weights received from the server.
        dataset: the site's crop dataset (all patients of one site).
        config: training settings (``epochs`` = local epochs, ``lr``, ``batch_size``, ...).
        site: the site name (seeds the batch order).
        server_round: the round number (seeds the batch order).
        proximal_mu: FedProx ``mu``; 0 = plain local training (FedAvg/FedAdam).
        min_patients_for_metrics: below this many patients only ``num-examples`` is reported.
        optimizer_state: the site's AdamW moments from its previous round (or ``None`` for a
            fresh optimiser). Carrying them over makes a site's local steps continue like one
            long pooled run instead of restarting Adam's bias correction every round.
        total_rounds: the federation's number of rounds: local epoch ``e`` of round ``r`` is
            epoch ``(r − 1) · epochs + e`` of ``total_rounds · epochs`` in the learning-rate
            schedule (:meth:`TrainConfig.lr_at`), as in a pooled run of that length.
            ``None``: this round is the whole schedule.
    """
    if len(dataset) == 0:
        raise ValueError(f"site {site}: dataset holds no patient")
    device = resolve_device(config.device)
    seed = round_seed(config.seed, server_round, site)
    torch.manual_seed(seed)
    model = _model_from(state_dict, config, device)
    global_params = (
        {n: p.detach().clone() for n, p in model.named_parameters()} if proximal_mu > 0 else None
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    if optimizer_state:
        load_optimizer_arrays(optimizer, optimizer_state)
    sampler = SiteStratifiedBatchSampler(
        dataset.sites,
        dataset.events,
        config.batch_size,
        seed=seed,
        cox_only=False,
    )
    # the same crop augmentation as the pooled baseline, seeded per site and round
    augment = torch.Generator().manual_seed(seed) if config.augment else None
    totals = {"loss": 0.0, "cox": 0.0, "bce": 0.0, "prox": 0.0, "seconds": 0.0}
    for epoch, lr in enumerate(local_learning_rates(config, server_round, total_rounds)):
        sampler.set_epoch(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        stats = train_epoch(
            model,
            dataset,
            sampler,
            optimizer,
            config.loss,
            device=device,
            proximal_mu=proximal_mu,
            global_params=global_params,
            max_grad_norm=config.max_grad_norm,
            amp=device.startswith("cuda"),
            augment=augment,
        )
        for key in ("loss", "cox", "bce", "prox"):
            totals[key] += float(stats[key]) / config.epochs
        totals["seconds"] += float(stats["seconds"])
    n = len(dataset)
    metrics: dict[str, int | float] = {"num-examples": n}
    if n >= min_patients_for_metrics:
        g = predict(model, dataset, device=device, batch_size=32)
        c = harrell_c(g, dataset.times, dataset.events)
        for key in ("loss", "cox", "bce", "prox"):
            if np.isfinite(totals[key]):
                metrics[f"train-{key}"] = totals[key]
        if c is not None and np.isfinite(c):
            metrics["train-c-index"] = float(c)
        metrics["train-seconds"] = totals["seconds"]
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return LocalUpdate(
        state_dict=state,
        num_examples=n,
        metrics=metrics,
        optimizer_state=optimizer_arrays(optimizer),
    )


def local_learning_rates(
    config: TrainConfig | DetectorTrainConfig, server_round: int, total_rounds: int | None
) -> list[float]:
    """The learning rate of each local epoch of ``server_round`` (1-based).

    Local epoch ``e`` of round ``r`` is epoch ``(r − 1) · E + e`` of a pooled run of
    ``total_rounds · E`` epochs (:meth:`TrainConfig.lr_at`), so a federation follows the pooled
    schedule. ``total_rounds=None``: the round is the whole schedule. Rounds beyond
    ``total_rounds`` keep the last round's rates.
    """
    rounds = total_rounds if total_rounds is not None else 1
    if rounds < 1:
        raise ValueError(f"total_rounds must be >= 1, got {total_rounds}")
    first = (min(max(server_round, 1), rounds) - 1) * config.epochs
    return [config.lr_at(first + e, rounds * config.epochs) for e in range(config.epochs)]


def optimizer_arrays(optimizer: torch.optim.Optimizer) -> dict[str, np.ndarray]:
    """An Adam(W) optimiser's per-parameter state as flat arrays ``"<index>.<name>"``."""
    out: dict[str, np.ndarray] = {}
    for index, values in optimizer.state_dict()["state"].items():
        for name, value in values.items():
            out[f"{index}.{name}"] = torch.as_tensor(value).detach().cpu().numpy()
    return out


def load_optimizer_arrays(
    optimizer: torch.optim.Optimizer, arrays: Mapping[str, np.ndarray]
) -> None:
    """Restore what :func:`optimizer_arrays` returned (hyper-parameters stay the optimiser's).

    Arrays whose parameter index or shape does not match (another model) are ignored, so a
    stale state can never break training; it only starts the moments afresh.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in arrays.items():
        index_text, _, name = key.partition(".")
        if not index_text.isdigit() or int(index_text) >= len(params):
            return
        tensor = torch.as_tensor(np.asarray(value))
        if name in ("exp_avg", "exp_avg_sq") and tensor.shape != params[int(index_text)].shape:
            return
        state.setdefault(int(index_text), {})[name] = tensor
    current = optimizer.state_dict()
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})


def local_breslow_aggregates(
    state_dict: StateDict, dataset: CropDataset, config: TrainConfig
) -> BreslowAggregates:
    """The site's Breslow sums (events, risk sum per bin of the common grid) under the model.

    Returns ``events (B,) int64`` and ``risk_sum (B,) float64`` on
    ``make_time_grid(config.grid_max_days, config.grid_step_days)``: sums over the site's
    patients, never per-patient values.
    """
    device = resolve_device(config.device)
    model = _model_from(state_dict, config, device)
    g = predict(model, dataset, device=device, batch_size=32)
    edges = make_time_grid(config.grid_max_days, config.grid_step_days)
    return breslow_aggregates(g, dataset.times, dataset.events, edges)
