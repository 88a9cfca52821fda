"""The detector stage of a federated run (coordinator side) and the proposal step after it.

:func:`run_detector_stage` runs ``detector-rounds`` rounds of the configured strategy on the
N-Net (:func:`survfed.server.rounds.run_rounds`, folder ``RUN/detector/``): sites with annotated
patients train it locally and weigh in by their number of annotated patients; sites without
annotations answer with zero examples and are simply not averaged in. After every
``detector-eval-every``-th round the global detector is scored on the held-out cohorts
(:mod:`survfed.server.detector_eval`). The final detector (the last round's
global model, or the mean of the last rounds' with ``detector-average-last``) is
``RUN/detector/detector.pt``, with ``eval-<cohort>/`` reports (FROC, CPM, top-5 recall).
A resumed run whose detector stage had finished reloads ``detector.pt`` and goes on.

With ``detector-init`` the rounds start from that detector's weights instead of a random N-Net
(:func:`initial_detector_state`, which checks that it fits the run's settings); with
``detector-init`` and no detector rounds the stage only copies it to ``RUN/detector/detector.pt``
and scores it, so a survival federation can use a detector trained before (pooled, or by an
earlier federation) without training it again.

:func:`query_proposals` then sends the final detector to every site once; each proposes
nodules in all of its usable patients and cuts the survival crops there (only counts come back).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common import MessageType
from flwr.serverapp import Grid

from survfed.app.config import FederationConfig
from survfed.client.local_detection import detector_id, load_detector_state
from survfed.common.config import resolve_device
from survfed.common.detection.nnet import build_nnet
from survfed.common.detection.train import load_detector, save_detector
from survfed.common.run_folder import find_detector
from survfed.common.survival.plots import plot_metric_history
from survfed.server.detector_eval import (
    DetectorEvaluation,
    HeldOutScans,
    evaluate_detector,
    load_held_out_scans,
    write_detector_report,
)
from survfed.server.rounds import StageResult, run_rounds

__all__ = [
    "DETECTOR_DIR",
    "DetectorStage",
    "check_detector_init",
    "initial_detector_state",
    "query_proposals",
    "run_detector_stage",
]

DETECTOR_DIR = "detector"
"""``RUN/detector/``: the detector stage's folder."""
_TRAIN_KEYS = ("det-loss", "det-cls", "det-reg", "det-pos-recall")


