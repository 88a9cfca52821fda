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
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from survfed.client.catalogue import NotASiteError
    from survfed.client.site_report import inspect_site, write_series_csv

    try:
        report = inspect_site(args.site_dir, deep=args.deep, progress=not (args.quiet or args.json))
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
