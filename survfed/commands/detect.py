"""``survfed detect``: a trained nodule detector on every patient of a site; proposals to CSV."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "detect",
        help="run a trained nodule detector on a site's scans and write the proposals (CSV)",
        description=(
            "Lung-preprocess every usable patient of SITE_DIR (cached, as survfed preprocess), "
            "run the N-Net detector on each, and write proposals.csv (patient_id, rank, x_mm, "
            "y_mm, z_mm, diameter_mm, confidence) in the patient coordinates of nodules.csv. "
            "When patients are annotated, also prints FROC, CPM and top-5 recall on nodules "
            ">= 6 mm, and --report writes them with a FROC plot. Nothing leaves the site."
        ),
    )
    parser.add_argument("site_dir", type=Path, metavar="SITE_DIR", help="the site folder")
    parser.add_argument(
        "--detector",
        type=Path,
        required=True,
        help="detector.pt, or a run folder holding detector.pt or detector/detector.pt",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="CSV to write (default ./<site folder name>-proposals.csv)",
    )
    parser.add_argument(
        "--top",
        type=int,
        default=None,
        help="proposals per patient (default all the detector keeps)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="cache folder (default ./survfed-cache/<site folder name>, as survfed preprocess)",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--workers", type=int, default=1, help="preprocessing processes")
    parser.add_argument(
        "--report", type=Path, default=None, help="folder for metrics.json, report.md, froc.png"
    )
    parser.add_argument(
        "--mirror-tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="detector inference also on the y/x-mirrored scan, averaged (4x the time; "
        "default: the detector's own setting)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def _fail(message: str) -> int:
    print(f"survfed detect: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from survfed.client.catalogue import NotASiteError
    from survfed.client.site_detection import detect_site, write_proposals_csv
    from survfed.commands.preprocess import default_cache
    from survfed.server.detector_eval import size_line, write_detector_report

    site_dir: Path = args.site_dir
    if not site_dir.is_dir():
        return _fail(f"{site_dir} is not a site: no such folder")
    if args.workers < 1:
        return _fail(f"--workers must be at least 1, got {args.workers}")
    if args.top is not None and args.top < 1:
        return _fail(f"--top must be at least 1, got {args.top}")
    name = site_dir.resolve().name
    cache = args.cache if args.cache is not None else default_cache(site_dir)
    out = args.out if args.out is not None else Path(f"{name}-proposals.csv")
    quiet = args.quiet or args.json
    try:
        result = detect_site(
            site_dir, args.detector, cache, device=args.device, top=args.top,
            workers=args.workers, progress=not quiet, mirror_tta=args.mirror_tta,
        )  # fmt: skip
    except (NotASiteError, FileNotFoundError, ValueError) as exc:
        return _fail(str(exc))
    write_proposals_csv(result.proposals, out)
    report = None
    if result.evaluation is not None and args.report is not None:
        report = write_detector_report(
            result.evaluation, args.report, f"survfed detector {result.detector} on {name}"
        )
    n_props = sum(len(p) for p in result.proposals.values())
    failed = [o for o in result.preprocessing.outcomes if o.status == "failed"]
    summary = {
        "site": str(site_dir),
        "detector": str(result.detector),
        "device": result.device,
        "patients": len(result.proposals),
        "proposals": n_props,
        "csv": str(out),
        "failed": {o.patient_id: o.reason for o in failed} | result.unreadable,
        "evaluation": result.evaluation.to_dict() if result.evaluation is not None else None,
        "report": str(report) if report is not None else None,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(
        f"site {site_dir}: {len(result.proposals)} patients, {n_props} proposals "
        f"(detector {result.detector}, {result.device}) -> {out}"
    )
    if result.evaluation is not None:
        m, every = result.evaluation.metrics, result.evaluation.metrics_all
        print(
            f"on {result.n_annotated} annotated patients: CPM {m.cpm:.3f}, top-{m.k} recall "
            f"{m.recall_top_k:.3f} ({m.n_nodules} nodules >= 6 mm); all nodules: CPM "
            f"{every.cpm:.3f}, top-{every.k} recall {every.recall_top_k:.3f} "
            f"({every.n_nodules} nodules)"
        )
        print(size_line(result.evaluation))
        if report is not None:
            print(f"report in {report}")
    else:
        print("no annotated patient: proposals not scored")
    for pid, reason in summary["failed"].items():
        print(f"  not detected: {pid}: {reason}")
    return 0
