"""``survfed preprocess``: seed 003 lung preprocessing of every usable patient of a site, cached."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from survfed.client.clinical import Problem

_DEFAULT_CACHE = Path("survfed-cache")
_SHOWN_PROBLEMS = 10  # problems of the catalogue printed before "run survfed inspect"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "preprocess",
        help="segment the lungs of every usable patient of a site and cache the detector input",
        description=(
            "Preprocess every usable patient of SITE_DIR as in Liao et al. (resample to "
            "isotropic voxels, lung mask, left/right separation, convex hull and dilation, "
            "uint8 crop) and cache the result, keyed by the series and the settings; a second "
            "run reads the cache. Prints a summary; exits 0 when at least one patient is "
            "preprocessed, 1 when none is, 2 when SITE_DIR is not a site or an argument is bad."
        ),
    )
    parser.add_argument("site_dir", type=Path, metavar="SITE_DIR")
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="cache folder (default ./survfed-cache/<site folder name>, as survfed-client)",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where to run: auto = CUDA when available, else the CPU (default auto)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes for reading DICOM headers and for preprocessing (default 1)",
    )
    parser.add_argument(
        "--spacing", type=float, default=1.0, metavar="MM", help="isotropic voxel size (1 mm)"
    )
    parser.add_argument(
        "--export",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write per patient <id>_preprocessed.nii.gz, <id>_lung.nii.gz and "
        "<id>_mask.nii.gz (masks in the CT series' geometry) for 3D Slicer / ITK-SNAP, and "
        "<id>_qc.png, a quality-control picture (slices with the lung and mask contours); "
        "DIR/index.html lists every patient, problems first",
    )
    parser.add_argument(
        "--clear-cache",
        action="store_true",
        help="remove the site's preprocessed cache (all settings) and exit",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def default_cache(site_dir: Path) -> Path:
    """``./survfed-cache/<site folder name>``: the cache survfed-client uses by default."""
    return _DEFAULT_CACHE / site_dir.resolve().name


def _problem_lines(problems: list[Problem], site_dir: Path) -> list[str]:
    """The catalogue's problems (excluded files/patients, repairs, cache warnings) in short."""
    if not problems:
        return []
    errors = sum(p.severity == "error" for p in problems)
    lines = [f"site problems: {errors} error(s), {len(problems) - errors} warning(s)"]
    for p in problems[:_SHOWN_PROBLEMS]:
        who = p.patient_id or "-"
        lines.append(f"  {p.severity:7s} {who}  {p.path}: {p.reason}")
    if len(problems) > _SHOWN_PROBLEMS:
        lines.append(
            f"  ... {len(problems) - _SHOWN_PROBLEMS} more (`survfed inspect {site_dir}` lists all)"
        )
    return lines


def _fail(message: str) -> int:
    print(f"survfed preprocess: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from survfed.client.catalogue import NotASiteError, catalogue_site
    from survfed.client.header_cache import CACHE_FILE
    from survfed.client.preprocess_cache import clear_cache, preprocess_site
    from survfed.common.imaging.preprocess import PreprocessConfig, resolve_device

    site_dir: Path = args.site_dir
    cache = args.cache if args.cache is not None else default_cache(site_dir)
    if args.clear_cache:
        removed = clear_cache(cache)
        print(f"removed {removed} file(s) of the preprocessed cache in {cache}")
        return 0
    if args.workers < 1:
        return _fail(f"--workers must be at least 1, got {args.workers}")
    try:
        config = PreprocessConfig(spacing_mm=args.spacing)
    except ValueError as exc:
        return _fail(f"--spacing: {exc}")
    try:
        resolve_device(args.device)
    except ValueError as exc:
        return _fail(str(exc))
    if not site_dir.is_dir():
        return _fail(f"{site_dir} is not a site: no such folder")
    quiet = args.quiet or args.json
    try:
        catalogue = catalogue_site(
            site_dir, progress=not quiet, header_cache=cache / CACHE_FILE, workers=args.workers
        )
    except NotASiteError as exc:
        return _fail(str(exc))
    site_problems = catalogue.problems  # before preprocessing adds its own failures
    if not catalogue.usable_patients:
        for line in [] if args.json else _problem_lines(site_problems, site_dir):
            print(line, file=sys.stderr)
        print(
            f"survfed preprocess: no usable patient in {site_dir} (run `survfed inspect "
            f"{site_dir}` for the problems)",
            file=sys.stderr,
        )
        return 1
    try:
        result = preprocess_site(
            catalogue,
            cache,
            config,
            device=args.device,
            workers=args.workers,
            progress=not quiet,
            export_dir=args.export,
            notify=None if args.json else lambda msg: print(f"note: {msg}", file=sys.stderr),
        )
    except OSError as exc:
        return _fail(str(exc))
    if args.json:
        data = result.to_dict()
        data["site_problems"] = [p.to_dict() for p in site_problems]
        print(json.dumps(data, indent=2))
    else:
        print("\n".join([result.format_text(), *_problem_lines(site_problems, site_dir)]))
    if result.n_ok < 1:
        print(
            f"survfed preprocess: no patient of {site_dir} could be preprocessed", file=sys.stderr
        )
        return 1
    return 0
