"""``survfed-client``: run a hospital site.

1. Inspect the site folder (the same report as ``survfed inspect``); refuse to start, with the
   reason, when no patient is usable.
2. Cut and cache the survival crops at the annotated nodules and write the site manifest the
   ClientApp reopens each round (:mod:`survfed.client.site_snapshot`); lung-preprocess every
   usable patient for the nodule detector (:mod:`survfed.client.detection_data`; on the GPU
   when there is one, cached, several workers with ``--workers``) unless ``--no-preprocess``.
   Progress bars, then one summary line each.
3. Run the site's Flower SuperNode (:mod:`survfed.client.supernode`): it connects out to
   ``--server`` over TLS with the site's key, runs only the survfed app and version installed
   here, and keeps reconnecting across server restarts until stopped (Ctrl-C / SIGTERM).

Example::

    survfed-client --site iowa --data /data/iowa --server coordinator.example.org:9093 \\
        --ca /etc/survfed/ca.crt --key /etc/survfed/keys/iowa --cache /var/cache/survfed
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from survfed import __version__

if TYPE_CHECKING:
    from survfed.client.catalogue import SiteCatalogue
    from survfed.client.supernode import SuperNodeConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="survfed-client",
        description="Run a survfed hospital site: check its data, then join the federation.",
    )
    parser.add_argument("--version", action="version", version=f"survfed {__version__}")
    parser.add_argument("--site", required=True, help="this site's name, e.g. iowa")
    parser.add_argument("--data", type=Path, required=True, help="the site folder")
    parser.add_argument("--server", help="coordinator HOST:PORT (joins the federation)")
    parser.add_argument("--ca", type=Path, help="federation CA certificate (ca.crt)")
    parser.add_argument("--key", type=Path, help="this site's private key (keys/<site>)")
    parser.add_argument(
        "--insecure", action="store_true", help="no TLS, no auth (local experiments only)"
    )
    parser.add_argument(
        "--cache", type=Path, default=None, help="crop cache folder (default ./survfed-cache)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="logs and Flower state (default ./survfed-site)"
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML with [train.model] (crops) and [detector.detector] (preprocessing grid)",
    )
    parser.add_argument(
        "--no-preprocess",
        action="store_true",
        help="skip the lung preprocessing for the detector (federations without a detector: "
        "no detector rounds and no detector-init)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes for reading DICOM headers and for preprocessing (default 1)",
    )
    parser.add_argument("--device", default="auto", help="preprocessing device: auto, cpu, cuda")
    parser.add_argument("--runtime-port", type=int, default=9094, help="local port (127.0.0.1)")
    parser.add_argument("--check", action="store_true", help="only check the site data and exit")
    parser.add_argument("--json", action="store_true", help="print the data report as JSON")
    return parser


def _check_args(args: argparse.Namespace) -> str | None:
    if args.server is None:
        return None
    if not 1 <= args.runtime_port <= 65535:
        return f"--runtime-port {args.runtime_port} must be in 1..65535"
    host, sep, port = args.server.rpartition(":")
    if not sep or not host or not port.isdigit():
        return f"--server {args.server!r} must be HOST:PORT"
    if args.insecure:
        if args.ca or args.key:
            return "--insecure cannot be combined with --ca/--key"
        return None
    if args.ca is None or args.key is None:
        return "--ca and --key are required to join a federation (or --insecure for local tests)"
    for name in ("ca", "key"):
        path = getattr(args, name)
        if not path.is_file():
            return f"--{name} {path} does not exist"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from survfed.client.catalogue import NotASiteError
    from survfed.client.site_report import inspect_site
    from survfed.server.pki import validate_site_name

    try:
        validate_site_name(args.site, argument="--site")
    except ValueError as exc:
        print(f"survfed-client: {exc}", file=sys.stderr)
        return 2
    problem = _check_args(args)
    if problem:
        print(f"survfed-client: site {args.site}: {problem}", file=sys.stderr)
        return 2
    from survfed.client.catalogue import catalogue_site
    from survfed.client.header_cache import CACHE_FILE

    headers = (args.cache or Path("survfed-cache")).resolve() / args.site / CACHE_FILE
    try:
        catalogue = catalogue_site(
            args.data, progress=not args.json, header_cache=headers, workers=args.workers
        )
        report = inspect_site(args.data, catalogue=catalogue)
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
    return _join(args, catalogue)


def _node_config(args: argparse.Namespace, cache: Path, workdir: Path) -> SuperNodeConfig:
    from survfed.client.supernode import SuperNodeConfig

    return SuperNodeConfig(
        site=args.site,
        superlink=args.server,
        data_dir=args.data,
        workdir=workdir,
        ca_cert=None if args.insecure else args.ca.resolve(),
        auth_key=None if args.insecure else args.key.resolve(),
        insecure=args.insecure,
        runtime_port=args.runtime_port,
        extra_node_config={"cache-dir": str(cache / args.site)},
    )


def _preprocess(
    args: argparse.Namespace, catalogue: SiteCatalogue, cache: Path, config_cls: type
) -> None:
    """Lung-preprocess the site for the detector. Failures are listed and do not stop the
    site: it can still train survival models on annotation crops (a detector round will then
    find no scan and say so)."""
    from survfed.client.detection_data import prepare_scans

    try:
        detector = config_cls.from_toml(args.config) if args.config else config_cls()
        records, result = prepare_scans(
            args.site, args.data, cache, detector.preprocess_config(), catalogue=catalogue,
            device=args.device, workers=args.workers, progress=True, notify=print,
        )  # fmt: skip
    except ValueError as exc:
        print(f"survfed-client: warning: {exc}; detector rounds will fail here", file=sys.stderr)
        return
    print(result.format_text())
    annotated = sum(1 for r in records if r.annotated)
    print(
        f"site {args.site}: {len(records)} scans preprocessed for the detector "
        f"({annotated} with nodule annotations)"
    )


def _join(args: argparse.Namespace, catalogue: SiteCatalogue) -> int:
    from survfed.client.site_snapshot import prepare_site
    from survfed.client.supernode import SuperNode
    from survfed.common.config import DetectorTrainConfig, TrainConfig

    cache = (args.cache or Path("survfed-cache")).resolve()
    workdir = (args.workdir or Path("survfed-site")).resolve()
    try:
        model = (TrainConfig.from_toml(args.config) if args.config else TrainConfig()).model
        dataset = prepare_site(
            args.site, args.data, cache / args.site, model, progress=True, catalogue=catalogue
        )
    except ValueError as exc:
        print(f"survfed-client: site {args.site}: refusing to start: {exc}", file=sys.stderr)
        return 1
    print(
        f"site {args.site}: {len(dataset)} patients ready for training "
        f"({int(dataset.events.sum())} events, {len(dataset.excluded)} left out); "
        f"crops cached in {cache / args.site}"
    )
    if not args.no_preprocess:
        _preprocess(args, catalogue, cache / args.site, DetectorTrainConfig)
    try:
        cfg = _node_config(args, cache, workdir)
    except ValueError as exc:
        print(f"survfed-client: site {args.site}: {exc}", file=sys.stderr)
        return 2
    node = SuperNode(cfg)

    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        node.start()
        print(f"site {args.site}: connecting to {args.server} (log {cfg.log_file})")
        connected = False
        while node.process.is_running():
            if not connected and "SuperNode ID: " in node.process.log_text():
                print(f"site {args.site}: connected; waiting for instructions (Ctrl-C stops)")
                connected = True
            time.sleep(1.0)
        log = node.process.log_text(3000)
        reason = "the server did not accept this site's key (is it registered?)"
        if "CERTIFICATE_VERIFY_FAILED" in log or "handshake" in log:
            reason = "the server's certificate does not match --ca"
        print(
            f"survfed-client: site {args.site}: the SuperNode exited with status "
            f"{node.process.returncode()}: {reason}; log {cfg.log_file}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(f"site {args.site}: stopping")
        return 0
    finally:
        node.stop()


if __name__ == "__main__":
    sys.exit(main())
