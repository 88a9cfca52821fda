"""``survfed simulate``: many virtual sites of one cohort on Flower's simulation engine.

The same ServerApp, ClientApp, run config and run folder as a real federation
(:mod:`survfed.server.simulation`); for experiments with many sites on one machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "simulate",
        help="run the federation with many virtual sites on Flower's simulation engine",
        description=(
            "Run survfed's federated training with every site folder of one cohort as a virtual "
            "site (Flower's simulation engine, one machine), evaluating on the held-out site "
            "folders after every round. Writes the same run folder as survfed-server start."
        ),
    )
    parser.add_argument("--cohort", type=Path, required=True, help="cohort folder (holds sites)")
    parser.add_argument(
        "--heldout", required=True, help="comma-separated held-out site folder names"
    )
    parser.add_argument("--out", type=Path, required=True, help="run folder to write")
    parser.add_argument(
        "--sites", default="", help="training site folder names (default: all not held out)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="federated rounds (default 5)")
    parser.add_argument("--local-epochs", type=int, default=1, help="local epochs per round")
    parser.add_argument("--strategy", default="fedavg", help="fedavg, fedprox or fedadam")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other run config key (TOML value), e.g. --set proximal-mu=0.01",
    )
    parser.add_argument("--cpus-per-site", type=int, default=1, help="CPUs per virtual site")
    parser.add_argument("--gpus-per-site", type=float, default=0.0, help="GPUs per virtual site")
    parser.add_argument(
        "--run-timeout-s",
        type=float,
        default=86400.0,
        metavar="S",
        help="stop the run if it has not finished after S seconds (default 86400, as "
        "server.toml's run-timeout-s)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {pair!r} must be KEY=VALUE")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value  # a bare string
    return out


def run(args: argparse.Namespace) -> int:
    from survfed.app.config import resolve_path_keys
    from survfed.server.federation import install_stop_signals
    from survfed.server.simulation import SimulationSettings, run_simulation

    install_stop_signals()  # SIGTERM stops the SuperLink, the simulation and its Ray workers

    def log(message: str) -> None:
        print(message, file=sys.stderr if args.json else sys.stdout, flush=True)

    cohort = args.cohort.resolve()
    if not cohort.is_dir():
        print(f"survfed simulate: --cohort {args.cohort} is not a folder", file=sys.stderr)
        return 2
    held = [h.strip() for h in args.heldout.split(",") if h.strip()]
    missing = [h for h in held if not (cohort / h).is_dir()]
    if not held or missing:
        print(
            f"survfed simulate: --heldout {args.heldout!r}: no site folder {missing or held} "
            f"in {cohort}",
            file=sys.stderr,
        )
        return 2
    out = args.out.resolve()
    try:
        federation = {
            "run-dir": str(out),
            "sim-cohort": str(cohort),
            "sim-sites": args.sites,
            "eval-cohorts": ",".join(str(cohort / h) for h in held),
            "eval-cache-dir": str(out.parent / f".{out.name}-cache"),
            "num-server-rounds": args.rounds,
            "local-epochs": args.local_epochs,
            "strategy": args.strategy,
            **resolve_path_keys(_overrides(args.set), Path.cwd()),
        }
        settings = SimulationSettings(
            workdir=out.parent / f".{out.name}-simulation",
            federation=federation,
            cpus_per_site=args.cpus_per_site,
            gpus_per_site=args.gpus_per_site,
            timeout_s=args.run_timeout_s,
        )
        outcome = run_simulation(settings, log=log)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        print(f"survfed simulate: {exc}", file=sys.stderr)
        return 2
    except TimeoutError as exc:
        print(
            f"survfed simulate: {exc} (--run-timeout-s); the run was stopped, its finished "
            f"rounds are in {out}",
            file=sys.stderr,
        )
        return 1
    if not outcome.status.endswith("completed") or not outcome.summary:
        print(
            f"survfed simulate: the run ended with status {outcome.status}; SuperLink log in "
            f"{settings.workdir / 'superlink'}",
            file=sys.stderr,
        )
        return 1
    evaluations = outcome.summary.get("evaluations", {})
    if args.json:
        print(json.dumps(outcome.summary, indent=2, default=str))
    else:
        for name, ev in evaluations.items():
            ci = ev.get("c_index_ci") or [None, None]
            low = "n/a" if ci[0] is None else f"{ci[0]:.3f}"
            high = "n/a" if ci[1] is None else f"{ci[1]:.3f}"
            log(
                f"held-out {name}: C-index {ev['c_index']:.3f} [{low}, {high}], "
                f"n {ev.get('n')}; report {ev.get('report')}"
            )
        log(f"run folder {outcome.run_dir} ({outcome.seconds:.0f} s)")
    return 0
