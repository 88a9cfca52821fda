"""One site's part of the detector stage, without Flower: detector rounds and proposals.

* :func:`train_detector_locally` — a detector round: the global N-Net is trained on the site's
  annotated scans (patches of :class:`~survfed.common.detection.sampling.PatchSampler`, the
  loss and hard negative mining of seed 003, the FedProx term when asked) and returned with the
  number of annotated patients (the FedAvg weight). A site without annotated patients trains
  nothing and reports zero examples — it is not penalised, it simply has no say in this stage.
* :func:`site_proposals` / :func:`prepare_proposal_crops` — after the detector rounds, the final
  global detector proposes nodules in every usable patient of the site (annotated or not); the
  top-k proposals become the survival crops (cut from the original scan exactly like
  annotation crops). Only counts leave the site.

The ClientApp (:mod:`survfed.app.client_app`) only translates messages to these calls.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from survfed.client.crop_cache import CropDataset, detector_source
from survfed.client.detection_data import ScanRecord, SiteScans, proposals_mm
from survfed.client.local_training import (
    LocalUpdate,
    load_optimizer_arrays,
    local_learning_rates,
    optimizer_arrays,
    round_seed,
)
from survfed.client.site_snapshot import prepare_site, read_manifest
from survfed.common.cache_files import arrays_hash
from survfed.common.config import DetectorTrainConfig, resolve_device
from survfed.common.detection.inference import detect
from survfed.common.detection.nnet import NNet, build_nnet
from survfed.common.detection.sampling import PatchSampler
from survfed.common.detection.train import train_detector_epoch
from survfed.common.imaging.preprocess import PreprocessedScan
from survfed.common.survival.model import ModelConfig

__all__ = [
    "DETECTOR_TRAIN_METRICS",
    "PROPOSAL_METRICS",
    "detector_id",
    "load_detector_state",
    "prepare_proposal_crops",
    "site_proposals",
    "train_detector_locally",
]

DETECTOR_TRAIN_METRICS = (
    "num-examples",
    "det-loss",
    "det-cls",
    "det-reg",
    "det-prox",
    "det-pos-recall",
    "det-patches",
    "train-seconds",
    "site-seconds",
)
"""The only metric names a site's detector-round reply may carry (the egress whitelist)."""

PROPOSAL_METRICS = ("num-examples", "site-seconds")
"""The only metric names a site's proposal reply may carry."""

StateDict = Mapping[str, torch.Tensor]
_DETECTOR_SEED_OFFSET = 7_919  # detector rounds draw other batches than survival rounds


def detector_id(state_dict: Mapping[str, object]) -> str:
    """The id of a detector's weights (16 hex digits), the same at the coordinator and sites."""
    return arrays_hash(state_dict)


def load_detector_state(state_dict: StateDict, config: DetectorTrainConfig, device: str) -> NNet:
    """An N-Net of ``config``'s architecture holding ``state_dict``, on ``device``."""
    model = build_nnet(config.detector)
    model.load_state_dict(dict(state_dict))
    return model.to(device)


