"""Communication and orchestration cost of a federated run, per round and per site.

Reads a run folder written by ``survfed-server start`` or ``survfed demo`` (``RUN/replies.jsonl``
and ``RUN/metrics.csv``) and prints, per round and site: bytes the site received (the global
model instruction) and sent (its reply), both against the model's raw size (the floor), and
where the round's time went: the site's training loop (``train s``), the rest of its ClientApp
handler (``site s``: opening the data, building the model, the training C-index), and what is
left (``link s``: Flower starting the ClientApp process and its imports, polling, transport,
aggregation, waiting for slower sites).

Usage::

    survfed demo --out /tmp/demo                      # or any federated run folder
    python benchmarks/communication.py /tmp/demo/federated

Targets (DESIGN.md): <= 1.05x the model's bytes per site per round each way, <= 5% of a
round outside local training.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path


def load(run: Path) -> tuple[list[dict], dict[int, dict[str, str]]]:
    """The reply audit lines and the metrics rows by round."""
    audit_path = run / "replies.jsonl"
    if not audit_path.is_file():
        raise FileNotFoundError(f"{run} has no replies.jsonl: not a federated run folder")
    audit = [json.loads(line) for line in audit_path.read_text().splitlines() if line]
    with (run / "metrics.csv").open(newline="") as fh:
        rows = {int(r["round"]): r for r in csv.DictReader(fh)}
    return audit, rows


def table(run: Path) -> str:
    """The per-round, per-site table and a summary line."""
    audit, rows = load(run)
    header = (
        f"{'round':>5} {'site':<12} {'model B':>9} {'recv B':>9} {'x':>6} {'sent B':>9} "
        f"{'x':>6} {'round s':>8} {'train s':>8} {'site s':>7} {'link s':>7} {'outside':>8}"
    )
    lines = [header, "-" * len(header)]
    ratios: list[float] = []
    overheads: list[float] = []
    for entry in audit:
        if "error" in entry:
            lines.append(f"{entry['round']:>5} {entry['site']:<12} error: {entry['error'][:60]}")
            continue
        model = float(rows[entry["round"]]["model_bytes"])
        recv = entry.get("bytes_received") or float(rows[entry["round"]]["bytes_down_per_site"])
        sent = entry["bytes"]
        round_s = entry.get("round_seconds") or float(rows[entry["round"]]["round_seconds"])
        train_s = entry.get("metrics", {}).get("train-seconds", float("nan"))
        site_s = entry.get("metrics", {}).get("site-seconds", float("nan"))
        outside = 1.0 - train_s / round_s if round_s else float("nan")
        ratios += [recv / model, sent / model]
        overheads.append(outside)
        lines.append(
            f"{entry['round']:>5} {entry['site']:<12} {model:>9.0f} {recv:>9.0f} "
            f"{recv / model:>6.3f} {sent:>9.0f} {sent / model:>6.3f} {round_s:>8.1f} "
            f"{train_s:>8.1f} {site_s:>7.1f} {round_s - site_s:>7.1f} {100 * outside:>7.1f}%"
        )
    if ratios:
        finite = [o for o in overheads if o == o]
        lines += [
            "",
            f"bytes per site per round: at most {max(ratios):.3f}x the model "
            f"(target <= 1.05x); time outside local training: median "
            f"{100 * sorted(finite)[len(finite) // 2]:.0f}% of a round (target <= 5%)"
            if finite
            else f"bytes per site per round: at most {max(ratios):.3f}x the model",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="federated run folder (holds replies.jsonl)")
    args = parser.parse_args(argv)
    try:
        print(table(args.run))
    except FileNotFoundError as exc:
        print(f"communication: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
