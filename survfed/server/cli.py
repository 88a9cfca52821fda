"""``survfed-server``: the coordinator's command line.

Commands: ``start`` (run a federation from ``server.toml``; ``--resume RUN`` continues a run
folder from its last checkpoint), ``certs`` (CA, server certificate, site key pairs),
``register-site`` (admit a site's public key on the running SuperLink), ``evaluate``.
"""

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
        help="evaluate a trained model (survival and/or detector) on a held-out cohort",
        description=(
            "Survival model (model.pt): Harrell's and Uno's C-index, cancer AUC, "
            "time-dependent AUC, integrated Brier score, each with a bootstrap 95% interval, "
            "plus the oracle C-index when the cohort's _truth/ is present. Nodule detector "
            "(detector.pt or detector/detector.pt): FROC sensitivities at 1/8..8 false "
            "positives per scan, CPM and top-5 recall on nodules >= 6 mm, and hits by nodule "
            "size. Writes report folders with plots."
        ),
    )
    parser.add_argument(
        "--model", type=Path, required=True, help="run folder (model.pt and/or detector.pt)"
    )
    parser.add_argument("--cohort", type=Path, required=True, help="held-out site folder")
    parser.add_argument("--out", type=Path, default=None, help="report folder")
    parser.add_argument("--cache", type=Path, default=None, help="crop cache folder")
    parser.add_argument("--bootstrap", type=int, default=200, help="resamples (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument(
        "--mirror-tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="detector inference also on the y/x-mirrored scan, averaged (4x the time; "
        "default: the detector's own setting)",
    )
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from survfed.client.catalogue import NotASiteError
    from survfed.server.detector_eval import size_line
    from survfed.server.evaluate import evaluate_detector_run, evaluate_run, find_detector

    survival = (args.model / "model.pt").is_file()
    detector = find_detector(args.model) is not None
    if not args.model.is_dir() or not (survival or detector):
        print(
            f"survfed-server evaluate: {args.model} holds neither model.pt nor detector.pt",
            file=sys.stderr,
        )
        return 2
    out: dict[str, object] = {}
    try:
        if detector:
            det = evaluate_detector_run(
                args.model,
                args.cohort,
                out_dir=args.out / "detector" if args.out and survival else args.out,
                cache_dir=args.cache,
                device=args.device,
                progress=not args.json,
                mirror_tta=args.mirror_tta,
            )
            out["detector"] = det.to_dict()
        if survival:
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
            out = {**evaluation.to_dict(), **out}
    except (NotASiteError, FileNotFoundError, ValueError) as exc:
        print(f"survfed-server evaluate: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out, indent=2, allow_nan=False))
        return 0
    if detector:
        m = det.evaluation.metrics
        print(
            f"detector on {det.evaluation.cohort}: CPM {m.cpm:.3f}, top-{m.k} recall "
            f"{m.recall_top_k:.3f} ({m.n_nodules} nodules >= 6 mm in {det.evaluation.n_scans} "
            f"scans); report {det.report_dir}/report.md"
        )
        print(size_line(det.evaluation))
    if survival:
        print(evaluation.result.format_text())
        print(f"report: {evaluation.report_dir}/report.md")
    return 0


def _add_start(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "start",
        help="start the SuperLink and run the federated training of server.toml",
        description=(
            "Start a Flower SuperLink (TLS, site authentication, state database), admit the "
            "sites listed in server.toml, submit the survfed run and show each round as it "
            "finishes. Ctrl-C stops the run and the SuperLink; --resume RUN continues RUN "
            "from its last checkpoint."
        ),
    )
    parser.add_argument("--config", type=Path, required=True, help="server.toml")
    parser.add_argument("--resume", type=Path, default=None, metavar="RUN", help="run folder")
    parser.add_argument(
        "--insecure", action="store_true", help="no TLS, no site auth (local experiments only)"
    )
    parser.set_defaults(func=_run_start)


def _run_start(args: argparse.Namespace) -> int:
    from survfed.server.federation import install_stop_signals, read_settings, run_federation

    install_stop_signals()  # systemd's SIGTERM stops the run and the SuperLink cleanly
    try:
        settings = read_settings(args.config, run_dir=args.resume, insecure=args.insecure)
        if args.insecure:
            print(
                "survfed-server: WARNING: --insecure: the federation runs WITHOUT TLS and "
                "WITHOUT site authentication; never use it beyond one machine.",
                file=sys.stderr,
            )
        outcome = run_federation(settings, resume=args.resume is not None)
    except (FileNotFoundError, FileExistsError, ValueError, RuntimeError) as exc:
        print(f"survfed-server start: {exc}", file=sys.stderr)
        return 2
    evaluations = outcome.summary.get("evaluations", {})
    for name, ev in evaluations.items():
        ci = ev.get("c_index_ci") or [None, None]
        print(f"held-out {name}: C-index {ev.get('c_index')} (95% CI {ci[0]}-{ci[1]})")
    print(f"run folder: {outcome.run_dir} (status {outcome.status}, {outcome.seconds:.0f} s)")
    return 0 if outcome.status.endswith("completed") else 1


def _add_certs(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "certs",
        help="create the federation CA, the server certificate and site key pairs",
        description=(
            "Write ca.crt/ca.key, server.crt/server.key (for --server-name) and keys/<site> + "
            "keys/<site>.pub per --site into --out. Keep ca.key offline; give each site ca.crt "
            "and its own private key; list the .pub files under [sites] in server.toml."
        ),
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write")
    parser.add_argument("--server-name", required=True, help="host name sites connect to")
    parser.add_argument("--site", action="append", default=[], help="site name (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    parser.set_defaults(func=_run_certs)


def _run_certs(args: argparse.Namespace) -> int:
    from survfed.server.pki import create_pki

    try:
        pki = create_pki(args.out, args.server_name, args.site, overwrite=args.overwrite)
    except (FileExistsError, ValueError) as exc:
        print(f"survfed-server certs: {exc}", file=sys.stderr)
        return 2
    print(f"CA certificate:     {pki.ca_cert}  (give to every site)")
    print(f"CA key:             {pki.ca_key}  (keep offline)")
    print(f"server certificate: {pki.server_cert}")
    for site, keys in pki.site_keys.items():
        print(
            f"site {site}: private key {keys.private_key} (to the site), public {keys.public_key}"
        )
    return 0


def _add_register_site(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "register-site",
        help="admit a site's public key on the running SuperLink",
        description=(
            "Register SITE's OpenSSH public key with the SuperLink started by "
            "`survfed-server start --config server.toml` (run on the coordinator host). Also "
            "list it under [sites] in server.toml so a restarted server keeps admitting it."
        ),
    )
    parser.add_argument("site", help="site name")
    parser.add_argument("--key", type=Path, required=True, help="the site's .pub key file")
    parser.add_argument("--config", type=Path, default=Path("server.toml"), help="server.toml")
    parser.set_defaults(func=_run_register_site)


def _run_register_site(args: argparse.Namespace) -> int:
    from survfed.server.federation import REGISTRY_FILE, admit_sites, read_settings
    from survfed.server.flwr_home import FlwrCliError
    from survfed.server.pki import validate_site_name
    from survfed.server.superlink import SuperLink

    try:
        validate_site_name(args.site)
        if not args.key.is_file():
            raise FileNotFoundError(f"--key {args.key} does not exist")
        settings = read_settings(args.config)
        link = SuperLink(settings.superlink_config())
        registry = settings.workdir / REGISTRY_FILE
        node_ids = admit_sites(link.connection, {args.site: args.key}, registry)
    except (FileNotFoundError, ValueError) as exc:
        print(f"survfed-server register-site: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, FlwrCliError) as exc:
        print(
            f"survfed-server register-site: {exc}\nIs the server running "
            f"(survfed-server start --config {args.config})?",
            file=sys.stderr,
        )
        return 1
    print(f"site {args.site} admitted: node id {node_ids[args.site]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="survfed-server",
        description="The survfed coordinator: run a federation, manage certificates and sites, "
        "evaluate models.",
    )
    parser.add_argument("--version", action="version", version=f"survfed {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_start(sub)
    _add_certs(sub)
    _add_register_site(sub)
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
