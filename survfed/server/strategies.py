"""Flower strategies for survfed: FedAvg / FedProx / FedAdam with what a real federation needs.

The strategies are flwr 1.41's own (:mod:`flwr.serverapp.strategy`); survfed adds, by mixin:

* a round offset, so a resumed run numbers its rounds ``k+1..R`` (the sites' batch seeds and
  FedAdam's bias correction see the true round number);
* a minimum number of train replies: with fewer, the round keeps the previous weights instead
  of averaging one or two sites into the global model;
* metric aggregation over the sites that sent each metric (small sites send none);
* an audit of every reply: record kinds, keys and value types (never the values), the bytes
  each message carried on the wire (protobuf size of its content), and which node sent it;
* save/restore of the strategy state for checkpoints (FedAdam's ``m_t`` and ``v_t``);
* a fixed order of the replies before averaging (by a digest of their weights), so the sum,
  which rounds differently in another order, does not depend on which site answered first:
  a rerun of a federation with the same seed and data gives the same global models.

FedAvg weights every site by ``num-examples``, its number of training patients.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.common.serde import recorddict_to_proto
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from survfed.app.config import FederationConfig
from survfed.app.identity import describe_content

__all__ = ["RoundLog", "build_strategy", "content_bytes", "mean_metrics", "reply_digest"]


def content_bytes(content: RecordDict) -> int:
    """Bytes of ``content`` as serialised on the wire (its protobuf message size)."""
    return int(recorddict_to_proto(content).ByteSize())


def array_bytes(arrays: ArrayRecord) -> int:
    """Raw bytes of the arrays' values (the model's size; the floor of a round's traffic)."""
    return int(sum(a.numpy().nbytes for a in arrays.values()))


def reply_digest(reply: Message) -> bytes:
    """SHA-256 of a reply's arrays (names, dtypes, shapes, bytes), independent of its sender
    and arrival: the key that orders replies before they are summed."""
    digest = hashlib.sha256()
    for name in sorted(reply.content.array_records):
        for key, array in sorted(reply.content.array_records[name].items()):
            digest.update(f"{name}/{key}/{array.dtype}/{tuple(array.shape)}".encode())
            digest.update(array.data)
    return digest.digest()


