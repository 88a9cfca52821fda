"""``survfed demo``: the whole system on one machine, in one command.

1. Generate a synthetic cohort (real DICOM files): training sites plus a held-out site.
2. Create a federation PKI, start a real Flower SuperLink (TLS, site authentication) and one
   real SuperNode per training site as local processes on loopback.
3. Run the federated training (FedAvg, central evaluation on the held-out site every round).
4. Train the pooled baseline on the same patients with the same settings
   (:func:`survfed.server.pooled.train_pooled`) and evaluate it on the same held-out site.
5. Print federated vs pooled vs oracle C-index (95% bootstrap intervals), cancer AUC, rounds,
   time and bytes each site sent/received per round (``--json`` for machine-readable output).

With ``--detector`` the federation first runs detector rounds (the N-Net of seed 003, CPU
preset, on the sites' lung-preprocessed scans) and the federated survival model trains on the
crops the final global detector proposes (no annotations needed past the detector); a pooled
detector is trained on the same scans, and the table adds both detectors' CPM and top-5 recall
on the held-out site (nodules >= 6 mm).

Every process is stopped at the end, also on Ctrl-C. Everything lands in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

DEFAULT_TRAIN_SITES = (("iowa", 40), ("maastro", 50), ("stanford", 30), ("leiden", 40))
HELDOUT = "heldout"
DEFAULT_ROUNDS = 10
DEFAULT_LOCAL_EPOCHS = 3
DEFAULT_DETECTOR_ROUNDS = 10
DEFAULT_DETECTOR_EPOCHS = 3


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo",
        help="run a real federation on a synthetic cohort and compare it with pooled training",
        description=(
            "Generate a synthetic cohort (training sites + a held-out site), run a real Flower "
            "federation on loopback (SuperLink + one SuperNode per site, TLS, site "
            "authentication), train the pooled baseline on the same data, and print federated "
            "vs pooled vs oracle C-index and AUC, rounds, time and bytes per round."
        ),
    )
    parser.add_argument("--out", type=Path, default=Path("demo-run"), help="output folder")
    parser.add_argument(
        "--sites",
        default="3",
        help="number of training sites (1-4), or SITE:PATIENTS,... (default 3)",
    )
    parser.add_argument("--heldout", type=int, default=60, help="held-out patients (default 60)")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="federated rounds")
    parser.add_argument(
        "--local-epochs", type=int, default=DEFAULT_LOCAL_EPOCHS, help="local epochs per round"
    )
    parser.add_argument("--seed", type=int, default=0, help="cohort and training seed")
    parser.add_argument(
        "--detector",
        action="store_true",
        help="detector rounds first; survival on the detector's proposals; pooled detector",
    )
    parser.add_argument(
        "--detector-rounds", type=int, default=DEFAULT_DETECTOR_ROUNDS, help="detector rounds"
    )
    parser.add_argument(
        "--detector-epochs",
        type=int,
        default=DEFAULT_DETECTOR_EPOCHS,
        help="local detector epochs per round",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def parse_train_sites(spec: str) -> dict[str, int]:
    """``"3"`` -> the first 3 default sites; ``"a:10,b:12"`` -> as written."""
    spec = spec.strip()
    if spec.isdigit():
        n = int(spec)
        if not 1 <= n <= len(DEFAULT_TRAIN_SITES):
            raise ValueError(f"--sites must be 1..{len(DEFAULT_TRAIN_SITES)}, got {n}")
        return dict(DEFAULT_TRAIN_SITES[:n])
    from survfed.common.synth.cohort import parse_sites

    sites = dict(parse_sites(spec))
    if HELDOUT in sites:
        raise ValueError(f"--sites must not name the held-out site {HELDOUT!r}")
    return sites


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cohort(out: Path, sites: dict[str, int], seed: int, log: Callable[[str], None]) -> Path:
    from survfed.common.synth.cohort import make_cohort

    cohort = out / "cohort"
    marker = cohort / "_truth" / "cohort.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        recorded = {k: int(v.get("n_patients", -1)) for k, v in info.get("sites", {}).items()}
        if info.get("seed") == seed and recorded == sites:
            log(f"reusing the cohort in {cohort}")
            return cohort
    log(f"generating the cohort ({sum(sites.values())} patients) in {cohort} ...")
    make_cohort(cohort, sites, seed=seed, progress=False, overwrite=cohort.exists())
    return cohort


def _federate(
    out: Path,
    cohort: Path,
    train_sites: list[str],
    run_config: dict[str, Any],
    log: Callable[[str], None],
) -> Any:
    from survfed.client.supernode import SuperNode, SuperNodeConfig
    from survfed.server.federation import ServerSettings, run_federation
    from survfed.server.pki import create_pki

    pki = create_pki(out / "pki", "localhost", train_sites, overwrite=True)
    port = _free_port()
    run_dir = (out / "federated").resolve()
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(out / "server", ignore_errors=True)
    settings = ServerSettings(
        workdir=(out / "server").resolve(),
        pki_dir=(out / "pki").resolve(),
        run_dir=run_dir,
        port=port,
        sites={s: pki.site_keys[s].public_key for s in train_sites},
        federation=run_config,
        run_timeout_s=3600.0,
    )
    with ExitStack() as stack:

        def start_sites(link: Any, node_ids: dict[str, int]) -> None:
            for site in train_sites:
                node = SuperNode(
                    SuperNodeConfig(
                        site=site,
                        superlink=f"127.0.0.1:{port}",
                        data_dir=cohort / site,
                        workdir=(out / "sites" / site).resolve(),
                        ca_cert=pki.ca_cert,
                        auth_key=pki.site_keys[site].private_key,
                        runtime_port=_free_port(),
                        extra_node_config={"cache-dir": str((out / "cache" / site).resolve())},
                    )
                )
                stack.enter_context(node)
                log(f"site {site}: SuperNode started (log {node.cfg.log_file})")

        return run_federation(settings, log=log, on_started=start_sites)


def _ci(d: dict[str, Any], key: str) -> str:
    value, ci = d.get(key), d.get(f"{key}_ci")
    if value is None:
        return "n/a"
    text = f"{value:.3f}"
    if ci and ci[0] is not None:
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text


def format_table(result: dict[str, Any]) -> str:
    """The demo's result as a plain-text table."""
    from survfed.server.detector_eval import size_label

    rows = [("", "C-index [95% CI]", "cancer AUC [95% CI]")]
    for name in ("federated", "pooled", "oracle"):
        d = result[name]
        rows.append((name, _ci(d, "c_index"), _ci(d, "auc") if name != "oracle" else "-"))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, width, strict=True)) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    b = result["bytes_per_round"]
    det = result.get("detector")
    if det:
        lines += ["", "nodule detector on the held-out site (nodules >= 6 mm)", "-" * 56]
        for name in ("federated", "pooled"):
            d = det[name]
            lines.append(
                f"{name:<10} CPM {d['cpm']:.3f}  top-5 recall {d['recall_top_k']:.3f}  "
                f"({d['n_nodules']} nodules in {d['n_scans']} scans)"
            )
        for name in ("federated", "pooled"):
            bins = det[name].get("by_size_mm") or []
            cells = [f"{size_label(b['low'], b['high'])} {b['top_k']}/{b['n']}" for b in bins]
            if cells:
                lines.append(f"{name:<10} top-5 hits by size (mm): " + ", ".join(cells))
        lines.append(
            f"federated CPM / pooled CPM: {100 * det['cpm_ratio']:.0f}%; "
            f"{det['rounds']} rounds x {det['local_epochs']} local epochs; survival crops "
            "at the federated detector's proposals"
        )
    lines += [
        "",
        f"rounds: {result['rounds']} x {result['local_epochs']} local epochs, "
        f"{len(result['sites'])} sites ({result['n_train_patients']} patients), held-out "
        f"{result['n_heldout']} patients",
        f"gap to 0.5 closed by federated vs pooled: {100 * result['gap_closed']:.0f}%",
        f"bytes per site per round: sent {b['sent_per_site']:.0f}, received "
        f"{b['received_per_site']:.0f} (model {b['model_bytes']:.0f}; "
        f"{b['sent_per_site'] / b['model_bytes']:.3f}x)",
        f"time: total {result['seconds']['total']:.0f} s (cohort {result['seconds']['cohort']:.0f}"
        f", federation {result['seconds']['federated']:.0f}, pooled "
        f"{result['seconds']['pooled']:.0f})",
    ]
    return "\n".join(lines)


