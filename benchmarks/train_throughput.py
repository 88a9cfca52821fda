"""Training throughput of the crop survival model, per encoder, on this machine.

Prints a markdown table: encoder, parameters, crops per second through forward + backward +
optimizer step at a batch of ``B`` patients × ``k`` crops (all present; median step time after
warm-up), and seconds per epoch of :func:`survfed.common.survival.train.train_epoch` (its second
epoch) on a tiny synthetic cohort (random crops, two sites, site-stratified batches). Runs on
CUDA when available (bf16 autocast with ``--amp``), else on CPU; ``--device`` overrides.

    PYTHONPATH=. python benchmarks/train_throughput.py
    PYTHONPATH=. python benchmarks/train_throughput.py --encoders small resnet18 --batch 2
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from torch.utils.data import Dataset

from survfed.common.survival.batching import SiteStratifiedBatchSampler
from survfed.common.survival.encoders import ENCODER_NAMES, count_parameters
from survfed.common.survival.model import CropSurvivalModel
from survfed.common.survival.train import LossConfig, train_epoch


class _RandomCohort(Dataset):
    """``n`` patients of random crops with random outcomes, two sites."""

    def __init__(self, n: int, k: int, size: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.crops = rng.random((n, k, 1, size, size, size), dtype=np.float32)
        self.present = np.ones((n, k), dtype=bool)
        self.times = rng.uniform(30, 2000, n).astype(np.float32)
        self.events = (rng.random(n) < 0.6).astype(np.float32)
        self.events[:2] = 1.0
        self.events[n // 2 : n // 2 + 2] = 1.0
        self.cancer = (rng.random(n) < 0.5).astype(np.float32)
        self.sites = np.repeat([0, 1], [n // 2, n - n // 2])

    def __len__(self) -> int:
        return len(self.times)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "crops": torch.from_numpy(self.crops[i]),
            "present": torch.from_numpy(self.present[i]),
            "time": torch.tensor(self.times[i]),
            "event": torch.tensor(self.events[i]),
            "cancer": torch.tensor(self.cancer[i]),
            "site": torch.tensor(self.sites[i]),
        }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_rate(
    model: CropSurvivalModel,
    batch: int,
    device: torch.device,
    amp: bool,
    warmup: int,
    repeats: int,
) -> float:
    """Crops per second through forward + backward + Adam step (median step time)."""
    k, s = model.k, model.crop_size
    crops = torch.rand(batch, k, 1, s, s, s, device=device)
    present = torch.ones(batch, k, dtype=torch.bool, device=device)
    target = torch.randn(batch, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    ctx = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if amp and device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    seconds = []
    for n in range(warmup + repeats):
        _sync(device)
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with ctx:
            g = model(crops, present)
        loss = (g.float() - target).pow(2).mean()
        loss.backward()
        opt.step()
        _sync(device)
        if n >= warmup:
            seconds.append(time.perf_counter() - start)
    return batch * k / float(np.median(seconds))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--encoders", nargs="+", default=list(ENCODER_NAMES), choices=ENCODER_NAMES)
    parser.add_argument("--batch", type=int, default=2, help="patients per step (B)")
    parser.add_argument("--k", type=int, default=5, help="crops per patient")
    parser.add_argument("--crop-size", type=int, default=32)
    parser.add_argument("--cohort", type=int, default=8, help="patients in the tiny cohort")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
        torch.backends.cudnn.benchmark = True
    else:
        where = (
            f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        )
    print(
        f"device: {where}; torch {torch.__version__}; B={args.batch} patients x k={args.k} "
        f"crops of {args.crop_size}^3; tiny cohort {args.cohort} patients; amp={args.amp}\n"
    )
    print("| encoder | parameters | crops/s (fwd+bwd+step) | s/epoch (tiny cohort) |")
    print("| --- | ---: | ---: | ---: |")
    cohort = _RandomCohort(args.cohort, args.k, args.crop_size)
    for name in args.encoders:
        torch.manual_seed(0)
        model = CropSurvivalModel(name, k=args.k, crop_size=args.crop_size).to(device)
        params = count_parameters(model)
        rate = _step_rate(model, args.batch, device, args.amp, args.warmup, args.repeats)
        sampler = SiteStratifiedBatchSampler(
            cohort.sites, cohort.events, batch_size=max(args.batch, 2), seed=0
        )
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        train_epoch(model, cohort, sampler, opt, LossConfig(), device=device, amp=args.amp)
        stats = train_epoch(model, cohort, sampler, opt, LossConfig(), device=device, amp=args.amp)
        print(f"| {name} | {params:,} | {rate:,.1f} | {stats['seconds']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
