"""The pooled baseline: one model trained centrally on several sites' patients.

It uses exactly what a federated site uses — the same crops, the same two-task loss and the
same *site-stratified* mini-batches (a batch never mixes sites, so every Cox risk set is
site-local) — so pooled and federated numbers are comparable. Only the data location differs.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from survfed import __version__
from survfed.client.crop_cache import CropDataset
from survfed.client.site_data import SiteData, load_site_data
from survfed.common.config import TrainConfig, resolve_device
from survfed.common.run_folder import RunFolder
from survfed.common.survival.baseline import (
    BaselineHazard,
    baseline_from_aggregates,
    breslow_aggregates,
    make_time_grid,
)
from survfed.common.survival.batching import SiteStratifiedBatchSampler
from survfed.common.survival.metrics import cancer_auc, harrell_c
from survfed.common.survival.model import CropSurvivalModel, save_model
from survfed.common.survival.snapshot import SnapshotMean
from survfed.common.survival.train import predict, predict_outputs, train_epoch

__all__ = ["PooledResult", "fit_baseline", "train_pooled"]


@dataclass(frozen=True)
class PooledResult:
    """What :func:`train_pooled` produced.

    Attributes:
        run_dir: the run folder.
        n_patients: training patients (crop dataset size, all sites).
        n_events: events among them.
        history: one dict of metrics per epoch.
        seconds: wall time of the whole run.
    """

    run_dir: Path
    n_patients: int
    n_events: int
    history: list[dict[str, float]]
    seconds: float


def fit_baseline(
    model: CropSurvivalModel,
    datasets: Sequence[CropDataset],
    config: TrainConfig,
    *,
    device: str,
) -> tuple[BaselineHazard, list[tuple[np.ndarray, np.ndarray]]]:
    """Breslow baseline from per-site aggregates on the common grid (only sums per site)."""
    edges = make_time_grid(config.grid_max_days, config.grid_step_days)
    aggregates = []
    for ds in datasets:
        g = predict(model, ds, device=device, batch_size=32)
        agg = breslow_aggregates(g, ds.times, ds.events, edges)
        aggregates.append((agg.events, agg.risk_sum))
    return baseline_from_aggregates(aggregates, edges), aggregates


def _log_default(message: str) -> None:
    print(message, flush=True)


def train_pooled(
    site_dirs: Sequence[str | Path],
    out: str | Path,
    config: TrainConfig,
    *,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
    log: Callable[[str], None] = _log_default,
) -> PooledResult:
    """Train the crop survival model on the pooled sites and write the run folder.

    Args:
        site_dirs: the training sites' folders (their names are the site names).
        out: the run folder to write (see :mod:`survfed.common.run_folder`).
        config: training settings.
        cache_dir: crop cache (default ``out/cache``).
        progress: progress bars over crops and epochs.
        overwrite: allow an ``out`` that already holds a finished run.
        log: where summary lines go.
    """
    started = time.perf_counter()
    if not site_dirs:
        raise ValueError("site_dirs must name at least one site folder")
    names = [Path(d).name for d in site_dirs]
    if len(set(names)) != len(names):
        raise ValueError(f"site folders must have distinct names, got {names}")
    run = RunFolder(out).create(overwrite=overwrite)
    cache = Path(cache_dir) if cache_dir is not None else run.path / "cache"
    device = resolve_device(config.device)

    sites: list[SiteData] = []
    for site_dir in site_dirs:
        site = load_site_data(site_dir, cache, config.model, progress=progress, in_memory=True)
        log(site.summary_line())
        sites.append(site)
    dataset = CropDataset.concat([s.dataset for s in sites])
    n_events = int(dataset.events.sum())
    run.write_json(
        "config.json",
        {
            "kind": "pooled",
            "survfed_version": __version__,
            "torch_version": torch.__version__,
            "python": platform.python_version(),
            "device": device,
            "sites": {
                s.name: str(Path(d).resolve()) for s, d in zip(sites, site_dirs, strict=True)
            },
            "train": config.to_dict(),
        },
    )

    torch.manual_seed(config.seed)
    model = config.model.build_model().to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    sampler = SiteStratifiedBatchSampler(
        dataset.sites, dataset.events, config.batch_size, seed=config.seed, cox_only=False
    )
    augment = torch.Generator().manual_seed(config.seed) if config.augment else None
    history: list[dict[str, float]] = []
    epochs = range(1, config.epochs + 1)
    n_average = config.averaged_snapshots(config.epochs)
    tail = SnapshotMean()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.epochs, desc="pooled training", unit="epoch", disable=None)
    for epoch in epochs:
        sampler.set_epoch(epoch)
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(epoch - 1, config.epochs)
        stats = train_epoch(
            model,
            dataset,
            sampler,
            optimizer,
            config.loss,
            device=device,
            max_grad_norm=config.max_grad_norm,
            amp=device.startswith("cuda"),
            augment=augment,
            progress=progress,
        )
        g, cancer_logit = predict_outputs(model, dataset, device=device, batch_size=32)
        row = {
            "epoch": epoch,
            "loss": stats["loss"],
            "cox": stats["cox"],
            "bce": stats["bce"],
            "train_c_index": harrell_c(g, dataset.times, dataset.events),
            "train_auc": cancer_auc(cancer_logit, dataset.cancer),
            "n_patients": stats["n_patients"],
            "seconds": stats["seconds"],
            "crops_per_s": stats["crops_per_s"],
        }
        history.append(row)
        run.append_metrics(row)
        if epoch > config.epochs - n_average:
            tail.add(model.state_dict())
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}", c=f"{row['train_c_index'] or 0:.3f}")
    if bar is not None:
        bar.close()
    model.load_state_dict(tail.mean())  # tail averaging (TrainConfig.average_last)

    baseline, aggregates = fit_baseline(model, [s.dataset for s in sites], config, device=device)
    run.write_baseline(baseline, aggregates)
    save_model(run.model_path, model.cpu(), config.model)
    seconds = time.perf_counter() - started
    last = history[-1]
    run.write_json(
        "summary.json",
        {
            "kind": "pooled",
            "n_patients": len(dataset),
            "n_events": n_events,
            "epochs": config.epochs,
            "averaged_epochs": [config.epochs - n_average + 1, config.epochs],
            "final": last,
            "seconds": seconds,
            "excluded": len(dataset.excluded),
        },
    )
    log(
        f"pooled model: {len(dataset)} patients ({n_events} events) from {len(sites)} sites, "
        f"{config.epochs} epochs in {seconds:.0f} s; final train C-index "
        f"{last['train_c_index']:.3f}; run folder {run.path}"
    )
    return PooledResult(run.path, len(dataset), n_events, history, seconds)
