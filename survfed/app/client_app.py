"""The survfed ClientApp: what a hospital site runs for each instruction of a run.

Translation only — the work is in :mod:`survfed.client.local_training` (survival) and
:mod:`survfed.client.local_detection` (detector). Every handler first checks that the
instruction comes from the survfed app at the survfed version this site installed
(:func:`~survfed.app.identity.check_app_identity`), then checks its own reply against the
egress whitelist (:func:`~survfed.app.identity.check_reply_content`) before it leaves: arrays
plus whitelisted scalar metrics, nothing else (no IDs, paths, per-patient values). A site with
fewer than ``min-patients-for-metrics`` patients sends weights and ``num-examples`` only, and
no Breslow sums.

Handlers (the instruction's ``config`` says which stage or action):

* ``train`` with ``stage = "survival"`` (default) — receive ``arrays`` (the global survival
  model) and ``config`` (identity, ``server-round``, ``crop-source``, optional
  ``proximal-mu``); reply ``arrays`` (updated weights) and ``metrics`` (``num-examples`` +
  :data:`~survfed.client.local_training.TRAIN_METRICS`).
* ``train`` with ``stage = "detector"`` — the same for the N-Net detector on the site's
  annotated scans; a site without annotated patients replies ``num-examples = 0`` and no
  arrays (:data:`~survfed.client.local_detection.DETECTOR_TRAIN_METRICS`).
* ``query`` with ``action = "proposals"`` — receive the final detector; propose nodules in
  every usable patient and cut the survival crops there (cached at the site); reply
  ``num-examples`` (patients with crops) only.
* ``query`` (``action = "baseline"``, default) — receive the final survival model; reply
  ``aggregates`` (``events``, ``risk-sum`` on the common time grid) and ``num-examples``.

Each answered instruction also writes one line to the site's own log (the SuperNode's log
file): what was asked, how long it took, the reply's weight bytes and its metrics, so a site
operator can follow the run without the coordinator.

The site's AdamW moments are kept from round to round on the site's disk
(:class:`~survfed.client.optimizer_store.OptimizerStore`, keyed by the run folder, so a resumed
run continues them too), so local training continues like one long run.

Components (referenced from the FAB's pyproject)::

    clientapp = "survfed.app.client_app:app"
"""

from __future__ import annotations

import time
from logging import INFO

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from survfed.app.config import APP_NAME, FederationConfig, SiteContext, site_context
from survfed.app.identity import check_app_identity, check_reply_content
from survfed.client.crop_cache import ANNOTATIONS, CropDataset
from survfed.client.local_training import (
    TRAIN_METRICS,
    LocalUpdate,
    local_breslow_aggregates,
    train_locally,
)
from survfed.client.optimizer_store import OptimizerStore
from survfed.client.site_snapshot import open_site_dataset
from survfed.common.survival.model import ModelConfig

__all__ = ["APP_NAME", "QUERY_METRICS", "TRAIN_METRICS", "app", "load_site_dataset"]

QUERY_METRICS = ("num-examples",)


def load_site_dataset(
    ctx: SiteContext, model: ModelConfig, source: str = ANNOTATIONS
) -> CropDataset:
    """The site's crop dataset from the manifest ``survfed-client`` (or the proposal step)
    prepared; annotation crops are prepared here when missing."""
    return open_site_dataset(ctx.site, ctx.data_dir, ctx.cache_dir, model, source)


def _setup(msg: Message, context: Context) -> tuple[FederationConfig, SiteContext]:
    check_app_identity(msg.content["config"], APP_NAME)
    fed = FederationConfig.from_run_config(dict(context.run_config))
    return fed, site_context(dict(context.node_config), fed)


def _say(site: str, what: str, content: RecordDict, started: float) -> None:
    """One line in the site's log for an answered instruction (nothing of it is sent)."""
    size = sum(len(a.data) for rec in content.array_records.values() for a in rec.values())
    metrics = {k: v for rec in content.metric_records.values() for k, v in rec.items()}
    shown = ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
    )
    if not size:
        sent = "no arrays, "
    else:
        sent = f"arrays {size / 1e6:.2f} MB, " if size >= 100_000 else f"arrays {size} bytes, "
    log(
        INFO,
        "survfed site %s: %s answered in %.1f s; reply: %s%s",
        site, what, time.perf_counter() - started, sent, shown,
    )  # fmt: skip


def _reply(
    msg: Message,
    update: LocalUpdate,
    started: float,
    allowed: tuple[str, ...],
    site: str,
    what: str,
) -> Message:
    metrics = dict(update.metrics)
    if len(metrics) > 1:  # not a site below min-patients-for-metrics
        metrics["site-seconds"] = time.perf_counter() - started
    records: dict[str, ArrayRecord | MetricRecord] = {"metrics": MetricRecord(metrics)}
    if update.num_examples > 0:
        records = {"arrays": ArrayRecord(update.state_dict), **records}
    content = RecordDict(records)
    check_reply_content(content, allowed)
    _say(site, what, content, started)
    return Message(content=content, reply_to=msg)


