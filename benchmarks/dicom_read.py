"""DICOM read throughput: survfed's series reader vs SimpleITK's, per transfer syntax.

Writes a `standard`-preset cohort (512×512 slices at realistic spacing; one patient per site
profile, so uncompressed, RLE Lossless and JPEG-LS/JPEG 2000 series are all timed), then reads
each patient's chosen series with survfed's catalogue and with SimpleITK's ImageSeriesReader and
prints a markdown table: slices, MB on disk, MB of HU voxels, seconds per series, MB/s.

A second table times the catalogue's header scan (``read_headers``, no header cache) per file,
on one thread, on eight, and as chosen automatically, with the files in the page cache ("warm")
and after dropping them from it with ``posix_fadvise`` ("cold": read from the disk again); and,
warm, on 2 and on all cores' worker processes (``processes``; the file list is repeated up to
2,000 files, since processes are started only from ``PROCESS_MIN_FILES``).

    python benchmarks/dicom_read.py [--out DIR] [--repeats 3] [--sites iowa:1,maastro:1,stanford:1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import pydicom
import SimpleITK as sitk

from survfed.client.catalogue import catalogue_site
from survfed.client.header_cache import DEFAULT_THREADS, PROCESS_MIN_FILES, read_headers
from survfed.common.synth.cohort import make_cohort, parse_sites


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _drop_from_page_cache(files: list[Path]) -> None:
    """Ask the kernel to forget the files' cached pages (Linux; a no-op elsewhere)."""
    if not hasattr(os, "posix_fadvise"):
        return
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _header_scan_rows(files: list[Path]) -> list[tuple[str, str, float]]:
    """(page cache, threads, ms per file) of ``read_headers`` over ``files``."""
    rows = []
    for state in ("warm", "cold"):
        for label, threads in (("1", 1), (str(DEFAULT_THREADS), DEFAULT_THREADS), ("auto", None)):
            if state == "cold":
                _drop_from_page_cache(files)
            else:
                read_headers(files, threads=1)  # into the page cache
            start = time.perf_counter()
            read_headers(files, threads=threads)
            rows.append((state, label, (time.perf_counter() - start) / len(files) * 1e3))
    many = files * -(-max(2000, PROCESS_MIN_FILES) // len(files))
    read_headers(files, threads=1)  # into the page cache
    for processes in sorted({2, os.cpu_count() or 2}):
        start = time.perf_counter()
        read_headers(many, threads=1, processes=processes)
        elapsed = (time.perf_counter() - start) / len(many) * 1e3
        rows.append(("warm", f"{processes} processes ({len(many)} files)", elapsed))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="cohort folder (kept if given)")
    parser.add_argument("--sites", default="iowa:1,maastro:1,stanford:1")
    parser.add_argument("--preset", default="standard", choices=("tiny", "standard"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    tmp = None
    out = args.out
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="survfed-bench-")
        out = Path(tmp.name) / "cohort"
    if not (out / "_truth").exists():
        started = time.perf_counter()
        make_cohort(out, parse_sites(args.sites), seed=0, preset=args.preset, progress=True)
        print(f"generated {args.sites} ({args.preset}) in {time.perf_counter() - started:.1f} s")

    rows = []
    for site in parse_sites(args.sites):
        catalogue = catalogue_site(out / site)
        for patient in catalogue.usable_patients:
            files = [Path(f) for f in patient.files]
            disk_mb = sum(f.stat().st_size for f in files) / 1e6
            syntax = pydicom.dcmread(files[0], stop_before_pixels=True).file_meta
            syntax_name = syntax.TransferSyntaxUID.name
            volume = catalogue.load_volume(patient.patient_id)
            voxel_mb = volume.array.size * 2 / 1e6  # int16-equivalent payload
            ours = _time(
                lambda c=catalogue, pid=patient.patient_id: c.load_volume(pid), args.repeats
            )

            def _sitk(files=files):
                reader = sitk.ImageSeriesReader()
                names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(files[0].parent))
                reader.SetFileNames(names if len(names) == len(files) else [str(f) for f in files])
                return reader.Execute()

            try:
                ref = _time(_sitk, args.repeats)
            except RuntimeError:
                ref = float("nan")
            rows.append(
                (site, syntax_name, volume.shape, disk_mb, voxel_mb, ours, voxel_mb / ours, ref)
            )

    print()
    print(
        "| site | transfer syntax | shape (k, j, i) | MB on disk | MB voxels | survfed s/series "
        "| survfed MB/s | SimpleITK s/series |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for site, syntax, shape, disk, vox, ours, rate, ref in rows:
        print(
            f"| {site} | {syntax} | {shape} | {disk:.1f} | {vox:.1f} | {ours:.2f} | {rate:.0f} "
            f"| {ref:.2f} |"
        )
    files = sorted(p for p in out.rglob("*") if p.is_file() and "dicom" in p.relative_to(out).parts)
    print()
    print(f"header scan of {len(files)} files (`read_headers`, no header cache):")
    print()
    print("| page cache | threads or processes | ms per file |")
    print("|---|---|---:|")
    for state, label, ms in _header_scan_rows(files):
        print(f"| {state} | {label} | {ms:.2f} |")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
