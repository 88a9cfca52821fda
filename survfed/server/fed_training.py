"""The coordinator's side of a federated run, given a Flower ``Grid`` (called by the ServerApp).

:func:`run_federated_training`:

1. reads or creates the run folder (``config.json``); with ``resume`` it loads the latest
   checkpoint and runs only the remaining rounds, otherwise it refuses a folder that already
   holds a checkpoint;
2. runs the configured Flower strategy (:func:`survfed.server.strategies.build_strategy`) with
   ``strategy.start(...)``; its ``evaluate_fn`` scores the global model on the held-out cohorts
   after every round (cheap bootstrap), appends a row to ``metrics.csv``, and writes the round's
   checkpoint (weights, round, strategy state, metrics history) atomically;
3. after the last round writes ``model.pt``, asks the sites for their Breslow sums under the
   final weights (a ``query`` message; only sums on the common grid come back), builds the
   baseline (``baseline.json``), evaluates with the full bootstrap (``eval-<cohort>/``), and
   writes the report (``report/``: metrics per round, per-site training metrics, plus the
   per-cohort Kaplan–Meier plots) and ``summary.json``.

Per-round audit of what the sites sent (record kinds, keys, types, bytes; never values) goes
to ``replies.jsonl``.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import MessageType
from flwr.serverapp import Grid

from survfed import __version__
from survfed.app.config import APP_NAME, FederationConfig
from survfed.app.identity import app_identity
from survfed.common.run_folder import RunFolder
from survfed.common.survival.baseline import baseline_from_aggregates, make_time_grid
from survfed.common.survival.model import save_model
from survfed.common.survival.plots import plot_metric_history
from survfed.common.survival.snapshot import SnapshotMean
from survfed.server.central_eval import (
    evaluate_state,
    load_held_out,
    summary_row,
    write_cohort_report,
)
from survfed.server.checkpoint import load_checkpoint, load_round_arrays, save_checkpoint
from survfed.server.strategies import build_strategy

__all__ = ["SITES_FILE", "initial_state", "run_federated_training"]

SITES_FILE = "sites.json"
_TRAIN_KEYS = ("train-loss", "train-cox", "train-bce", "train-prox", "train-c-index")


def initial_state(fed: FederationConfig) -> dict[str, torch.Tensor]:
    """The round-0 weights: the model built under ``torch.manual_seed(seed)`` (as pooled)."""
    torch.manual_seed(fed.train.seed)
    return fed.train.model.build_model().state_dict()


def _site_names(run: RunFolder) -> dict[int, str]:
    path = run.path / SITES_FILE
    if not path.is_file():
        return {}
    return {int(k): str(v) for k, v in json.loads(path.read_text()).items()}


def _to_numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in arrays.items()}


def _round_row(
    rnd: int, entry: dict[str, Any] | None, eval_row: dict[str, Any], eval_s: float
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
    for key in _TRAIN_KEYS:
        pairs = [(m[key], m["num-examples"]) for m in metrics if key in m]
        weight = sum(w for _, w in pairs)
        row[key.replace("-", "_")] = sum(v * w for v, w in pairs) / weight if weight else None
    sent = (entry or {}).get("sent", [])
    row["bytes_down_per_site"] = float(np.mean([s["bytes"] for s in sent])) if sent else None
    row["bytes_up_per_site"] = float(np.mean([r["bytes"] for r in ok])) if ok else None
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


def _tail_average(
    run_dir: Path, fed: FederationConfig, last: ArrayRecord
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """The final weights: the mean of the last rounds' global models (``average-last``).

    Reads the per-round checkpoint files, so a resumed run averages across its restart. Rounds
    whose file is missing are left out; with none left, the last weights are used as they are.
    """
    total = fed.num_server_rounds
    wanted = range(total - fed.train.averaged_snapshots(total) + 1, total + 1)
    mean, used = SnapshotMean(), []
    for rnd in wanted:
        arrays = load_round_arrays(run_dir, rnd)
        if arrays is not None:
            mean.add(arrays)
            used.append(rnd)
    if not used:
        return last.to_torch_state_dict(), []
    return mean.mean(), used


def _query_aggregates(
    grid: Grid, arrays: ArrayRecord, fed: FederationConfig, log: Callable[[str], None]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Ask every connected site for its Breslow sums under ``arrays``."""
    identity = ConfigRecord(app_identity(APP_NAME))
    messages = [
        Message(
            content=RecordDict({"arrays": arrays, "config": identity}),
            message_type=MessageType.QUERY,
            dst_node_id=node_id,
        )
        for node_id in grid.get_node_ids()
    ]
    replies = grid.send_and_receive(messages, timeout=fed.round_timeout_s)
    aggregates = []
    for reply in replies:
        if reply.has_error():
            log(f"baseline: node {reply.metadata.src_node_id} failed: {reply.error.reason}")
            continue
        agg = reply.content.array_records.get("aggregates")
        if agg is None:
            continue  # a site below min-patients-for-metrics sends no sums
        aggregates.append((agg["events"].numpy(), agg["risk-sum"].numpy()))
    return aggregates


