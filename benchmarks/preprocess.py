"""Lung preprocessing (seed 003) per standard-preset scan: DICOM read, CPU path, GPU path.

Writes a `standard`-preset cohort (512×512 slices; the stanford profile has 1.25–2 mm slices,
so ~150–300 slices a scan) unless --out holds one, then for each patient times

* reading the DICOM series into HU (survfed's reader),
* the CPU path (SimpleITK + SciPy), with seconds per step,
* the GPU path (torch on CUDA, CuPy for the component steps when installed), after one warm-up
  scan, and the whole way from DICOM files to the cached tensor on the GPU (read + GPU path +
  writing the cache file),

and prints a markdown table, with the lung Dice against the generator's truth mask.
``--real-ct DIR`` adds the three real chest CT scans that ``make real-ct`` fetches (512 × 512
with 5 mm slices, and a 1.5 mm CT angiography; no truth mask), written as a site of DICOM
files first; with ``--patients 0`` they are the only scans.

    python benchmarks/preprocess.py [--out DIR] [--patients 2] [--site stanford] [--spacing 1]
        [--workers N] [--real-ct .cache/real-ct]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from survfed.client.catalogue import catalogue_site
from survfed.common.imaging.preprocess import PreprocessConfig, preprocess_volume
from survfed.common.synth.cohort import make_cohort

STEPS = ("resample", "binarize", "components", "separate", "hull_dilate", "normalize")


def _dice(scan, truth_path: Path) -> float:
    truth = sitk.ReadImage(str(truth_path))
    image = sitk.GetImageFromArray(scan.lung_labels)
    image.SetSpacing(scan.spacing_mm[::-1])
    image.SetOrigin(scan.origin_mm)
    back = sitk.GetArrayFromImage(
        sitk.Resample(image, truth, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    )
    a, b = back > 0, sitk.GetArrayFromImage(truth) > 0
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _cupy() -> str:
    from survfed.common.imaging.preprocess.backend import cupy_backend

    return "CuPy" if cupy_backend() is not None else "CPU (no CuPy)"


def _real_ct_module():
    """``benchmarks/fetch_real_ct.py``, which writes the real scans as a site."""
    path = Path(__file__).with_name("fetch_real_ct.py")
    spec = importlib.util.spec_from_file_location("fetch_real_ct", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="cohort folder (kept if given)")
    parser.add_argument(
        "--patients", type=int, default=2, help="patients to generate (0: the real scans only)"
    )
    parser.add_argument("--site", default="stanford", help="site profile to generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spacing", type=float, default=1.0, help="target spacing, mm")
    parser.add_argument(
        "--workers", type=int, default=None, help="processes writing the cohort (default 2)"
    )
    parser.add_argument(
        "--real-ct", type=Path, default=None, metavar="DIR", help="also the real scans in DIR"
    )
    args = parser.parse_args()

    tmp = None
    out = args.out
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="survfed-bench-pp-")
        out = Path(tmp.name) / "cohort"
    if args.patients > 0 and not (out / "_truth").exists():
        started = time.perf_counter()
        make_cohort(
            out,
            {args.site: args.patients},
            seed=args.seed,
            preset="standard",
            workers=args.workers,
            progress=True,
        )
        print(
            f"generated {args.site}:{args.patients} (standard) in "
            f"{time.perf_counter() - started:.1f} s"
        )
    config = PreprocessConfig(spacing_mm=args.spacing)
    cuda = torch.cuda.is_available()
    device_name = torch.cuda.get_device_name(0) if cuda else "no CUDA device"
    cpu_name = f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}"
    print(f"\nCPU: {cpu_name}; GPU: {device_name}" + (f", components on {_cupy()}" if cuda else ""))

    rows, step_rows = [], []
    warmed = False
    names = (
        sorted(p.name for p in out.iterdir() if p.is_dir() and p.name[0] != "_")
        if args.patients > 0
        else []
    )
    sites = [(out / n, out / "_truth" / n) for n in names]
    scratch_site = None
    if args.real_ct is not None:
        scratch_site = tempfile.TemporaryDirectory(prefix="survfed-bench-real-ct-")
        _real_ct_module().write_site(args.real_ct, Path(scratch_site.name))
        sites.append((Path(scratch_site.name), None))
    for site_dir, truth_dir in sites:
        catalogue = catalogue_site(site_dir)
        for patient in catalogue.usable_patients:
            pid = patient.patient_id
            start = time.perf_counter()
            volume = catalogue.load_volume(pid)
            read_s = time.perf_counter() - start
            start = time.perf_counter()
            cpu = preprocess_volume(volume, config, device="cpu")
            cpu_s = time.perf_counter() - start
            dice = _dice(cpu, truth_dir / f"{pid}_lung.nii.gz") if truth_dir else float("nan")
            step_rows.append((pid, [cpu.timings.get(s, 0.0) for s in STEPS]))
            gpu_s = total_s = float("nan")
            agree = ""
            if cuda:
                if not warmed:
                    preprocess_volume(volume, config, device="cuda")
                    warmed = True
                torch.cuda.synchronize()
                start = time.perf_counter()
                gpu = preprocess_volume(volume, config, device="cuda")
                gpu_s = time.perf_counter() - start
                same = np.abs(gpu.image.astype(int) - cpu.image.astype(int)) <= 1
                agree = f"{100 * same.mean():.3f} %"
                with tempfile.TemporaryDirectory() as scratch:
                    start = time.perf_counter()
                    again = catalogue.load_volume(pid)
                    preprocess_volume(again, config, device="cuda").save(Path(scratch) / "s.npz")
                    total_s = time.perf_counter() - start
            rows.append(
                (pid, volume.shape, volume.spacing[0], read_s, cpu_s, gpu_s, total_s, dice, agree)
            )

    print(f"\n### Seconds per scan ({args.spacing:g} mm grid)\n")
    print(
        "| patient | shape (k, j, i) | slice mm | DICOM read s | CPU path s | GPU path s "
        "| CPU / GPU | DICOM → cached tensor (GPU) s | lung Dice | uint8 ±1 CPU vs GPU |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for pid, shape, sk, read_s, cpu_s, gpu_s, total_s, dice, agree in rows:
        gpu = f"{gpu_s:.2f}" if cuda else "no CUDA device"
        ratio = f"{cpu_s / gpu_s:.1f}×" if cuda else "no CUDA device"
        total = f"{total_s:.2f}" if cuda else "no CUDA device"
        print(
            f"| {pid} | {shape} | {sk:.2f} | {read_s:.2f} | {cpu_s:.2f} | {gpu} | {ratio} "
            f"| {total} | {'no truth' if np.isnan(dice) else f'{dice:.4f}'} "
            f"| {agree or 'no CUDA device'} |"
        )
    print("\n### CPU path, seconds per step\n")
    print("| patient | " + " | ".join(STEPS) + " |")
    print("|---|" + "---:|" * len(STEPS))
    for pid, times in step_rows:
        print(f"| {pid} | " + " | ".join(f"{t:.2f}" for t in times) + " |")
    if rows:
        print(
            f"\nmedian CPU path {statistics.median(r[4] for r in rows):.2f} s per scan "
            f"(seed 003's published CPU code: ~85 s on one core for 300×512×512, DESIGN.md)"
        )
    for folder in (tmp, scratch_site):
        if folder is not None:
            folder.cleanup()


if __name__ == "__main__":
    main()
