"""Strategy helpers: metric means over the sites that sent them, wire bytes vs model bytes."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from survfed.app.config import FederationConfig
from survfed.server.strategies import (
    SurvfedFedAdam,
    SurvfedFedAvg,
    SurvfedFedProx,
    array_bytes,
    build_strategy,
    content_bytes,
    mean_metrics,
    reply_digest,
)


def test_metrics_are_averaged_over_the_sites_that_sent_them() -> None:
    replies = [
        RecordDict({"metrics": MetricRecord({"num-examples": 30, "train-loss": 1.0})}),
        RecordDict({"metrics": MetricRecord({"num-examples": 10, "train-loss": 3.0})}),
        RecordDict({"metrics": MetricRecord({"num-examples": 5})}),  # a small site
    ]
    out = mean_metrics(replies, "num-examples")
    assert out["train-loss"] == pytest.approx((30 * 1.0 + 10 * 3.0) / 40)
    assert out["num-examples"] == 45


def test_wire_size_is_the_model_size_plus_a_small_envelope() -> None:
    arrays = ArrayRecord({f"w{i}": Array(np.ones((64, 64), np.float32)) for i in range(5)})
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 3})})
    model = array_bytes(arrays)
    assert model == 5 * 64 * 64 * 4
    # per array: a 128-byte .npy header and a few bytes of protobuf framing
    assert model < content_bytes(content) <= model + 5 * 200 + 100


@pytest.mark.parametrize(
    ("name", "cls"),
    [("fedavg", SurvfedFedAvg), ("fedprox", SurvfedFedProx), ("fedadam", SurvfedFedAdam)],
)
def test_build_strategy(name: str, cls: type) -> None:
    extra = {"proximal-mu": 0.1} if name == "fedprox" else {}
    fed = FederationConfig.from_run_config({"strategy": name, "min-sites": 3, **extra})
    strategy = build_strategy(fed)
    assert type(strategy) is cls
    assert strategy.min_replies == 3 and strategy.min_available_nodes == 3
    assert strategy.weighted_by_key == "num-examples"
    assert strategy.round_offset == 0


def test_fedadam_state_survives_a_save_and_restore() -> None:
    fed = FederationConfig.from_run_config({"strategy": "fedadam"})
    a, b = build_strategy(fed), build_strategy(fed)
    a.m_t = {"w": np.arange(3.0)}
    a.v_t = {"w": np.arange(3.0) ** 2}
    b.load_state_arrays(a.state_arrays())
    np.testing.assert_array_equal(b.v_t["w"], [0.0, 1.0, 4.0])
    assert build_strategy(FederationConfig()).state_arrays() == {}


def test_replies_are_checked_one_by_one_not_by_matching_metric_keys() -> None:
    """Flower's default check drops the whole round when sites send different metric keys;
    survfed sites do (small sites send only num-examples), so each reply is judged alone."""
    strategy = build_strategy(FederationConfig())
    strategy._expected = {"w": (2, 3), "b": (3,)}
    good = ArrayRecord({"w": Array(np.zeros((2, 3))), "b": Array(np.zeros(3))})

    def reply(arrays: ArrayRecord, **metrics: float) -> RecordDict:
        return RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)})

    assert strategy._reply_problem(reply(good, **{"num-examples": 6})) is None
    assert strategy._reply_problem(reply(good, **{"num-examples": 30, "train-loss": 1.0})) is None
    wrong = ArrayRecord({"w": Array(np.zeros((3, 2))), "b": Array(np.zeros(3))})
    assert "shapes" in strategy._reply_problem(reply(wrong, **{"num-examples": 6}))
    assert "num-examples" in strategy._reply_problem(reply(good, **{"train-loss": 1.0}))
    assert "num-examples" in strategy._reply_problem(reply(good, **{"num-examples": 0}))
    two = RecordDict({"a": good, "b": good, "m": MetricRecord({"num-examples": 1})})
    assert "one ArrayRecord" in strategy._reply_problem(two)


def test_a_site_with_nothing_to_train_is_not_a_failure_and_lowers_the_quorum() -> None:
    """Detector rounds: a site without annotated patients replies num-examples 0 and no arrays;
    the reply is neither averaged nor rejected, and it does not count against min-sites."""
    strategy = build_strategy(FederationConfig.from_run_config({"min-sites": 3}))
    empty = RecordDict({"metrics": MetricRecord({"num-examples": 0})})
    assert strategy._has_no_examples(empty)
    arrays = ArrayRecord({"w": Array(np.zeros(2))})
    with_arrays = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 0})})
    assert not strategy._has_no_examples(with_arrays)  # zero weight but arrays: malformed
    assert "num-examples" in strategy._reply_problem(with_arrays)
    entry = {"replies": [{"node_id": 1, "no_examples": True}, {"node_id": 2}, {"node_id": 3}]}
    assert strategy.min_replies_for(entry) == 2
    entry["replies"] = [{"node_id": i, "no_examples": True} for i in range(5)]
    assert strategy.min_replies_for(entry) == 1  # never below one real reply


def _train_round(strategy, replies: list[RecordDict]) -> dict[str, np.ndarray]:
    """``replies`` answered, in this order, to one train round of ``strategy``."""
    arrays = ArrayRecord({"w": Array(np.zeros(4, dtype=np.float32))})
    strategy._expected = {"w": (4,)}
    instructions = [
        Message(RecordDict({"arrays": arrays}), dst_node_id=10 + i, message_type="train")
        for i in range(len(replies))
    ]
    answers = [Message(c, reply_to=m) for c, m in zip(replies, instructions, strict=True)]
    aggregated, _ = strategy.aggregate_train(1, answers)
    return {k: v.numpy() for k, v in aggregated.items()}


def test_the_average_does_not_depend_on_which_site_answered_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Float sums round differently in another order ((1e8 + 1) − 1e8 = 0 in float32, but
    (1e8 − 1e8) + 1 = 1): replies are put in a fixed order (their digest) before averaging,
    so two runs of the same federation get bit-identical global models."""
    from flwr.supercore.task_identity import TaskIdentity

    for slot in ("_run_id", "_node_id", "_task_id"):  # what a ServerApp process has set
        monkeypatch.setattr(TaskIdentity, slot, 1)
    values = ([3e8, 1.0, 0.5, 2.0], [1.0, 3e8, 0.25, 2.0], [-3e8, -3e8, 1.0, 2.0])
    replies = [
        RecordDict(
            {
                "arrays": ArrayRecord({"w": Array(np.asarray(v, dtype=np.float32))}),
                "metrics": MetricRecord({"num-examples": 10}),
            }
        )
        for v in values
    ]
    orders = [[0, 1, 2], [2, 0, 1], [1, 2, 0], [2, 1, 0]]
    results = [
        _train_round(build_strategy(FederationConfig()), [replies[i] for i in order])["w"]
        for order in orders
    ]
    for other in results[1:]:
        assert other.tobytes() == results[0].tobytes()
    np.testing.assert_allclose(results[0][2:], [1.75 / 3, 2.0], rtol=1e-6)
    # without the fixed order, Flower's plain sum does differ between these orders
    naive = []
    for order in orders:
        total = np.zeros(4, dtype=np.float32)
        for i in order:
            total += np.asarray(values[i], dtype=np.float32) * np.float32(1 / 3)
        naive.append(total.tobytes())
    assert len(set(naive)) > 1
    digests = {reply_digest(Message(r, dst_node_id=1, message_type="train")) for r in replies}
    assert len(digests) == 3  # the key tells the sites' weights apart
