"""A trivial numpy Flower app that exercises the deployment plumbing end to end.

It is the stand-in for the real survival app while transport and security are tested:
same contract (site name and data folder from the SuperNode's node config, app identity
check, egress policy, FedAvg weighted by ``num-examples``), but a linear model on
synthetic data so a round takes milliseconds.

Components (referenced from ``tests/server/flower_toy_app/pyproject.toml``)::

    serverapp = "survfed.app.toy:server_app"
    clientapp = "survfed.app.toy:client_app"

Run config keys (``flwr run ... --run-config``): ``num-server-rounds``, ``min-nodes``,
``round-timeout`` (s), ``fraction-evaluate``, ``out-dir`` (absolute folder the ServerApp
writes ``final.npz``, ``history.json`` and ``replies.json`` into), ``app-version`` (the
survfed version the ServerApp claims; tests set it to simulate a mismatched server).
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from survfed.app.identity import (
    app_identity,
    check_app_identity,
    check_reply_content,
    describe_content,
)

APP_NAME = "survfed-toy"
N_FEATURES = 3
LOCAL_STEPS = 5
LEARNING_RATE = 0.1
TRAIN_METRICS = ("num-examples", "train-loss")
EVAL_METRICS = ("num-examples", "eval-loss")
_TRUE_W = np.array([1.0, -2.0, 0.5])


def site_examples(site: str) -> int:
    """Number of training examples ("patients") of ``site``: 20..59, fixed per name."""
    return 20 + zlib.crc32(site.encode()) % 40


def site_data(site: str) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic regression data of ``site``: X (n, 3) float64, y (n,) float64."""
    if not site:
        raise ValueError("site must be a non-empty site name (node config key 'site')")
    rng = np.random.default_rng(zlib.crc32(site.encode()))
    n = site_examples(site)
    x = rng.normal(size=(n, N_FEATURES)) + rng.normal(size=N_FEATURES)  # site shift
    y = x @ _TRUE_W + 0.1 * rng.normal(size=n)
    return x, y


def local_train(weights: np.ndarray, site: str) -> tuple[np.ndarray, float, int]:
    """``LOCAL_STEPS`` full-batch gradient steps on the site's MSE; (w, loss, n)."""
    x, y = site_data(site)
    w = np.asarray(weights, dtype=np.float64).copy()
    for _ in range(LOCAL_STEPS):
        w -= LEARNING_RATE * 2.0 * x.T @ (x @ w - y) / len(y)
    loss = float(np.mean((x @ w - y) ** 2))
    return w, loss, len(y)


def _site(context: Context) -> str:
    site = context.node_config.get("site")
    if not isinstance(site, str) or not site:
        raise ValueError(
            "the SuperNode's node config has no 'site' (start it with "
            "--node-config \"site='iowa' data-dir='/data/iowa'\")"
        )
    return site


client_app = ClientApp()


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    check_app_identity(msg.content["config"], APP_NAME)
    site = _site(context)
    w0 = msg.content["arrays"].to_numpy_ndarrays()[0]
    w, loss, n = local_train(w0, site)
    content = RecordDict(
        {
            "arrays": ArrayRecord([w]),
            "metrics": MetricRecord({"num-examples": n, "train-loss": loss}),
        }
    )
    check_reply_content(content, TRAIN_METRICS)
    return Message(content=content, reply_to=msg)


@client_app.evaluate()
def _evaluate(msg: Message, context: Context) -> Message:
    check_app_identity(msg.content["config"], APP_NAME)
    site = _site(context)
    w = msg.content["arrays"].to_numpy_ndarrays()[0]
    x, y = site_data(site)
    loss = float(np.mean((x @ w - y) ** 2))
    content = RecordDict({"metrics": MetricRecord({"num-examples": len(y), "eval-loss": loss})})
    check_reply_content(content, EVAL_METRICS)
    return Message(content=content, reply_to=msg)


class _AuditedFedAvg(FedAvg):
    """FedAvg that records what every reply actually contained, before aggregating."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.audit: list[dict[str, Any]] = []

    def _record(self, stage: str, server_round: int, replies: list[Message]) -> None:
        for reply in replies:
            entry: dict[str, Any] = {
                "stage": stage,
                "round": server_round,
                "node_id": reply.metadata.src_node_id,
            }
            if reply.has_error():
                entry["error"] = f"{reply.error.code}: {reply.error.reason}"
            else:
                entry["content"] = describe_content(reply.content)
            self.audit.append(entry)

    def aggregate_train(self, server_round: int, replies: Any) -> Any:
        replies = list(replies)
        self._record("train", server_round, replies)
        return super().aggregate_train(server_round, replies)

    def aggregate_evaluate(self, server_round: int, replies: Any) -> Any:
        replies = list(replies)
        self._record("evaluate", server_round, replies)
        return super().aggregate_evaluate(server_round, replies)


server_app = ServerApp()


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    out_dir = Path(str(cfg["out-dir"]))
    if not out_dir.is_absolute():
        raise ValueError(f"run config out-dir={out_dir} must be an absolute path")
    out_dir.mkdir(parents=True, exist_ok=True)
    min_nodes = int(cfg["min-nodes"])
    version = str(cfg.get("app-version", "")) or None
    identity = ConfigRecord(app_identity(APP_NAME, version))
    strategy = _AuditedFedAvg(
        fraction_evaluate=float(cfg.get("fraction-evaluate", 1.0)),
        min_train_nodes=min_nodes,
        min_evaluate_nodes=min_nodes,
        min_available_nodes=min_nodes,
    )
    initial = ArrayRecord([np.zeros(N_FEATURES)])
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=int(cfg["num-server-rounds"]),
        timeout=float(cfg["round-timeout"]),
        train_config=identity,
        evaluate_config=identity,
    )
    (out_dir / "replies.json").write_text(json.dumps(strategy.audit, indent=1))
    # no successful round (e.g. every site refused): the global model is the initial one
    final = (result.arrays if len(result.arrays) else initial).to_numpy_ndarrays()[0]
    np.savez(out_dir / "final.npz", w=final)
    history = {
        "train": {str(r): dict(m) for r, m in result.train_metrics_clientapp.items()},
        "evaluate": {str(r): dict(m) for r, m in result.evaluate_metrics_clientapp.items()},
    }
    (out_dir / "history.json").write_text(json.dumps(history, indent=1))
