"""``survfed train-detector``: the centrally trained N-Net nodule detector (the pooled baseline)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train-detector",
        help="train the N-Net nodule detector centrally on several sites (pooled baseline)",
        description=(
            "Lung-preprocess the sites' patients (cached), train the N-Net detector of Liao et "
            "al. on the annotated ones with the sampling, loss and schedule a federation uses, "
            "and write RUN/ (config, detector.pt, metrics per epoch). Evaluate it with "
            "`survfed-server evaluate --model RUN --cohort SITE`."
        ),
    )
    parser.add_argument("--data", type=Path, required=True, help="cohort folder (holds sites)")
    parser.add_argument("--sites", required=True, help="comma-separated site folder names")
    parser.add_argument("--out", type=Path, required=True, help="run folder to write")
    parser.add_argument(
        "--config", type=Path, default=None, help="TOML with a [detector] table (and .detector)"
    )
    parser.add_argument(
        "--preset", choices=("paper", "cpu"), default=None, help="detector size (default paper)"
    )
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--samples-per-epoch", type=int, default=None, help="patches per site")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default=None, help="auto, cpu or cuda")
    parser.add_argument("--cache", type=Path, default=None, help="cache (default RUN/cache)")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):  # -> DetectorTrainConfig
    from survfed.common.config import DetectorTrainConfig
    from survfed.common.detection.config import cpu_preset

    config = DetectorTrainConfig.from_toml(args.config) if args.config else DetectorTrainConfig()
    changes = {
        key: value
        for key, value in {
            "epochs": args.epochs,
            "samples_per_epoch": args.samples_per_epoch,
            "lr": args.lr,
            "seed": args.seed,
            "device": args.device,
        }.items()
        if value is not None
    }
    if args.preset == "cpu":
        changes["detector"] = cpu_preset().to_dict()
    return config.replace(**changes) if changes else config


def run(args: argparse.Namespace) -> int:
    from survfed.client.catalogue import NotASiteError
    from survfed.server.pooled_detector import train_pooled_detector

    names = [s.strip() for s in args.sites.split(",") if s.strip()]
    try:
        config = config_from_args(args)
        missing = [n for n in names if not (args.data / n).is_dir()]
        if not names or missing:
            what = ", ".join(missing) or "(none named)"
            raise ValueError(f"no site folder {what} in {args.data}")
        train_pooled_detector(
            [args.data / n for n in names],
            args.out,
            config,
            cache_dir=args.cache,
            progress=not args.quiet,
            overwrite=args.overwrite,
        )
    except (NotASiteError, FileExistsError, ValueError) as exc:
        print(f"survfed train-detector: {exc}", file=sys.stderr)
        return 2
    return 0
