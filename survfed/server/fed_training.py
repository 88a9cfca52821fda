"""The coordinator's side of a federated run, given a Flower ``Grid`` (called by the ServerApp).

:func:`run_federated_training`:

1. reads or creates the run folder (``config.json``); with ``resume`` it continues from the
   latest checkpoints, otherwise it refuses a folder that already holds one;
2. with ``detector-rounds`` > 0 or ``detector-init``, runs the detector stage
   (:mod:`survfed.server.fed_detector`, ``RUN/detector/``) and, for ``crop-source =
   "detector"``, has every site cut its survival crops at the final detector's proposals (the
   held-out cohorts' crops are cut the same way here);
3. runs the survival rounds (:func:`survfed.server.rounds.run_rounds`): after every round the
   global model is scored on the held-out cohorts (cheap bootstrap), a row is appended to
   ``metrics.csv`` and the round's checkpoint written atomically;
4. writes ``model.pt`` (the mean of the last rounds' global models), asks the sites for their
   Breslow sums under it (a ``query`` message; only sums on the common grid come back), builds
   the baseline (``baseline.json``), evaluates with the full bootstrap (``eval-<cohort>/``), and
   writes the report (``report/``: metrics per round, per-site training metrics, plus the
   per-cohort Kaplan–Meier plots) and ``summary.json``.

Per-round audit of what the sites sent (record kinds, keys, types, bytes; never values) goes
to ``replies.jsonl`` (``detector/replies.jsonl`` for the detector stage).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common import MessageType
from flwr.serverapp import Grid

from survfed import __version__
from survfed.app.config import APP_NAME, FederationConfig
from survfed.app.identity import app_identity
from survfed.client.crop_cache import ANNOTATIONS, detector_source
from survfed.common.run_folder import RunFolder
from survfed.common.survival.baseline import baseline_from_aggregates, make_time_grid
from survfed.common.survival.encoders import load_detector_backbone
from survfed.common.survival.model import save_model
from survfed.common.survival.plots import plot_metric_history
from survfed.server.central_eval import (
    HeldOutCohort,
    evaluate_state,
    load_held_out,
    summary_row,
    write_cohort_report,
)
from survfed.server.checkpoint import checkpoint_dir, load_checkpoint
from survfed.server.rounds import SITES_FILE, read_site_names, run_rounds

__all__ = ["SITES_FILE", "initial_state", "run_federated_training"]

_TRAIN_KEYS = ("train-loss", "train-cox", "train-bce", "train-prox", "train-c-index")


def initial_state(
    fed: FederationConfig, detector: Mapping[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The round-0 weights: the model built under ``torch.manual_seed(seed)`` (as pooled).

    With an N-Net crop encoder (``encoder = "nnet"`` / ``"nnet-small"``) and the run's final
    detector of the same width, the encoder starts from the detector's backbone (seed 003's
    classifier starts from its detector).
    """
    torch.manual_seed(fed.train.seed)
    model = fed.train.model.build_model()
    if detector is not None and fed.train.model.encoder.startswith("nnet"):
        load_detector_backbone(model.encoder, detector)
    return model.state_dict()