@dataclass(frozen=True)
class DetectorStage:
    """The outcome of the detector stage.

    Attributes:
        state: the final global detector's weights.
        detector_id: their id (the sites key their proposal crops by it).
        evaluations: held-out cohort → detection metrics of the final detector.
        held_out: the held-out cohorts' preprocessed scans (for the survival crops).
        rounds: the stage's history (``None`` when it had finished before a resume, or when
            the run has no detector rounds).
        init: the detector file the stage started from (``detector-init``), if any.
    """

    state: dict[str, torch.Tensor]
    detector_id: str
    evaluations: dict[str, DetectorEvaluation]
    held_out: list[HeldOutScans]
    rounds: StageResult | None
    init: str | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-able: id, final metrics per cohort, averaged rounds."""
        return {
            "detector_id": self.detector_id,
            "evaluations": {k: v.to_dict() for k, v in self.evaluations.items()},
            "averaged_rounds": self.rounds.averaged_rounds if self.rounds else None,
            "init": self.init,
        }


def _flat(evaluations: Mapping[str, DetectorEvaluation]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for i, (name, ev) in enumerate(evaluations.items()):
        prefix = "" if i == 0 else f"{name}/"
        m = ev.metrics
        row[prefix + "cpm"] = m.cpm
        row[prefix + "recall_top5"] = m.recall_top_k
        row[prefix + "cpm_all"] = ev.metrics_all.cpm
        for rate, sens in m.sensitivities.items():
            row[f"{prefix}sens_{rate:g}"] = sens
    return row


# settings a detector's weights only mean something under: the architecture, the grid its
# voxels are on, and the anchors its outputs are relative to
_INIT_FIELDS = ("width", "norm", "anchors_mm", "spacing_mm")


def initial_detector_state(fed: FederationConfig) -> tuple[dict[str, torch.Tensor], str | None]:
    """The detector stage's round-0 weights and the file they came from.

    Without ``detector-init``: a fresh N-Net built under ``torch.manual_seed(seed)`` (as the
    pooled detector) and ``None``. With it: that file's weights (``detector-init`` may name the
    file or a run folder holding ``detector.pt`` or ``detector/detector.pt``).

    Raises:
        FileNotFoundError: ``detector-init`` names neither a detector file nor a run folder
            holding one.
        ValueError: the file is not a survfed detector, or its architecture, grid or anchors
            differ from the run's (the message names the file, each setting and both values).
    """
    config = fed.detector.detector
    if not fed.detector_init:
        torch.manual_seed(fed.detector.seed)
        return build_nnet(config).state_dict(), None
    given = Path(fed.detector_init)
    path = find_detector(given) if given.is_dir() else given
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"detector-init: {given} is neither a detector file nor a run folder holding "
            "detector.pt or detector/detector.pt"
        )
    model, saved = load_detector(path)
    differ = [
        f"{name}: file {getattr(saved, name)!r}, run {getattr(config, name)!r}"
        for name in _INIT_FIELDS
        if getattr(saved, name) != getattr(config, name)
    ]
    if differ:
        raise ValueError(
            f"detector-init: {path} does not fit this run's detector ({'; '.join(differ)}); "
            "set the run's detector-preset / detector-width / detector-spacing-mm to the file's"
        )
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, str(path)


def check_detector_init(fed: FederationConfig, log: Callable[[str], None]) -> None:
    """Check ``detector-init`` before a run starts (raises as :func:`initial_detector_state`)
    and say what the run will do with it."""
    _, init = initial_detector_state(fed)
    what = "the detector rounds start from" if fed.detector_rounds else "the run's detector is"
    log(f"detector-init: {what} {init}")


def run_detector_stage(
    grid: Grid,
    fed: FederationConfig,
    *,
    run_dir: Path,
    cache_dir: Path,
    identity: Mapping[str, Any],
    site_names: Mapping[int, str],
    log: Callable[[str], None],
) -> DetectorStage:
    """Run (or resume, or reload) the detector stage; see the module docstring."""
    folder = Path(run_dir) / DETECTOR_DIR
    folder.mkdir(parents=True, exist_ok=True)
    config = fed.detector
    device = resolve_device(config.device)
    held = load_held_out_scans(fed.eval_cohorts, cache_dir / "scans", config)
    for c in held:
        log(
            f"held-out cohort {c.name}: {len(c.records)} preprocessed scans, "
            f"{len(c.scans.scans)} annotated ({c.scans.n_nodules} nodules)"
        )
    model_path = folder / "detector.pt"
    rounds: StageResult | None = None
    init = fed.detector_init or None
    if model_path.is_file() and fed.resume:
        model, _ = load_detector(model_path, map_location=device)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        log(f"detector stage already finished: {model_path}")
    elif fed.detector_rounds == 0:  # detector-init as it is: kept in the run folder
        state, init = initial_detector_state(fed)
        save_detector(model_path, load_detector_state(state, config, "cpu"), config.detector)
        log(f"detector from {init} (no detector rounds), copied to {model_path}")
    else:
        initial, init = initial_detector_state(fed)
        if init is not None:
            log(f"detector rounds start from {init}")
        every = fed.detector_eval_every

        def evaluate(rnd: int, weights: dict[str, torch.Tensor]) -> dict[str, Any]:
            if rnd == 0 or not (rnd % every == 0 or rnd == fed.detector_rounds):
                return {}
            net = load_detector_state(weights, config, device)
            return _flat(evaluate_detector(net, held, config, device=device))

        rounds = run_rounds(
            grid,
            fed,
            folder=folder,
            rounds=fed.detector_rounds,
            initial=initial,
            train_config={**identity, "stage": "detector"},
            schedule=config,
            evaluate=evaluate,
            train_keys=_TRAIN_KEYS,
            site_names=site_names,
            label="detector",
            log=log,
        )
        state = rounds.state
        net = load_detector_state(state, config, "cpu")
        save_detector(model_path, net, config.detector)
    model = load_detector_state(state, config, device)
    evaluations = evaluate_detector(model, held, config, device=device)
    for name, ev in evaluations.items():
        write_detector_report(
            ev, folder / f"eval-{name}", f"survfed federated detector ({run_dir.name}) on {name}"
        )
        log(
            f"detector on {name}: CPM {ev.metrics.cpm:.3f}, top-5 recall "
            f"{ev.metrics.recall_top_k:.3f} (nodules >= 6 mm, n={ev.metrics.n_nodules})"
        )
    if rounds is not None and rounds.history:
        keys = [k for k in ("cpm", "recall_top5", "cpm_all") if any(k in r for r in rounds.history)]
        if keys:
            plot_metric_history(rounds.history, keys, folder / "heldout_metrics_per_round.png")
        loss_rows = [r for r in rounds.history if r.get("det_loss") is not None]
        if loss_rows:
            plot_metric_history(loss_rows, ["det_loss", "det_cls", "det_reg"], folder / "train.png")
    stage = DetectorStage(state, detector_id(state), evaluations, held, rounds, init)
    (folder / "summary.json").write_text(json.dumps(stage.summary(), indent=2, default=str))
    return stage


def query_proposals(
    grid: Grid,
    state: Mapping[str, torch.Tensor],
    fed: FederationConfig,
    identity: Mapping[str, Any],
    log: Callable[[str], None],
) -> dict[int, int]:
    """Send the final detector to every connected site for its proposal crops.

    Returns node id → patients with crops, for the sites that answered.
    """
    config = ConfigRecord({**identity, "action": "proposals"})
    arrays = ArrayRecord(dict(state))
    messages = [
        Message(
            content=RecordDict({"arrays": arrays, "config": config}),
            message_type=MessageType.QUERY,
            dst_node_id=node_id,
        )
        for node_id in grid.get_node_ids()
    ]
    started = time.perf_counter()
    replies = grid.send_and_receive(messages, timeout=fed.round_timeout_s)
    counts: dict[int, int] = {}
    site_seconds: list[float] = []
    dst = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
    for reply in replies:
        node = int(dst.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id))
        if reply.has_error():
            log(f"proposals: node {node} failed: {reply.error.reason}")
            continue
        metrics = next(iter(reply.content.metric_records.values()), {})
        counts[node] = int(metrics.get("num-examples", 0))
        if "site-seconds" in metrics:
            site_seconds.append(float(metrics["site-seconds"]))
    slowest = f"; slowest site's handler {max(site_seconds):.1f} s" if site_seconds else ""
    log(
        f"proposal crops ready at {len(counts)} of {len(messages)} sites "
        f"({sum(counts.values())} patients) in {time.perf_counter() - started:.1f} s{slowest}"
    )
    return counts