def _pooled_detector(
    out: Path,
    cohort: Path,
    train: dict[str, int],
    args: argparse.Namespace,
    summary: dict[str, Any],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Train the pooled detector (rounds x local epochs) and compare it with the federated one."""
    from survfed.common.config import DetectorTrainConfig
    from survfed.common.detection.config import cpu_preset
    from survfed.server.evaluate import evaluate_detector_run
    from survfed.server.pooled_detector import train_pooled_detector

    config = DetectorTrainConfig(
        epochs=args.detector_rounds * args.detector_epochs, seed=args.seed, detector=cpu_preset()
    )
    train_pooled_detector(
        [cohort / s for s in train],
        out / "pooled-detector",
        config,
        cache_dir=out / "cache",  # the sites' own preprocessing caches: nothing is redone
        progress=False,
        overwrite=True,
        log=log,
    )
    pooled = evaluate_detector_run(
        out / "pooled-detector",
        cohort / HELDOUT,
        cache_dir=out / "cache" / "coordinator",
        progress=False,
    ).evaluation.to_dict()
    federated = summary["detector"]["evaluations"][HELDOUT]
    ratio = federated["cpm"] / pooled["cpm"] if pooled["cpm"] else float("nan")
    return {
        "federated": federated,
        "pooled": pooled,
        "cpm_ratio": ratio,
        "rounds": args.detector_rounds,
        "local_epochs": args.detector_epochs,
    }


def run(args: argparse.Namespace) -> int:
    from survfed.common.config import TrainConfig
    from survfed.server.evaluate import evaluate_run
    from survfed.server.pooled import train_pooled

    def log(message: str) -> None:
        print(message, file=sys.stderr if args.json else sys.stdout, flush=True)

    from survfed.server.federation import install_stop_signals

    install_stop_signals()

    started = time.perf_counter()
    try:
        train = parse_train_sites(args.sites)
        if args.rounds < 1 or args.local_epochs < 1 or args.heldout < 10:
            raise ValueError("--rounds and --local-epochs must be >= 1, --heldout >= 10")
    except ValueError as exc:
        print(f"survfed demo: {exc}", file=sys.stderr)
        return 2
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cohort = _cohort(out, {**train, HELDOUT: args.heldout}, args.seed, log)
    t_cohort = time.perf_counter() - started

    run_config: dict[str, Any] = {
        "num-server-rounds": args.rounds,
        "local-epochs": args.local_epochs,
        "min-sites": len(train),
        "eval-cohorts": str(cohort / HELDOUT),
        "eval-cache-dir": str(out / "cache" / "coordinator"),
        "seed": args.seed,
        "round-timeout-s": 900.0,
        "bootstrap-per-round": 20,
        "bootstrap-final": 200,
    }
    if args.detector:
        from survfed.common.detection.config import cpu_preset

        run_config.update(
            {
                "detector-rounds": args.detector_rounds,
                "detector-local-epochs": args.detector_epochs,
                "detector-preset": "cpu",
                "detector-eval-every": args.detector_rounds,
                "crop-source": "detector",
                # seed 003's classifier: the detector's backbone on crops of its own grid,
                # started from the federated detector (the small 1 mm encoder stayed at chance)
                "encoder": "nnet-small",
                "spacing-mm": cpu_preset().spacing_mm,
                "crop-size": 32,
            }
        )
    t0 = time.perf_counter()
    outcome = _federate(out, cohort, list(train), run_config, log)
    t_fed = time.perf_counter() - t0
    if not outcome.status.endswith("completed") or not outcome.summary:
        print(
            f"survfed demo: the federated run ended with status {outcome.status}; see "
            f"{out / 'server'} and {out / 'sites'} logs",
            file=sys.stderr,
        )
        return 1

    t0 = time.perf_counter()
    fed_cfg = TrainConfig(epochs=args.rounds * args.local_epochs, seed=args.seed)
    train_pooled(
        [cohort / s for s in train],
        out / "pooled",
        fed_cfg,
        cache_dir=out / "cache" / "pooled",
        progress=False,
        overwrite=True,
        log=log,
    )
    pooled = evaluate_run(
        out / "pooled",
        cohort / HELDOUT,
        cache_dir=out / "cache" / "coordinator",
        n_bootstrap=200,
        seed=args.seed,
        progress=False,
    ).result.to_dict()
    detector = None
    if args.detector:
        detector = _pooled_detector(out, cohort, train, args, outcome.summary, log)
    t_pooled = time.perf_counter() - t0

    federated = dict(outcome.summary["evaluations"][HELDOUT])
    history = outcome.summary["history"]
    trained = [r for r in history if r.get("round", 0) > 0]

    def mean(key: str) -> float:
        values = [float(r[key]) for r in trained if r.get(key) is not None]
        return sum(values) / len(values) if values else float("nan")

    oracle = {
        "c_index": federated.get("oracle_c_index"),
        "c_index_ci": federated.get("oracle_c_index_ci"),
    }
    gap = (federated["c_index"] - 0.5) / (pooled["c_index"] - 0.5) if pooled["c_index"] else 0.0
    result = {
        "federated": federated,
        "pooled": pooled,
        "oracle": oracle,
        "gap_closed": gap,
        "detector": detector,
        "rounds": args.rounds,
        "local_epochs": args.local_epochs,
        "sites": train,
        "n_train_patients": int(trained[-1]["n_patients"]) if trained else 0,
        "n_heldout": federated.get("n"),
        "bytes_per_round": {
            "sent_per_site": mean("bytes_up_per_site"),
            "received_per_site": mean("bytes_down_per_site"),
            "model_bytes": mean("model_bytes"),
        },
        "round_seconds": mean("round_seconds"),
        "seconds": {
            "cohort": t_cohort,
            "federated": t_fed,
            "pooled": t_pooled,
            "total": time.perf_counter() - started,
        },
        "out": str(out),
    }
    (out / "demo.json").write_text(json.dumps(result, indent=2, default=str))
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print()
        print(format_table(result))
        print(f"\nreports: {outcome.run_dir}/eval-{HELDOUT}/report.md, {out}/pooled/")
    return 0
