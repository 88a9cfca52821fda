"""``survfed``: the researcher's command line (cohorts, site inspection, training, demo)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from survfed import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="survfed",
        description="Federated lung-cancer CT models: synthetic cohorts, site data, training.",
    )
    parser.add_argument("--version", action="version", version=f"survfed {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from survfed.commands import register_all

    register_all(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
