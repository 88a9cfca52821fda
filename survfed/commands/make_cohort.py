"""``survfed make-cohort``: write a synthetic multi-site DICOM cohort with known hazards."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "make-cohort",
        help="write a synthetic multi-site DICOM cohort with known hazards",
        description=(
            "Write one site folder per site (clinical.csv, nodules.csv, dicom/) and OUT/_truth/ "
            "(true hazards and masks that no training code reads). Same seed, same bytes."
        ),
    )
    parser.add_argument("out", type=Path, help="output folder (created; must be empty)")
    parser.add_argument(
        "--sites",
        default="iowa:40,maastro:50,stanford:30",
        help="comma-separated SITE:PATIENTS (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--preset",
        choices=("tiny", "standard"),
        default="tiny",
        help="tiny: small volumes that train fast on CPU; standard: 512x512 slices (default: tiny)",
    )
    parser.add_argument(
        "--masses",
        type=float,
        default=0.0,
        metavar="SHARE",
        help=(
            "share (0-1) of malignant lesions drawn as masses of 30-60 mm instead of nodules of "
            "8-30 mm (default: 0, none)"
        ),
    )
    parser.add_argument(
        "--follow-up-scans",
        type=float,
        default=0.0,
        metavar="SHARE",
        help=(
            "share (0-1) of patients who also get a follow-up CT 60-400 days after the "
            "baseline_date of clinical.csv (default: 0, none)"
        ),
    )
    parser.add_argument("--workers", type=int, default=None, help="worker processes")
    parser.add_argument("--overwrite", action="store_true", help="allow a non-empty OUT")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from survfed.common.synth.cohort import make_cohort, parse_sites

    try:
        sites = parse_sites(args.sites)
    except ValueError as exc:
        print(f"survfed make-cohort: {exc}", file=sys.stderr)
        return 2
    try:
        summary = make_cohort(
            args.out,
            sites,
            seed=args.seed,
            preset=args.preset,
            workers=args.workers,
            progress=not (args.quiet or args.json),
            overwrite=args.overwrite,
            masses=args.masses,
            follow_up_scans=args.follow_up_scans,
        )
    except (FileExistsError, ValueError) as exc:
        print(f"survfed make-cohort: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print(summary.format_text())
    return 0