def train_detector_locally(
    state_dict: StateDict,
    data: SiteScans,
    config: DetectorTrainConfig,
    *,
    site: str,
    server_round: int,
    total_rounds: int,
    proximal_mu: float = 0.0,
    min_patients_for_metrics: int = 10,
    optimizer_state: Mapping[str, np.ndarray] | None = None,
) -> LocalUpdate:
    """Train the global detector on the site's annotated scans for ``config.epochs`` epochs.

    Returns a :class:`~survfed.client.local_training.LocalUpdate` whose ``num_examples`` is the
    number of annotated patients. With none, ``state_dict`` is empty and ``num_examples`` 0:
    the site sends no weights in this stage.
    """
    n = len(data.scans)
    if n == 0:
        return LocalUpdate(state_dict={}, num_examples=0, metrics={"num-examples": 0})
    device = resolve_device(config.device)
    seed = round_seed(config.seed + _DETECTOR_SEED_OFFSET, server_round, site)
    torch.manual_seed(seed)
    model = load_detector_state(state_dict, config, device)
    global_params = (
        {k: p.detach().clone() for k, p in model.named_parameters()} if proximal_mu > 0 else None
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    if optimizer_state:
        load_optimizer_arrays(optimizer, optimizer_state)
    sampler = PatchSampler(
        data.scans, config.detector, seed=seed, samples_per_epoch=config.samples_per_epoch
    )
    sums = dict.fromkeys(("loss", "cls", "reg", "prox", "pos_recall"), 0.0)
    seconds = patches = 0.0
    rates = local_learning_rates(config, server_round, total_rounds)
    for epoch, lr in enumerate(rates):
        for group in optimizer.param_groups:
            group["lr"] = lr
        stats = train_detector_epoch(
            model,
            sampler,
            optimizer,
            config.detector,
            device=device,
            epoch=epoch,
            batch_size=config.batch_size,
            proximal_mu=proximal_mu,
            global_params=global_params,
            max_grad_norm=config.max_grad_norm,
            amp=device.startswith("cuda"),
        )
        for key in sums:
            if np.isfinite(stats[key]):
                sums[key] += float(stats[key]) / len(rates)
        seconds += float(stats["seconds"])
        patches += float(stats["n_patches"])
    metrics: dict[str, int | float] = {"num-examples": n}
    if n >= min_patients_for_metrics:
        metrics.update(
            {
                "det-loss": sums["loss"],
                "det-cls": sums["cls"],
                "det-reg": sums["reg"],
                "det-prox": sums["prox"],
                "det-pos-recall": sums["pos_recall"],
                "det-patches": patches,
                "train-seconds": seconds,
            }
        )
    return LocalUpdate(
        state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
        num_examples=n,
        metrics=metrics,
        optimizer_state=optimizer_arrays(optimizer),
    )


def site_proposals(
    model: NNet,
    records: Sequence[ScanRecord],
    config: DetectorTrainConfig,
    *,
    device: str,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """The detector's proposals for every record: patient id → ``(n, 5)`` ``(x, y, z,
    diameter mm, confidence)`` in patient mm, most confident first (at most ``max_proposals``).
    Records whose preprocessed scan cannot be read are left out."""
    from survfed.client.detection_data import lung_box
    from survfed.common.imaging.preprocess import ScanFileError

    model.eval()
    out: dict[str, np.ndarray] = {}
    for i, record in enumerate(records):
        try:
            scan = PreprocessedScan.load(record.path)
        except (OSError, ScanFileError):
            continue
        props = detect(
            model,
            scan.image,
            config.detector,
            device=device,
            amp=device.startswith("cuda"),
            lung_box=lung_box(scan),
        )
        out[record.patient_id] = proposals_mm(scan, props)
        if progress is not None:
            progress(i + 1, len(records))
    return out


def prepare_proposal_crops(
    site: str,
    data_dir: str | Path,
    cache_dir: str | Path,
    model_config: ModelConfig,
    state_dict: StateDict,
    config: DetectorTrainConfig,
    records: Sequence[ScanRecord],
    *,
    progress: bool = False,
) -> CropDataset:
    """Survival crops at the top-k proposals of the detector ``state_dict`` (cached per detector).

    Reuses the crops when the site already made them for this detector (a resumed run asks
    again); otherwise runs the detector on every record, then cuts the crops from the original
    scans and writes the manifest the survival rounds open.
    """
    source = detector_source(detector_id(state_dict))
    cached = read_manifest(cache_dir, model_config, site, data_dir, source)
    if cached is not None:
        return cached
    device = resolve_device(config.device)
    with torch.inference_mode():
        model = load_detector_state(state_dict, config, device)
        proposals = site_proposals(model, records, config, device=device)
    k = model_config.k
    centres = {pid: p[:k, :3] for pid, p in proposals.items()}
    return prepare_site(
        site, data_dir, cache_dir, model_config, progress=progress, source=source,
        centres_mm=centres,
    )  # fmt: skip
