"""Pooled baseline vs the oracle on held-out sites, over several cohort seeds.

For each seed: write a tiny cohort (3 training sites + a held-out site), train the pooled model
with the default settings, evaluate it on the held-out site and print a markdown table with the
held-out C-index, the oracle C-index (true hazards), the share of the gap between 0.5 and the
oracle that the model closes, the cancer AUC, and the time of each step.

    python benchmarks/pooled_heldout.py --seeds 3 7 2026 [--encoder small] [--epochs 30]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from survfed.common.config import TrainConfig
from survfed.common.synth.cohort import make_cohort, parse_sites
from survfed.server.evaluate import evaluate_run
from survfed.server.pooled import train_pooled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 7, 2026])
    parser.add_argument("--sites", default="iowa:40,maastro:50,stanford:30,heldout:180")
    parser.add_argument("--encoder", default="small")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--bootstrap", type=int, default=200)
    args = parser.parse_args()
    sites = parse_sites(args.sites)
    names = list(sites)
    train_sites, heldout = names[:-1], names[-1]
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="survfed-heldout-") as tmp:
            cohort = Path(tmp) / "cohort"
            t0 = time.perf_counter()
            make_cohort(cohort, sites, seed=seed, progress=False)
            t1 = time.perf_counter()
            config = TrainConfig(seed=seed)
            changes = {"model": {**config.model.to_dict(), "encoder": args.encoder}}
            if args.epochs:
                changes["epochs"] = args.epochs
            config = config.replace(**changes)
            train_pooled(
                [cohort / s for s in train_sites],
                Path(tmp) / "run",
                config,
                progress=False,
                log=lambda _: None,
            )
            t2 = time.perf_counter()
            ev = evaluate_run(
                Path(tmp) / "run", cohort / heldout, n_bootstrap=args.bootstrap, progress=False
            ).to_dict()
            t3 = time.perf_counter()
        closed = (ev["c_index"] - 0.5) / (ev["oracle_c_index"] - 0.5)
        rows.append((seed, ev, closed, t1 - t0, t2 - t1, t3 - t2))
        lo, hi = ev["c_index_ci"]
        print(
            f"seed {seed}: C {ev['c_index']:.3f} [{lo:.3f}, {hi:.3f}], oracle "
            f"{ev['oracle_c_index']:.3f}, closed {closed:.0%}, AUC {ev['auc']:.3f}",
            flush=True,
        )
    print()
    print(
        "| seed | held-out n | events | C-index [95% CI] | oracle C | gap closed | cancer AUC "
        "| cohort s | train s | eval s |"
    )
    print("|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for seed, ev, closed, tg, tt, te in rows:
        lo, hi = ev["c_index_ci"]
        print(
            f"| {seed} | {ev['n']} | {ev['events']} | {ev['c_index']:.3f} [{lo:.3f}, {hi:.3f}] "
            f"| {ev['oracle_c_index']:.3f} | {closed:.0%} | {ev['auc']:.3f} | {tg:.0f} | {tt:.0f} "
            f"| {te:.0f} |"
        )


if __name__ == "__main__":
    main()
