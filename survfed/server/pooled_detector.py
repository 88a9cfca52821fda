"""The pooled detector baseline: one N-Net trained centrally on several sites' annotated scans.

It uses what a federated site uses — the same lung preprocessing, patch sampler, loss, hard
negative mining, learning-rate schedule and tail averaging
(:class:`~survfed.common.config.DetectorTrainConfig`) — so its CPM is the yardstick of the
federated detector's. A federation of ``R`` rounds × ``E`` local epochs compares with a pooled
run of ``R · E`` epochs; with ``samples_per_epoch = S`` per site, a pooled epoch draws ``S``
patches per annotated site.

Run folder: ``config.json``, ``detector.pt``, ``metrics.csv`` (one row per epoch),
``summary.json``.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from survfed import __version__
from survfed.client.detection_data import load_scans, prepare_scans
from survfed.common.config import DetectorTrainConfig, resolve_device
from survfed.common.detection.nnet import build_nnet
from survfed.common.detection.sampling import PatchSampler
from survfed.common.detection.scan import DetectionScan
from survfed.common.detection.train import save_detector, train_detector_epoch
from survfed.common.run_folder import RunFolder
from survfed.common.survival.snapshot import SnapshotMean

__all__ = ["DETECTOR_FILE", "PooledDetectorResult", "train_pooled_detector"]

DETECTOR_FILE = "detector.pt"


@dataclass(frozen=True)
class PooledDetectorResult:
    """What :func:`train_pooled_detector` produced.

    Attributes:
        run_dir: the run folder.
        n_scans: annotated training scans (all sites).
        n_nodules: their annotated nodules.
        history: one dict of training statistics per epoch.
        seconds: wall time of the whole run.
    """

    run_dir: Path
    n_scans: int
    n_nodules: int
    history: list[dict[str, float]]
    seconds: float


def _log_default(message: str) -> None:
    print(message, flush=True)


def train_pooled_detector(
    site_dirs: Sequence[str | Path],
    out: str | Path,
    config: DetectorTrainConfig,
    *,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
    log: Callable[[str], None] = _log_default,
) -> PooledDetectorResult:
    """Train the N-Net on the pooled annotated scans of ``site_dirs``; write the run folder."""
    started = time.perf_counter()
    if not site_dirs:
        raise ValueError("site_dirs must name at least one site folder")
    names = [Path(d).name for d in site_dirs]
    if len(set(names)) != len(names):
        raise ValueError(f"site folders must have distinct names, got {names}")
    if (Path(out) / DETECTOR_FILE).exists() and not overwrite:
        raise FileExistsError(
            f"{out} already holds a trained detector ({DETECTOR_FILE}); choose another --out or "
            "pass --overwrite"
        )
    run = RunFolder(out).create(overwrite=overwrite)
    cache = Path(cache_dir) if cache_dir is not None else run.path / "cache"
    device = resolve_device(config.device)
    scans: list[DetectionScan] = []
    annotated_sites = 0
    for site_dir in site_dirs:
        name = Path(site_dir).name
        records, result = prepare_scans(
            name, site_dir, cache / name, config.preprocess_config(), device=config.device,
            progress=progress,
        )  # fmt: skip
        site = load_scans(records)
        erased = result.n_nodules_outside_mask
        log(
            f"{name}: {len(records)} scans preprocessed ({result.n_failed} failed), "
            f"{len(site.scans)} annotated with {site.n_nodules} nodules"
            + (
                f"; {erased} annotated nodule(s) greyed out by the lung mask (`survfed preprocess "
                f"{site_dir}` names them)"
                if erased
                else ""
            )
        )
        scans.extend(site.scans)
        annotated_sites += bool(site.scans)
    if not scans:
        raise ValueError(f"none of the sites {names} has an annotated, preprocessed scan")
    run.write_json(
        "config.json",
        {
            "kind": "pooled-detector",
            "survfed_version": __version__,
            "torch_version": torch.__version__,
            "python": platform.python_version(),
            "device": device,
            "sites": {n: str(Path(d).resolve()) for n, d in zip(names, site_dirs, strict=True)},
            "detector": config.to_dict(),
        },
    )
    per_epoch = config.samples_per_epoch * annotated_sites if config.samples_per_epoch else None
    sampler = PatchSampler(scans, config.detector, seed=config.seed, samples_per_epoch=per_epoch)
    torch.manual_seed(config.seed)
    model = build_nnet(config.detector).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    n_average = config.averaged_snapshots(config.epochs)
    tail = SnapshotMean()
    history: list[dict[str, float]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.epochs, desc="pooled detector", unit="epoch", disable=None)
    for epoch in range(config.epochs):
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(epoch, config.epochs)
        stats = train_detector_epoch(
            model,
            sampler,
            optimizer,
            config.detector,
            device=device,
            epoch=epoch,
            batch_size=config.batch_size,
            max_grad_norm=config.max_grad_norm,
            amp=device.startswith("cuda"),
        )
        row = {"epoch": epoch + 1, **stats}
        history.append(row)
        run.append_metrics(row)
        if epoch >= config.epochs - n_average:
            tail.add(model.state_dict())
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.3f}")
    if bar is not None:
        bar.close()
    model.load_state_dict(tail.mean())
    save_detector(run.path / DETECTOR_FILE, model.cpu(), config.detector)
    seconds = time.perf_counter() - started
    n_nodules = int(sum(len(s.nodules) for s in scans))
    run.write_json(
        "summary.json",
        {
            "kind": "pooled-detector",
            "n_scans": len(scans),
            "n_nodules": n_nodules,
            "epochs": config.epochs,
            "averaged_epochs": [config.epochs - n_average + 1, config.epochs],
            "final": history[-1],
            "seconds": seconds,
        },
    )
    log(
        f"pooled detector: {len(scans)} scans ({n_nodules} nodules) from {len(site_dirs)} "
        f"sites, {config.epochs} epochs in {seconds:.0f} s; run folder {run.path}"
    )
    return PooledDetectorResult(run.path, len(scans), n_nodules, history, seconds)
