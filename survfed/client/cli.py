"""``survfed-client``: run a hospital site.

Today it checks the site's data (the same report as ``survfed inspect``) and exits non-zero with
a one-line reason when nothing is usable. Joining a federation as a Flower SuperNode is the
federation issue's work and is refused here with a clear message rather than pretended.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from survfed import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="survfed-client",
        description="Run a survfed hospital site: check its data, then join the federation.",
    )
    parser.add_argument("--version", action="version", version=f"survfed {__version__}")
    parser.add_argument("--site", required=True, help="this site's name, e.g. iowa")
    parser.add_argument("--data", type=Path, required=True, help="the site folder")
    parser.add_argument("--server", help="coordinator HOST:PORT (federation)")
    parser.add_argument("--check", action="store_true", help="only check the site data and exit")
    parser.add_argument("--json", action="store_true", help="print the data report as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from survfed.client.catalogue import NotASiteError
    from survfed.client.site_report import inspect_site

    try:
        report = inspect_site(args.data, progress=not args.json)
    except NotASiteError as exc:
        print(f"survfed-client: site {args.site}: {exc}", file=sys.stderr)
        return 2
    data = report.to_dict()
    print(json.dumps(data, indent=2) if args.json else report.format_text())
    if data["usable"] < 1:
        print(
            f"survfed-client: site {args.site}: refusing to start: no usable patient in "
            f"{args.data}",
            file=sys.stderr,
        )
        return 1
    if args.check or args.server is None:
        return 0
    print(
        "survfed-client: joining a federation (--server) is not available in this version of "
        "survfed; use --check to validate the site data.",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
