"""N-Net detector throughput: training patches/s and whole-scan inference seconds.

Prints a markdown table per device (CPU always; CUDA with bf16 autocast when present): what was
timed, the measurement, its FLOPs (``torch.utils.flop_counter.FlopCounterMode``, counted on the
meta device), and an upper bound = FLOPs / the device's measured matrix throughput (a large
``torch.matmul``: fp32 on CPU, bf16 on CUDA), so "% of bound" says how much of the hardware the
N-Net uses. Also the patch sampler's items/s (CPU work that feeds training).

    PYTHONPATH=. python benchmarks/detector.py
    PYTHONPATH=. python benchmarks/detector.py --paper-on-cpu   # also the 24-wide net on CPU
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from survfed.common.detection.config import DetectorConfig, cpu_preset
from survfed.common.detection.inference import detect, mirror_views, tile_spans
from survfed.common.detection.loss import nnet_loss
from survfed.common.detection.nnet import build_nnet
from survfed.common.detection.sampling import PatchSampler
from survfed.common.detection.synthetic import synthetic_scan


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def matmul_flops_per_s(device: torch.device, repeats: int = 5) -> float:
    """Measured dense matmul throughput: fp32 2048² on CPU, bf16 8192² on CUDA (median)."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (2048, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def _flops(cfg: DetectorConfig, shape: tuple[int, int, int], batch: int, backward: bool) -> float:
    model = build_nnet(cfg).to("meta")
    counter = FlopCounterMode(display=False)
    x = torch.zeros((batch, 1, *shape), device="meta")
    coord = torch.zeros((batch, 3, *(s // 4 for s in shape)), device="meta")
    with counter:
        out = model(x, coord)
        if backward:
            out.sum().backward()
    return float(counter.get_total_flops())


def train_rate(
    cfg: DetectorConfig, device: torch.device, batch: int, warmup: int, repeats: int
) -> tuple[float, float]:
    """(patches/s through forward + loss + backward + AdamW step, FLOPs per patch)."""
    torch.manual_seed(0)
    p, d, a = cfg.patch_size, cfg.output_size, cfg.num_anchors
    model = build_nnet(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 1, p, p, p, device=device)
    coord = torch.rand(batch, 3, d, d, d, device=device) * 2 - 1
    labels = torch.zeros((batch, d, d, d, a), dtype=torch.int8)
    labels[:, d // 2, d // 2, d // 2, 1] = 1
    targets = {
        "labels": labels.to(device),
        "deltas": torch.zeros((batch, d, d, d, a, 4), device=device),
    }
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(warmup + repeats):
        _sync(device)
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with _autocast(device):
            out = model(x, coord)
        loss, _ = nnet_loss(
            out.float(), targets, num_hard=cfg.num_hard, neg_pool=cfg.neg_pool, generator=gen
        )
        loss.backward()
        opt.step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return batch / statistics.median(times), _flops(cfg, (p, p, p), 1, backward=True)


def inference_time(
    cfg: DetectorConfig, device: torch.device, shape: tuple[int, int, int], repeats: int
) -> tuple[float, float]:
    """(median seconds of :func:`detect` on a synthetic scan of ``shape``, forward FLOPs; four
    passes with ``mirror_tta``)."""
    torch.manual_seed(0)
    scan = synthetic_scan(np.random.default_rng(0), shape, (10.0, 20.0))
    model = build_nnet(cfg).to(device).eval()
    amp = device.type == "cuda"
    detect(model, scan.image, cfg, device=device, amp=amp)  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        detect(model, scan.image, cfg, device=device, amp=amp)
        _sync(device)
        times.append(time.perf_counter() - t)
    spans = [tile_spans(n, cfg.tile_size, cfg.tile_overlap) for n in shape]
    tiles: dict[tuple[int, int, int], int] = {}
    for tile in itertools.product(*spans):
        size = tuple(t[1] for t in tile)
        tiles[size] = tiles.get(size, 0) + 1  # type: ignore[index]
    flops = sum(n * _flops(cfg, size, 1, backward=False) for size, n in tiles.items())
    return statistics.median(times), flops * len(mirror_views(cfg))


def sampler_rate(cfg: DetectorConfig, shape: tuple[int, int, int], n: int = 20) -> float:
    """Training items per second built by :class:`PatchSampler` (one CPU thread)."""
    rng = np.random.default_rng(0)
    scans = [synthetic_scan(rng, shape, (8.0, 14.0)) for _ in range(2)]
    sampler = PatchSampler(scans, cfg, seed=0, samples_per_epoch=n)
    t = time.perf_counter()
    for i in range(n):
        sampler[i]
    return n / (time.perf_counter() - t)


def _row(device: str, name: str, what: str, value: str, flops: float, bound: str, pct: str) -> str:
    return f"| {device} | {name} | {what} | {value} | {flops / 1e9:,.1f} | {bound} | {pct} |"


def _cuda_rows(repeats: int) -> None:
    """The CUDA rows (bf16 autocast): the paper's N-Net, each row also with cuDNN's autotuner
    (``cudnn.benchmark``: survfed leaves it off); a row that runs out of memory says so."""
    gpu = torch.device("cuda")
    peak = matmul_flops_per_s(gpu)
    print(f"| cuda | matmul bf16 8192² | GFLOP/s | {peak / 1e9:,.0f} | | | |")
    print(f"| cuda | {torch.cuda.get_device_name(gpu)} | | | | | |")
    paper = DetectorConfig()
    shape = (300, 350, 350)
    cases = [("train", 2, False, False), ("train", 8, False, False), ("train", 8, False, True)]
    cases += [("detect", 1, False, False), ("detect", 1, True, False), ("detect", 1, False, True)]
    for kind, batch, tta, tuned in cases:
        tag = ", cudnn.benchmark" if tuned else ""
        try:
            with torch.backends.cudnn.flags(enabled=True, benchmark=tuned):
                if kind == "train":
                    rate, flops = train_rate(paper, gpu, batch, warmup=3, repeats=10)
                    bound = peak / flops
                    what, value = f"train patches/s (batch {batch}{tag})", f"{rate:.1f}"
                    bound_text, pct = f"{bound:.1f}", f"{100 * rate / bound:.0f}%"
                else:
                    cfg = paper.replace(mirror_tta=tta)
                    sec, flops = inference_time(cfg, gpu, shape, repeats=max(3, repeats))
                    mirrored = ", mirrored" if tta else ""
                    what = f"detect s/scan {'×'.join(map(str, shape))}{mirrored}{tag}"
                    value, bound_text = f"{sec:.2f}", f"{flops / peak:.3f}"
                    pct = f"{100 * flops / peak / sec:.0f}%"
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            print(f"| cuda bf16 | paper | {kind} batch {batch}{tag} | out of memory | | | |")
            continue
        name = "paper (w24, 128³)" if kind == "train" else "paper (w24, 208³ tiles)"
        print(_row("cuda bf16", name, what, value, flops, bound_text, pct))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2, help="patches per training step")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--paper-on-cpu", action="store_true", help="also width 24 on CPU")
    args = parser.parse_args()

    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} CPU threads\n"
    )
    print("| device | config | measured | value | GFLOP | upper bound | % of bound |")
    print("|---|---|---|---:|---:|---:|---:|")
    cpu = torch.device("cpu")
    cpu_peak = matmul_flops_per_s(cpu)
    preset = cpu_preset()
    runs = [("cpu", "cpu preset (w8, 64³)", preset, (80, 120, 120))]
    if args.paper_on_cpu:
        runs.append(("cpu", "paper (w24, 128³)", DetectorConfig(), (80, 120, 120)))
    for dev_name, name, cfg, shape in runs:
        rate, flops = train_rate(cfg, cpu, args.batch, warmup=1, repeats=args.repeats)
        bound = cpu_peak / flops
        print(
            _row(
                dev_name,
                name,
                f"train patches/s (batch {args.batch})",
                f"{rate:.2f}",
                flops,
                f"{bound:.2f}",
                f"{100 * rate / bound:.0f}%",
            )
        )
        for tta in (False, True):
            sec, flops = inference_time(cfg.replace(mirror_tta=tta), cpu, shape, args.repeats)
            bound_s = flops / cpu_peak
            print(
                _row(
                    dev_name,
                    name,
                    f"detect s/scan {'×'.join(map(str, shape))}{', mirrored' if tta else ''}",
                    f"{sec:.2f}",
                    flops,
                    f"{bound_s:.2f}",
                    f"{100 * bound_s / sec:.0f}%",
                )
            )
    items = sampler_rate(preset, (80, 120, 120))
    print(f"| cpu | cpu preset | sampler items/s (1 thread) | {items:.0f} | | | |")
    print(f"| cpu | matmul fp32 2048² | GFLOP/s | {cpu_peak / 1e9:.0f} | | | |")
    if torch.cuda.is_available():
        _cuda_rows(args.repeats)
    else:
        print("| cuda | — | no CUDA device | — | | | |")


if __name__ == "__main__":
    main()
