"""``survfed-server``: the coordinator's command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from survfed import __version__


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "evaluate",
        help="evaluate a trained model on a held-out cohort",
        description=(
            "Harrell's and Uno's C-index, cancer AUC, time-dependent AUC, integrated Brier "
            "score, each with a bootstrap 95%% interval, plus the oracle C-index when the "
            "cohort's _truth/ is present. Writes a report folder with plots."
        ),
    )
    parser.add_argument("--model", type=Path, required=True, help="run folder (holds model.pt)")
    parser.add_argument("--cohort", type=Path, required=True, help="held-out site folder")
    parser.add_argument("--out", type=Path, default=None, help="report folder")
    parser.add_argument("--cache", type=Path, default=None, help="crop cache folder")
    parser.add_argument("--bootstrap", type=int, default=200, help="resamples (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from survfed.client.catalogue import NotASiteError
    from survfed.server.evaluate import evaluate_run

    try:
        evaluation = evaluate_run(
            args.model,
            args.cohort,
            out_dir=args.out,
            cache_dir=args.cache,
            n_bootstrap=args.bootstrap,
            seed=args.seed,
            device=args.device,
            progress=not args.json,
        )
    except (NotASiteError, FileNotFoundError, ValueError) as exc:
        print(f"survfed-server evaluate: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(evaluation.to_dict(), indent=2, allow_nan=False))
    else:
        print(evaluation.result.format_text())
        print(f"report: {evaluation.report_dir}/report.md")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="survfed-server", description="The survfed coordinator: evaluation (and federation)."
    )
    parser.add_argument("--version", action="version", version=f"survfed {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_evaluate(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