def _query_aggregates(
    grid: Grid,
    arrays: ArrayRecord,
    fed: FederationConfig,
    identity: Mapping[str, Any],
    log: Callable[[str], None],
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Ask every connected site for its Breslow sums under ``arrays``."""
    config = ConfigRecord(dict(identity))
    messages = [
        Message(
            content=RecordDict({"arrays": arrays, "config": config}),
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


def _check_fresh(run: RunFolder, fed: FederationConfig) -> None:
    if fed.resume:
        return
    for folder in (run.path, run.path / "detector"):
        checkpoint = load_checkpoint(folder)
        if checkpoint is not None:
            raise FileExistsError(
                f"run-dir {run.path} already holds a checkpoint ({checkpoint_dir(folder)}, "
                f"round {checkpoint.round}); resume it (survfed-server start --resume) or "
                "choose another run folder"
            )
    if run.model_path.exists():
        raise FileExistsError(f"run-dir {run.path} already holds a finished run (model.pt)")


def _held_out(
    grid: Grid,
    fed: FederationConfig,
    run: RunFolder,
    cache: Path,
    identity: dict[str, Any],
    log: Callable[[str], None],
) -> tuple[list[HeldOutCohort], str, Any]:
    """The detector stage when configured; the held-out survival cohorts, the crop source and
    the stage (``None`` without a detector)."""
    if not fed.has_detector:
        return load_held_out(fed.eval_cohorts, cache, fed.train.model), ANNOTATIONS, None
    from survfed.client.local_detection import load_detector_state
    from survfed.common.config import resolve_device
    from survfed.server.detector_eval import proposal_centres
    from survfed.server.fed_detector import query_proposals, run_detector_stage

    names = read_site_names(run.path)
    stage = run_detector_stage(
        grid, fed, run_dir=run.path, cache_dir=cache, identity=identity, site_names=names,
        log=log,
    )  # fmt: skip
    if fed.crop_source != "detector":
        return load_held_out(fed.eval_cohorts, cache, fed.train.model), ANNOTATIONS, stage
    source = detector_source(stage.detector_id)
    query_proposals(grid, stage.state, fed, identity, log)
    device = resolve_device(fed.detector.device)
    net = load_detector_state(stage.state, fed.detector, device)
    centres = {
        c.name: proposal_centres(net, c, fed.detector, device=device, k=fed.train.model.k)
        for c in stage.held_out
    }
    cohorts = load_held_out(
        fed.eval_cohorts, cache, fed.train.model, source=source, centres_by_cohort=centres
    )
    return cohorts, source, stage


def run_federated_training(
    grid: Grid, fed: FederationConfig, *, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Run (or resume) the federated training described by ``fed``; return the summary."""
    started = time.perf_counter()
    run = RunFolder(fed.run_path)
    run.path.mkdir(parents=True, exist_ok=True)
    _check_fresh(run, fed)
    config: dict[str, Any] = {
        "kind": "federated",
        "survfed_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "federation": fed.to_run_config(),
        "train": fed.train.to_dict(),
    }
    if fed.has_detector:
        config["detector"] = fed.detector.to_dict()
    run.write_json("config.json", config)
    identity = dict(app_identity(APP_NAME))
    cache = Path(fed.eval_cache_dir) if fed.eval_cache_dir else run.path / "cache"
    cohorts, source, stage = _held_out(grid, fed, run, cache, identity, log)
    for c in cohorts:
        log(f"held-out cohort {c.name}: {len(c.dataset)} patients (crops: {source})")

    def evaluate(rnd: int, state: dict[str, torch.Tensor]) -> dict[str, Any]:
        results = evaluate_state(
            state, cohorts, fed.train, n_bootstrap=fed.bootstrap_per_round, seed=fed.train.seed
        )
        row: dict[str, Any] = {}
        for i, (name, scores) in enumerate(results.items()):
            row.update(summary_row(scores.result, "" if i == 0 else f"{name}/"))
        return row

    survival = run_rounds(
        grid,
        fed,
        folder=run.path,
        rounds=fed.num_server_rounds,
        initial=initial_state(fed, stage.state if stage is not None else None),
        train_config={**identity, "stage": "survival", "crop-source": source},
        schedule=fed.train,
        evaluate=evaluate,
        train_keys=_TRAIN_KEYS,
        site_names=read_site_names(run.path),
        label="survival",
        log=log,
    )
    state = survival.state
    model = fed.train.model.build_model()
    model.load_state_dict(state)
    save_model(run.model_path, model, fed.train.model)

    final_identity = {**identity, "crop-source": source}
    aggregates = _query_aggregates(grid, ArrayRecord(state), fed, final_identity, log)
    baseline = None
    if aggregates:
        edges = make_time_grid(fed.train.grid_max_days, fed.train.grid_step_days)
        baseline = baseline_from_aggregates(aggregates, edges)
        run.write_baseline(baseline, aggregates)
    n = len(aggregates)
    log(f"baseline hazard from the sums of {n} site{'' if n == 1 else 's'}")

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
        scores = final[cohort.name]
        report_dir = write_cohort_report(
            cohort,
            scores,
            run.path / f"eval-{cohort.name}",
            baseline=baseline,
            title=f"survfed federated model ({run.path.name}) on {cohort.name}",
        )
        evaluations[cohort.name] = {**scores.result.to_dict(), "report": str(report_dir)}
    history, site_history = survival.history, survival.site_history
    sites = sorted({k.split("/")[0] for r in site_history for k in r if "/" in k})
    plots = _write_report(run, history, site_history, sites) if history else []
    summary = {
        "kind": "federated",
        "strategy": fed.strategy,
        "rounds": fed.num_server_rounds,
        "resumed_from_round": survival.resumed_from_round,
        "averaged_rounds": survival.averaged_rounds,
        "crop_source": source,
        "history": history,
        "evaluations": evaluations,
        "detector": stage.summary() if stage is not None else None,
        "baseline_sites": len(aggregates),
        "plots": [str(p) for p in plots],
        "seconds": time.perf_counter() - started,
    }
    run.write_json("summary.json", summary)
    return summary
