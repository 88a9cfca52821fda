"""``survfed inspect``: summarise a site folder and list every problem found in it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "inspect",
        help="summarise a site folder (patients, series, outcomes) and list its problems",
        description=(
            "Scan SITE_DIR (clinical.csv, nodules.csv, dicom/), pick one CT series per patient "
            "and report usable patients, outcomes, spacing and every problem found. Exits 0 when "
            "at least one patient is usable."
        ),
    )
    parser.add_argument("site_dir", type=Path, metavar="SITE_DIR")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--deep", action="store_true", help="also decode every chosen series' pixels"
    )
    parser.add_argument(
        "--series",
        type=Path,
        metavar="CSV",
        help=(
            "also write every series found (patient, study date, series UID, description, "
            "why chosen or not) to CSV, to pick a patient's baseline scan for clinical.csv's "
            "series_uid column; holds identifiers: keep it at the site"
        ),
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        metavar="DIR",
        help=(
            "use and update the DICOM header cache of the site cache folder DIR (e.g. "
            "./survfed-cache/<site folder name>, where survfed preprocess and survfed-client "
            "keep it), so that files already read are not read again (default: read every file)"
        ),
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="worker processes for reading DICOM headers (default 1)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from survfed.client.catalogue import NotASiteError
    from survfed.client.header_cache import CACHE_FILE
    from survfed.client.site_report import inspect_site, write_series_csv

    if args.workers < 1:
        print(f"survfed inspect: --workers must be at least 1, got {args.workers}", file=sys.stderr)
        return 2
    try:
        report = inspect_site(
            args.site_dir,
            deep=args.deep,
            progress=not (args.quiet or args.json),
            header_cache=None if args.cache is None else args.cache / CACHE_FILE,
            workers=args.workers,
        )
    except NotASiteError as exc:
        print(f"survfed inspect: {exc}", file=sys.stderr)
        return 2
    data = report.to_dict()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(report.format_text())
    if args.series is not None:
        try:
            n_rows = write_series_csv(report.series_list, args.series)
        except OSError as exc:
            print(f"survfed inspect: cannot write --series {args.series}: {exc}", file=sys.stderr)
            return 2
        print(f"series list: {args.series} ({n_rows} series)", file=sys.stderr)
    if data["usable"] < 1:
        print(
            f"survfed inspect: no usable patient in {args.site_dir} "
            f"({len(data['problems'])} problems listed above)",
            file=sys.stderr,
        )
        return 1
    return 0