def mean_metrics(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Weighted mean of each metric over the replies that carry it (``num-examples`` summed).

    Unlike Flower's default, a metric missing from some replies (sites below the
    minimum patient count send none) is averaged over the sites that sent it.
    """
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    total = 0.0
    for record in records:
        for metrics in record.metric_records.values():
            w = float(metrics.get(weighted_by_key, 0))  # type: ignore[arg-type]
            total += w
            for key, value in metrics.items():
                if key == weighted_by_key or not isinstance(value, int | float):
                    continue
                sums[key] = sums.get(key, 0.0) + float(value) * w
                weights[key] = weights.get(key, 0.0) + w
    out = MetricRecord({key: sums[key] / weights[key] for key in sums if weights[key] > 0})
    out[weighted_by_key] = total
    return out


class RoundLog:
    """What the strategy saw in each round (filled by the mixin, read by the run loop)."""

    def __init__(self) -> None:
        self.rounds: dict[int, dict[str, Any]] = {}

    def entry(self, server_round: int) -> dict[str, Any]:
        return self.rounds.setdefault(
            server_round, {"sent": [], "replies": [], "started": time.monotonic()}
        )


class _SurvfedMixin:
    """Round offset, minimum replies, reply audit and state save/restore (see module doc)."""

    round_offset: int
    min_replies: int
    round_log: RoundLog

    def _survfed_init(self, min_replies: int) -> None:
        self._expected: dict[str, tuple[int, ...]] = {}
        self.round_offset = 0
        self.min_replies = int(min_replies)
        self.round_log = RoundLog()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        rnd = server_round + self.round_offset
        messages = list(super().configure_train(rnd, arrays, config, grid))  # type: ignore[misc]
        entry = self.round_log.entry(rnd)
        entry["started"] = time.monotonic()
        entry["model_bytes"] = array_bytes(arrays)
        self._expected = {k: tuple(a.shape) for k, a in arrays.items()}
        entry["messages"] = messages  # their ids are set when the grid pushes them
        for msg in messages:
            entry["sent"].append(
                {"node_id": int(msg.metadata.dst_node_id), "bytes": content_bytes(msg.content)}
            )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        rnd = server_round + self.round_offset
        replies = list(replies)
        entry = self.round_log.entry(rnd)
        entry["received"] = time.monotonic()
        start = len(entry["replies"])
        # error replies made by the SuperLink (e.g. "Node Unavailable") do not carry the
        # site's node id as source: attribute replies through the instruction they answer
        dst = {m.metadata.message_id: m.metadata.dst_node_id for m in entry.get("messages", [])}
        for reply in replies:
            node = dst.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            item: dict[str, Any] = {"node_id": int(node)}
            if reply.has_error():
                item["error"] = f"{reply.error.code}: {reply.error.reason}"
            else:
                item["content"] = describe_content(reply.content)
                item["bytes"] = content_bytes(reply.content)
                metrics = reply.content.metric_records
                item["metrics"] = {
                    k: v for m in metrics.values() for k, v in m.items() if not isinstance(v, list)
                }
            entry["replies"].append(item)
        entry.pop("messages", None)  # they hold the round's global model: do not keep them
        ok = []
        for reply, item in zip(replies, entry["replies"][start:], strict=True):
            if reply.has_error():
                continue
            if self._has_no_examples(reply.content):
                item["no_examples"] = True  # e.g. no annotated patient in a detector round
                continue
            problem = self._reply_problem(reply.content)
            if problem:
                log(
                    WARNING,
                    "round %d: ignoring the reply of node %s: %s",
                    rnd,
                    item["node_id"],
                    problem,
                )
                item["rejected"] = problem
            else:
                ok.append(reply)
        if not ok or len(ok) < self.min_replies_for(entry):
            log(
                WARNING,
                "round %d: %d train replies with training examples (min-sites=%d): keeping the "
                "previous global model",
                rnd,
                len(ok),
                self.min_replies,
            )
            entry["skipped"] = True
            return None, None
        entry["skipped"] = False
        ok.sort(key=reply_digest)  # float sums depend on order; arrival order is chance
        return super().aggregate_train(rnd, ok)  # type: ignore[misc]

    def min_replies_for(self, entry: dict[str, Any]) -> int:
        """Replies with examples a round needs: ``min-sites``, less the sites that answered
        with none (a site with nothing to train in this stage cannot block it)."""
        empty = sum(1 for r in entry["replies"] if r.get("no_examples"))
        return max(1, self.min_replies - empty)

    @staticmethod
    def _has_no_examples(content: RecordDict) -> bool:
        """A valid "nothing to train on" reply: no arrays and ``num-examples`` = 0."""
        metrics = list(content.metric_records.values())
        return (
            not content.array_records and len(metrics) == 1 and metrics[0].get("num-examples") == 0
        )

    def _reply_problem(self, content: RecordDict) -> str | None:
        """Why a train reply cannot be averaged (``None`` if it can).

        Flower's own check rejects the whole round when sites send different metric keys;
        survfed sites legitimately do (small sites send only ``num-examples``), so replies are
        checked one by one instead: one ArrayRecord with the global model's keys and shapes,
        one MetricRecord with a positive scalar ``num-examples``.
        """
        arrays = list(content.array_records.values())
        metrics = list(content.metric_records.values())
        if len(arrays) != 1 or len(metrics) != 1:
            return (
                f"expected one ArrayRecord and one MetricRecord, got {len(arrays)} and "
                f"{len(metrics)}"
            )
        shapes = {k: tuple(a.shape) for k, a in arrays[0].items()}
        if self._expected and shapes != self._expected:
            return "its arrays do not match the global model's names and shapes"
        weight = metrics[0].get(self.weighted_by_key)  # type: ignore[attr-defined]
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0:
            return f"{self.weighted_by_key!r} is missing or not a positive number"
        return None

    def _check_and_log_replies(
        self, replies: Iterable[Message], is_train: bool, validate: bool = True
    ) -> tuple[list[Message], list[Message]]:
        # replies were checked one by one in aggregate_train (see _reply_problem)
        return super()._check_and_log_replies(replies, is_train, validate=False)  # type: ignore[misc]

    def state_arrays(self) -> dict[str, dict[str, np.ndarray]]:
        """Strategy state to checkpoint (FedAdam moments; empty otherwise)."""
        state: dict[str, dict[str, np.ndarray]] = {}
        for slot in ("m_t", "v_t"):
            value = getattr(self, slot, None)
            if value:
                state[slot] = {k: np.asarray(v) for k, v in value.items()}
        return state

    def load_state_arrays(self, state: dict[str, dict[str, np.ndarray]]) -> None:
        """Restore what :meth:`state_arrays` returned."""
        for slot, values in state.items():
            if not hasattr(self, slot):
                raise ValueError(f"checkpoint has strategy state {slot!r} this strategy lacks")
            setattr(self, slot, {k: np.asarray(v) for k, v in values.items()})


class SurvfedFedAvg(_SurvfedMixin, FedAvg):
    """FedAvg (weighted by ``num-examples``) with the survfed additions."""


class SurvfedFedProx(_SurvfedMixin, FedProx):
    """FedProx: FedAvg plus ``proximal-mu`` in every train instruction (term applied at sites)."""


class SurvfedFedAdam(_SurvfedMixin, FedAdam):
    """FedAdam: server-side Adam on the averaged update (state checkpointed)."""


def build_strategy(fed: FederationConfig) -> FedAvg:
    """The configured strategy: no client-side evaluation (held-out cohorts are central)."""
    common: dict[str, Any] = {
        "fraction_train": fed.fraction_train,
        "fraction_evaluate": 0.0,
        "min_train_nodes": fed.min_sites,
        "min_available_nodes": fed.min_sites,
        "weighted_by_key": "num-examples",
        "train_metrics_aggr_fn": mean_metrics,
    }
    strategy: Any
    if fed.strategy == "fedavg":
        strategy = SurvfedFedAvg(**common)
    elif fed.strategy == "fedprox":
        strategy = SurvfedFedProx(proximal_mu=fed.proximal_mu, **common)
    elif fed.strategy == "fedadam":
        strategy = SurvfedFedAdam(eta=fed.server_lr, eta_l=fed.train.lr, **common)
    else:  # FederationConfig validates; kept for a clear error
        raise ValueError(f"unknown strategy {fed.strategy!r}")
    strategy._survfed_init(fed.min_sites)
    return strategy