def _write_report(
    run: RunFolder,
    history: list[dict[str, Any]],
    site_history: list[dict[str, Any]],
    site_names: list[str],
) -> list[Path]:
    out = run.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    keys = [k for k in ("c_index", "uno_c_index", "auc", "oracle_c_index") if k in history[-1]]
    if keys:  # no held-out cohort configured: nothing to plot
        paths.append(plot_metric_history(history, keys, out / "heldout_metrics_per_round.png"))
    rows = [r for r in history if r.get("train_loss") is not None]
    if rows:
        paths.append(
            plot_metric_history(rows, ["train_loss", "train_c_index"], out / "train_per_round.png")
        )
    if site_history and site_names:
        for metric in ("train-loss", "train-c-index"):
            per_site = [
                {"round": r["round"], **{s: r.get(f"{s}/{metric}") for s in site_names}}
                for r in site_history
            ]
            name = f"sites_{metric.replace('-', '_')}_per_round.png"
            paths.append(plot_metric_history(per_site, site_names, out / name))
    return paths


def run_federated_training(
    grid: Grid, fed: FederationConfig, *, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run (or resume) the federated training described by ``fed``; return the summary."""
    started = time.perf_counter()
    run = RunFolder(fed.run_path)
    run.path.mkdir(parents=True, exist_ok=True)
    checkpoint = load_checkpoint(run.path)
    if checkpoint is not None and not fed.resume:
        raise FileExistsError(
            f"run-dir {run.path} already holds a checkpoint (round {checkpoint.round}); resume "
            "it (survfed-server start --resume) or choose another run folder"
        )
    if run.model_path.exists() and not fed.resume:
        raise FileExistsError(f"run-dir {run.path} already holds a finished run (model.pt)")
    run.write_json(
        "config.json",
        {
            "kind": "federated",
            "survfed_version": __version__,
            "torch_version": torch.__version__,
            "python": platform.python_version(),
            "federation": fed.to_run_config(),
            "train": fed.train.to_dict(),
        },
    )
    cache = Path(fed.eval_cache_dir) if fed.eval_cache_dir else run.path / "cache"
    cohorts = load_held_out(fed.eval_cohorts, cache, fed.train.model)
    for c in cohorts:
        log(f"held-out cohort {c.name}: {len(c.dataset)} patients")
    strategy = build_strategy(fed)
    names = _site_names(run)

    history: list[dict[str, Any]] = []
    site_history: list[dict[str, Any]] = []
    start_round = 0
    initial = ArrayRecord(initial_state(fed))
    if checkpoint is not None:
        start_round = checkpoint.round
        history = [dict(r) for r in checkpoint.history]
        site_history = [dict(r) for r in checkpoint.meta.get("site_history", [])]
        initial = ArrayRecord(
            {k: torch.from_numpy(np.array(v)) for k, v in checkpoint.arrays.items()}
        )
        strategy.load_state_arrays(checkpoint.strategy_state)  # type: ignore[attr-defined]
        log(f"resuming {run.path} after round {start_round} of {fed.num_server_rounds}")
    # metrics.csv mirrors the history (a round in flight when the server died is dropped)
    (run.path / "metrics.csv").unlink(missing_ok=True)
    for row in history:
        run.append_metrics(row)
    strategy.round_offset = start_round  # type: ignore[attr-defined]
    remaining = fed.num_server_rounds - start_round
    audit_path = run.path / "replies.jsonl"

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        rnd = server_round + start_round
        if server_round == 0 and start_round > 0:
            return None  # the checkpoint's model was evaluated before the restart
        t0 = time.perf_counter()
        state = arrays.to_torch_state_dict()
        results = evaluate_state(
            state, cohorts, fed.train, n_bootstrap=fed.bootstrap_per_round, seed=fed.train.seed
        )
        eval_row: dict[str, Any] = {}
        for i, (name, (result, _)) in enumerate(results.items()):
            eval_row.update(summary_row(result, "" if i == 0 else f"{name}/"))
        entry = strategy.round_log.rounds.get(rnd) if rnd > 0 else None  # type: ignore[attr-defined]
        row = _round_row(rnd, entry, eval_row, time.perf_counter() - t0)
        history.append(row)
        run.append_metrics(row)
        if entry is not None:
            site_row: dict[str, Any] = {"round": rnd}
            sent = {s["node_id"]: s["bytes"] for s in entry["sent"]}
            elapsed = entry.get("received", entry["started"]) - entry["started"]
            with audit_path.open("a") as fh:
                for reply in entry["replies"]:
                    site = names.get(reply["node_id"], f"node-{reply['node_id']}")
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
                run.path,
                rnd,
                _to_numpy(arrays),
                strategy_state=strategy.state_arrays(),  # type: ignore[attr-defined]
                history=history,
                meta={
                    "strategy": fed.strategy,
                    "num_server_rounds": fed.num_server_rounds,
                    "site_history": site_history,
                },
            )
        c = row.get("c_index")
        log(
            f"round {rnd}/{fed.num_server_rounds}: held-out C-index "
            f"{'n/a' if c is None else f'{c:.3f}'}, sites {row['sites']}, "
            f"patients {row['n_patients']}"
        )
        return MetricRecord({k: float(v) for k, v in row.items() if isinstance(v, int | float)})

    identity = ConfigRecord(app_identity(APP_NAME))
    final_arrays = initial
    if remaining > 0:
        result = strategy.start(
            grid=grid,
            initial_arrays=initial,
            num_rounds=remaining,
            timeout=fed.round_timeout_s,
            train_config=identity,
            evaluate_fn=evaluate_fn,
        )
        if len(result.arrays):
            final_arrays = result.arrays
    state, averaged = _tail_average(run.path, fed, final_arrays)
    if len(averaged) > 1:
        log(f"final model: mean of the global models of rounds {averaged[0]}-{averaged[-1]}")
        final_arrays = ArrayRecord(state)
    model = fed.train.model.build_model()
    model.load_state_dict(state)
    save_model(run.model_path, model, fed.train.model)

    aggregates = _query_aggregates(grid, final_arrays, fed, log)
    baseline = None
    if aggregates:
        edges = make_time_grid(fed.train.grid_max_days, fed.train.grid_step_days)
        baseline = baseline_from_aggregates(aggregates, edges)
        run.write_baseline(baseline, aggregates)
    log(f"baseline hazard from {len(aggregates)} sites' sums")

    final = evaluate_state(
        state,
        cohorts,
        fed.train,
        n_bootstrap=fed.bootstrap_final,
        seed=fed.train.seed,
        baseline=baseline,
    )
    evaluations = {}
    for cohort in cohorts:
        result, g = final[cohort.name]
        report_dir = write_cohort_report(
            cohort,
            result,
            g,
            run.path / f"eval-{cohort.name}",
            baseline=baseline,
            title=f"survfed federated model ({run.path.name}) on {cohort.name}",
        )
        name = cohort.name
        evaluations[name] = {**result.to_dict(), "report": str(report_dir)}
    sites = sorted({k.split("/")[0] for r in site_history for k in r if "/" in k})
    plots = _write_report(run, history, site_history, sites) if history else []
    summary = {
        "kind": "federated",
        "strategy": fed.strategy,
        "rounds": fed.num_server_rounds,
        "resumed_from_round": start_round,
        "averaged_rounds": averaged,
        "history": history,
        "evaluations": evaluations,
        "baseline_sites": len(aggregates),
        "plots": [str(p) for p in plots],
        "seconds": time.perf_counter() - started,
    }
    run.write_json("summary.json", summary)
    return summary
