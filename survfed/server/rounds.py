"""One stage of federated rounds on the coordinator: the loop every model shares.

A run has one or two stages — detector rounds (optional), then survival rounds — and each is
the same loop (:func:`run_rounds`) over a Flower strategy
(:func:`survfed.server.strategies.build_strategy`), with its own folder:

* ``checkpoint/``: after every round, atomically, the global weights, the round, the strategy
  state and the metrics history (:mod:`survfed.server.checkpoint`); a resumed stage starts after
  the last complete round, so a killed coordinator loses at most the round in flight;
* ``metrics.csv``: one row per round (the stage's held-out evaluation, the sites' aggregate
  training metrics weighted by their patients, bytes and seconds);
* ``replies.jsonl``: an audit line per site and round describing what it sent (record kinds,
  keys, value types, bytes — never values).

The stage's final weights are the mean of its last rounds' global models (tail averaging:
``average-last`` for the survival stage, ``detector-average-last`` for the detector stage),
read back from the round checkpoints.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid

from survfed.app.config import FederationConfig
from survfed.common.config import Schedule
from survfed.common.run_folder import RunFolder
from survfed.common.survival.snapshot import SnapshotMean
from survfed.server.checkpoint import load_checkpoint, load_round_arrays, save_checkpoint
from survfed.server.strategies import build_strategy

__all__ = ["SITES_FILE", "StageResult", "read_site_names", "run_rounds", "tail_average"]

SITES_FILE = "sites.json"
"""``RUN/sites.json``: node id → site name (written when the run is submitted)."""

Evaluate = Callable[[int, dict[str, torch.Tensor]], dict[str, Any]]


def read_site_names(run_dir: Path) -> dict[int, str]:
    """Node id → site name from ``RUN/sites.json`` (empty when the run has none)."""
    path = Path(run_dir) / SITES_FILE
    if not path.is_file():
        return {}
    return {int(k): str(v) for k, v in json.loads(path.read_text()).items()}


@dataclass(frozen=True)
class StageResult:
    """What one stage of rounds produced.

    Attributes:
        state: the final weights (tail-averaged).
        averaged_rounds: the rounds whose global models were averaged into ``state``.
        history: one row per evaluated round (round 0 = the initial model).
        site_history: per round, ``<site>/<metric>`` of every site that sent metrics.
        resumed_from_round: the last round completed before this process (0 = fresh).
    """

    state: dict[str, torch.Tensor]
    averaged_rounds: list[int]
    history: list[dict[str, Any]]
    site_history: list[dict[str, Any]]
    resumed_from_round: int


def _round_row(
    rnd: int,
    entry: dict[str, Any] | None,
    eval_row: Mapping[str, Any],
    eval_s: float,
    train_keys: Sequence[str],
) -> dict[str, Any]:
    row: dict[str, Any] = {"round": rnd}
    row.update(eval_row)
    replies = (entry or {}).get("replies", [])
    ok = [r for r in replies if "error" not in r and "rejected" not in r]
    metrics = [r.get("metrics", {}) for r in ok]
    n = sum(int(m.get("num-examples", 0)) for m in metrics)
    row["sites"] = len(ok)
    row["failed_sites"] = len(replies) - len(ok)
    row["n_patients"] = n
    for key in train_keys:
        pairs = [(m[key], m["num-examples"]) for m in metrics if key in m]
        weight = sum(w for _, w in pairs)
        row[key.replace("-", "_")] = sum(v * w for v, w in pairs) / weight if weight else None
    sent = (entry or {}).get("sent", [])
    with_arrays = [r for r in ok if "arrays" in r.get("content", {})]
    row["bytes_down_per_site"] = float(np.mean([s["bytes"] for s in sent])) if sent else None
    row["bytes_up_per_site"] = (
        float(np.mean([r["bytes"] for r in with_arrays])) if with_arrays else None
    )
    row["model_bytes"] = (entry or {}).get("model_bytes")
    if entry and "received" in entry:
        round_s = entry["received"] - entry["started"]
        train_s = [m["train-seconds"] for m in metrics if "train-seconds" in m]
        row["round_seconds"] = round_s
        row["max_site_train_seconds"] = max(train_s) if train_s else None
    else:
        row["round_seconds"] = None
        row["max_site_train_seconds"] = None
    row["eval_seconds"] = eval_s
    row["skipped"] = bool((entry or {}).get("skipped", False))
    return row


def tail_average(
    folder: Path, rounds: int, schedule: Schedule, last: ArrayRecord
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """The mean of the last rounds' global models (``schedule.average_last`` of ``rounds``).

    Reads the per-round checkpoint files of ``folder``, so a resumed stage averages across its
    restart. Rounds whose file is missing are left out; with none left, ``last`` is used.
    """
    wanted = range(rounds - schedule.averaged_snapshots(rounds) + 1, rounds + 1)
    mean, used = SnapshotMean(), []
    for rnd in wanted:
        arrays = load_round_arrays(folder, rnd)
        if arrays is not None:
            mean.add(arrays)
            used.append(rnd)
    if not used:
        return last.to_torch_state_dict(), []
    return mean.mean(), used


def run_rounds(
    grid: Grid,
    fed: FederationConfig,
    *,
    folder: Path,
    rounds: int,
    initial: Mapping[str, torch.Tensor],
    train_config: Mapping[str, Any],
    schedule: Schedule,
    evaluate: Evaluate | None,
    train_keys: Sequence[str],
    site_names: Mapping[int, str],
    label: str,
    log: Callable[[str], None],
) -> StageResult:
    """Run (or resume) ``rounds`` rounds of the configured strategy; see the module docstring.

    Args:
        grid: the run's grid.
        fed: the federation settings (strategy, timeouts, resume).
        folder: the stage's folder (checkpoint, metrics.csv, replies.jsonl).
        rounds: the stage's number of rounds.
        initial: round-0 weights (ignored when resuming from a checkpoint).
        train_config: extra keys of every train instruction (identity, ``stage``, ...).
        schedule: ``average_last`` for the final tail average.
        evaluate: ``(round, weights) -> flat metrics`` after every round (and round 0), or
            ``None``; an empty dict means "not evaluated this round".
        train_keys: site metrics averaged into each row (weighted by ``num-examples``).
        site_names: node id → site name for the audit.
        label: the stage's name in log lines.
        log: progress lines.
    """
    folder.mkdir(parents=True, exist_ok=True)
    stage = RunFolder(folder)
    checkpoint = load_checkpoint(folder)
    strategy = build_strategy(fed)
    history: list[dict[str, Any]] = []
    site_history: list[dict[str, Any]] = []
    start_round = 0
    initial_arrays = ArrayRecord(dict(initial))
    if checkpoint is not None:
        start_round = checkpoint.round
        history = [dict(r) for r in checkpoint.history]
        site_history = [dict(r) for r in checkpoint.meta.get("site_history", [])]
        initial_arrays = ArrayRecord(
            {k: torch.from_numpy(np.array(v)) for k, v in checkpoint.arrays.items()}
        )
        strategy.load_state_arrays(checkpoint.strategy_state)  # type: ignore[attr-defined]
        log(f"{label}: resuming after round {start_round} of {rounds}")
    # metrics.csv mirrors the history (a round in flight when the server died is dropped)
    (folder / "metrics.csv").unlink(missing_ok=True)
    for row in history:
        stage.append_metrics(row)
    strategy.round_offset = start_round  # type: ignore[attr-defined]
    audit_path = folder / "replies.jsonl"

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        rnd = server_round + start_round
        if server_round == 0 and start_round > 0:
            return None  # the checkpoint's model was evaluated before the restart
        t0 = time.perf_counter()
        eval_row = evaluate(rnd, arrays.to_torch_state_dict()) if evaluate else {}
        entry = strategy.round_log.rounds.get(rnd) if rnd > 0 else None  # type: ignore[attr-defined]
        row = _round_row(rnd, entry, eval_row, time.perf_counter() - t0, train_keys)
        history.append(row)
        stage.append_metrics(row)
        if entry is not None:
            site_row: dict[str, Any] = {"round": rnd}
            sent = {s["node_id"]: s["bytes"] for s in entry["sent"]}
            elapsed = entry.get("received", entry["started"]) - entry["started"]
            with audit_path.open("a") as fh:
                for reply in entry["replies"]:
                    site = site_names.get(reply["node_id"], f"node-{reply['node_id']}")
                    line = {
                        "round": rnd,
                        "site": site,
                        "bytes_received": sent.get(reply["node_id"]),
                        "round_seconds": elapsed,
                        **reply,
                    }
                    fh.write(json.dumps(line) + "\n")
                    for key, value in reply.get("metrics", {}).items():
                        site_row[f"{site}/{key}"] = value
            site_history.append(site_row)
        if rnd > 0:
            save_checkpoint(
                folder,
                rnd,
                {k: a.numpy() for k, a in arrays.items()},
                strategy_state=strategy.state_arrays(),  # type: ignore[attr-defined]
                history=history,
                meta={
                    "stage": label,
                    "strategy": fed.strategy,
                    "num_server_rounds": rounds,
                    "site_history": site_history,
                },
            )
        log(_round_line(label, rnd, rounds, row))
        return MetricRecord({k: float(v) for k, v in row.items() if isinstance(v, int | float)})

    final_arrays = initial_arrays
    remaining = rounds - start_round
    if remaining > 0:
        result = strategy.start(
            grid=grid,
            initial_arrays=initial_arrays,
            num_rounds=remaining,
            timeout=fed.round_timeout_s,
            train_config=ConfigRecord(dict(train_config)),
            evaluate_fn=evaluate_fn,
        )
        if len(result.arrays):
            final_arrays = result.arrays
    state, averaged = tail_average(folder, rounds, schedule, final_arrays)
    if len(averaged) > 1:
        span = f"{averaged[0]}-{averaged[-1]}"
        log(f"{label}: final model = mean of the global models of rounds {span}")
    return StageResult(state, averaged, history, site_history, start_round)


def _round_line(label: str, rnd: int, rounds: int, row: Mapping[str, Any]) -> str:
    shown = [
        f"{key} {row[key]:.3f}"
        for key in ("c_index", "cpm", "recall_top5")
        if isinstance(row.get(key), int | float)
    ]
    return (
        f"{label} round {rnd}/{rounds}: {', '.join(shown) or 'not evaluated'}, "
        f"sites {row['sites']}, patients {row['n_patients']}"
    )