app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training of the instruction's stage; reply weights + num-examples (+ metrics)."""
    started = time.perf_counter()
    fed, ctx = _setup(msg, context)
    config = msg.content["config"]
    server_round = int(config.get("server-round", 0))
    if str(config.get("stage", "survival")) == "detector":
        return _train_detector(msg, fed, ctx, server_round, started)
    dataset = load_site_dataset(ctx, fed.train.model, str(config.get("crop-source", ANNOTATIONS)))
    store = OptimizerStore(ctx.cache_dir, fed.run_dir or str(context.run_id))
    update = train_locally(
        msg.content["arrays"].to_torch_state_dict(),
        dataset,
        fed.train,
        site=ctx.site,
        server_round=server_round,
        proximal_mu=float(config.get("proximal-mu", 0.0)),
        min_patients_for_metrics=fed.min_patients_for_metrics,
        optimizer_state=store.load(server_round),
        total_rounds=fed.num_server_rounds,
    )
    if update.optimizer_state:  # stays at the site, never in a reply
        store.save(server_round, update.optimizer_state)
    what = f"survival round {server_round}/{fed.num_server_rounds}"
    return _reply(msg, update, started, TRAIN_METRICS, ctx.site, what)


def _train_detector(
    msg: Message, fed: FederationConfig, ctx: SiteContext, server_round: int, started: float
) -> Message:
    # imported here: the detector code pulls in MONAI (~2 s), which survival rounds never need
    from survfed.client.detection_data import load_scans, open_scan_records
    from survfed.client.local_detection import DETECTOR_TRAIN_METRICS, train_detector_locally

    config = msg.content["config"]
    records = open_scan_records(
        ctx.site, ctx.data_dir, ctx.cache_dir, fed.detector.preprocess_config()
    )
    store = OptimizerStore(ctx.cache_dir, fed.run_dir or str(msg.metadata.run_id), "detector")
    update = train_detector_locally(
        msg.content["arrays"].to_torch_state_dict(),
        load_scans(records),
        fed.detector,
        site=ctx.site,
        server_round=server_round,
        total_rounds=fed.detector_rounds,
        proximal_mu=float(config.get("proximal-mu", 0.0)),
        min_patients_for_metrics=fed.min_patients_for_metrics,
        optimizer_state=store.load(server_round),
    )
    if update.optimizer_state:
        store.save(server_round, update.optimizer_state)
    what = f"detector round {server_round}/{fed.detector_rounds}"
    return _reply(msg, update, started, DETECTOR_TRAIN_METRICS, ctx.site, what)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Proposal crops for the final detector, or Breslow sums under the final survival model."""
    started = time.perf_counter()
    fed, ctx = _setup(msg, context)
    config = msg.content["config"]
    if str(config.get("action", "baseline")) == "proposals":
        return _proposals(msg, fed, ctx, started)
    dataset = load_site_dataset(ctx, fed.train.model, str(config.get("crop-source", ANNOTATIONS)))
    n = len(dataset)
    records: dict[str, ArrayRecord | MetricRecord] = {"metrics": MetricRecord({"num-examples": n})}
    if n >= fed.min_patients_for_metrics:
        agg = local_breslow_aggregates(
            msg.content["arrays"].to_torch_state_dict(), dataset, fed.train
        )
        records["aggregates"] = ArrayRecord(
            {"events": Array(agg.events), "risk-sum": Array(agg.risk_sum)}
        )
    content = RecordDict(records)
    check_reply_content(content, QUERY_METRICS)
    _say(ctx.site, "Breslow sums for the final model", content, started)
    return Message(content=content, reply_to=msg)


def _proposals(msg: Message, fed: FederationConfig, ctx: SiteContext, started: float) -> Message:
    from survfed.client.detection_data import open_scan_records
    from survfed.client.local_detection import PROPOSAL_METRICS, prepare_proposal_crops

    records = open_scan_records(
        ctx.site, ctx.data_dir, ctx.cache_dir, fed.detector.preprocess_config()
    )
    dataset = prepare_proposal_crops(
        ctx.site,
        ctx.data_dir,
        ctx.cache_dir,
        fed.train.model,
        msg.content["arrays"].to_torch_state_dict(),
        fed.detector,
        records,
    )
    metrics: dict[str, int | float] = {"num-examples": len(dataset)}
    if len(dataset) >= fed.min_patients_for_metrics:
        metrics["site-seconds"] = time.perf_counter() - started
    content = RecordDict({"metrics": MetricRecord(metrics)})
    check_reply_content(content, PROPOSAL_METRICS)
    _say(ctx.site, "proposal crops for the final detector", content, started)
    return Message(content=content, reply_to=msg)
