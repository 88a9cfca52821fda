"""``survfed train-pooled``: the centrally trained baseline, with site-stratified batches."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train-pooled",
        help="train the survival model centrally on several sites (the pooled baseline)",
        description=(
            "Train the two-task crop survival model on the pooled patients of several sites, "
            "with the same site-local Cox mini-batches a federation uses, and write RUN/ "
            "(config, final model, baseline hazard, metrics per epoch)."
        ),
    )
    parser.add_argument("--data", type=Path, required=True, help="cohort folder (holds sites)")
    parser.add_argument("--sites", required=True, help="comma-separated site folder names")
    parser.add_argument("--out", type=Path, required=True, help="run folder to write")
    parser.add_argument("--config", type=Path, default=None, help="TOML with a [train] table")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--encoder", default=None, help="small, resnet18, vgg16 or alexnet")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default=None, help="auto, cpu or cuda")
    parser.add_argument("--cache", type=Path, default=None, help="crop cache (default RUN/cache)")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from survfed.common.config import TrainConfig

    config = TrainConfig.from_toml(args.config) if args.config else TrainConfig()
    changes = {
        key: value
        for key, value in {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "seed": args.seed,
            "device": args.device,
        }.items()
        if value is not None
    }
    if args.encoder is not None:
        changes["model"] = {**config.model.to_dict(), "encoder": args.encoder}
    return config.replace(**changes) if changes else config


def run(args: argparse.Namespace) -> int:
    from survfed.client.catalogue import NotASiteError
    from survfed.server.pooled import train_pooled

    names = [s.strip() for s in args.sites.split(",") if s.strip()]
    try:
        config = config_from_args(args)
        missing = [n for n in names if not (args.data / n).is_dir()]
        if missing:
            raise ValueError(f"no site folder {', '.join(missing)} in {args.data}")
        train_pooled(
            [args.data / n for n in names],
            args.out,
            config,
            cache_dir=args.cache,
            progress=not args.quiet,
            overwrite=args.overwrite,
        )
    except (NotASiteError, FileExistsError, ValueError) as exc:
        print(f"survfed train-pooled: {exc}", file=sys.stderr)
        return 2
    return 0
