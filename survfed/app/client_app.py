"""The survfed ClientApp: what a hospital site runs for each instruction of a run.

Translation only — the work is in :mod:`survfed.client.local_training`. Every handler first
checks that the instruction comes from the survfed app at the survfed version this site
installed (:func:`~survfed.app.identity.check_app_identity`), then checks its own reply
against the egress whitelist (:func:`~survfed.app.identity.check_reply_content`) before it
leaves: arrays plus whitelisted scalar metrics, nothing else (no IDs, paths, per-patient
values). A site with fewer than ``min-patients-for-metrics`` patients sends weights and
``num-examples`` only, and no Breslow sums.

Handlers:

* ``train`` — receive ``arrays`` (the global state dict) and ``config`` (identity,
  ``server-round``, optional ``proximal-mu``); reply ``arrays`` (updated weights) and
  ``metrics`` (``num-examples`` + :data:`~survfed.client.local_training.TRAIN_METRICS`).
  The site's AdamW moments are kept from round to round on the site's disk
  (:class:`~survfed.client.optimizer_store.OptimizerStore`, keyed by the run folder, so a
  resumed run continues them too), so local training continues like one long run instead
  of restarting Adam every round.
* ``query`` — receive the final ``arrays``; reply ``aggregates`` (``events``, ``risk-sum`` on
  the common time grid) and ``metrics`` (``num-examples``).

Components (referenced from the FAB's pyproject)::

    clientapp = "survfed.app.client_app:app"
"""

from __future__ import annotations

import time

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from survfed.app.config import APP_NAME, FederationConfig, SiteContext, site_context
from survfed.app.identity import check_app_identity, check_reply_content
from survfed.client.crop_cache import CropDataset
from survfed.client.local_training import (
    TRAIN_METRICS,
    local_breslow_aggregates,
    train_locally,
)
from survfed.client.optimizer_store import OptimizerStore
from survfed.client.site_snapshot import open_site_dataset
from survfed.common.survival.model import ModelConfig

__all__ = ["APP_NAME", "QUERY_METRICS", "TRAIN_METRICS", "app", "load_site_dataset"]

QUERY_METRICS = ("num-examples",)


def load_site_dataset(ctx: SiteContext, model: ModelConfig) -> CropDataset:
    """The site's crop dataset from the manifest ``survfed-client`` prepared (or prepare it)."""
    return open_site_dataset(ctx.site, ctx.data_dir, ctx.cache_dir, model)


def _setup(msg: Message, context: Context) -> tuple[FederationConfig, CropDataset, SiteContext]:
    check_app_identity(msg.content["config"], APP_NAME)
    fed = FederationConfig.from_run_config(dict(context.run_config))
    ctx = site_context(dict(context.node_config), fed)
    return fed, load_site_dataset(ctx, fed.train.model), ctx


app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Local training on the site's patients; reply weights + num-examples (+ aggregates)."""
    started = time.perf_counter()
    fed, dataset, ctx = _setup(msg, context)
    config = msg.content["config"]
    server_round = int(config.get("server-round", 0))
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
    metrics = dict(update.metrics)
    if len(metrics) > 1:  # not a site below min-patients-for-metrics
        metrics["site-seconds"] = time.perf_counter() - started
    content = RecordDict(
        {"arrays": ArrayRecord(update.state_dict), "metrics": MetricRecord(metrics)}
    )
    check_reply_content(content, TRAIN_METRICS)
    return Message(content=content, reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Breslow sums on the common grid under the received (final) weights."""
    fed, dataset, _ = _setup(msg, context)
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
    return Message(content=content, reply_to=msg)
