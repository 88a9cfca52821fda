"""A site's local round: training moves the weights, FedProx holds them back, and what would
leave the site is only weights, a count and whitelisted aggregates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from survfed.app.config import FederationConfig
from survfed.app.identity import EgressPolicyError, check_reply_content
from survfed.client.local_training import (
    TRAIN_METRICS,
    local_breslow_aggregates,
    round_seed,
    train_locally,
)
from survfed.client.site_snapshot import manifest_path, open_site_dataset, read_manifest
from survfed.common.survival.baseline import make_time_grid
from survfed.server.fed_training import initial_state


@pytest.fixture(scope="module")
def site(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory):
    torch.set_num_threads(1)
    fed = FederationConfig.from_run_config(
        {"batch-size": 3, "crop-size": 16, "feature-dim": 16, "hidden": 8, "k": 2}
    )
    cache = tmp_path_factory.mktemp("cache") / "iowa"
    ds = open_site_dataset("iowa", tiny_cohort / "iowa", cache, fed.train.model)
    return fed, ds, cache, tiny_cohort


def _distance(a: dict, b: dict) -> float:
    return float(sum((a[k].float() - b[k].float()).pow(2).sum() for k in a))


def test_manifest_reopens_the_same_patients(site) -> None:
    fed, ds, cache, cohort = site
    assert manifest_path(cache, fed.train.model).is_file()
    again = read_manifest(cache, fed.train.model, "iowa", cohort / "iowa")
    assert again is not None and again.patient_ids == ds.patient_ids
    np.testing.assert_array_equal(again.times, ds.times)
    assert read_manifest(cache, fed.train.model, "other", cohort / "iowa") is None


def test_training_moves_weights_and_fedprox_pulls_them_back(site) -> None:
    fed, ds, _, _ = site
    w0 = initial_state(fed)
    plain = train_locally(w0, ds, fed.train, site="iowa", server_round=1)
    prox = train_locally(w0, ds, fed.train, site="iowa", server_round=1, proximal_mu=100.0)
    assert plain.num_examples == len(ds) == 6
    d_plain, d_prox = _distance(plain.state_dict, w0), _distance(prox.state_dict, w0)
    assert d_plain > 0
    assert d_prox < 0.8 * d_plain  # the proximal term keeps the update near the global model
    again = train_locally(w0, ds, fed.train, site="iowa", server_round=1)
    assert _distance(again.state_dict, plain.state_dict) == 0  # deterministic per round/site
    assert round_seed(0, 1, "iowa") != round_seed(0, 2, "iowa")


def test_small_sites_send_only_the_patient_count(site) -> None:
    fed, ds, _, _ = site
    w0 = initial_state(fed)
    small = train_locally(w0, ds, fed.train, site="iowa", server_round=1)
    assert small.metrics == {"num-examples": 6}  # 6 < default minimum of 10
    big = train_locally(w0, ds, fed.train, site="iowa", server_round=1, min_patients_for_metrics=5)
    assert set(big.metrics) <= set(TRAIN_METRICS)
    assert {"num-examples", "train-loss", "train-cox", "train-seconds"} <= set(big.metrics)
    content = RecordDict(
        {"arrays": ArrayRecord(big.state_dict), "metrics": MetricRecord(dict(big.metrics))}
    )
    check_reply_content(content, TRAIN_METRICS)
    content["metrics"]["patient-0-time"] = 12.0
    with pytest.raises(EgressPolicyError, match="not whitelisted"):
        check_reply_content(content, TRAIN_METRICS)


def test_breslow_sums_count_every_event_on_the_grid(site) -> None:
    fed, ds, _, _ = site
    agg = local_breslow_aggregates(initial_state(fed), ds, fed.train)
    edges = make_time_grid(fed.train.grid_max_days, fed.train.grid_step_days)
    assert agg.events.shape == agg.risk_sum.shape == (len(edges) - 1,)
    inside = (ds.events == 1) & (ds.times <= edges[-1])
    assert int(agg.events.sum()) == int(inside.sum())
    assert agg.risk_sum[0] > 0 and np.all(np.diff(agg.risk_sum) <= 1e-9)  # risk set shrinks
    check_reply_content(RecordDict({"aggregates": ArrayRecord({"events": Array(agg.events)})}), ())


def test_adam_moments_carry_over_between_rounds(site) -> None:
    fed, ds, _, _ = site
    w0 = initial_state(fed)
    first = train_locally(w0, ds, fed.train, site="iowa", server_round=1)
    state = first.optimizer_state
    assert state is not None and any(k.endswith(".exp_avg_sq") for k in state)
    steps = [float(v) for k, v in state.items() if k.endswith(".step")]
    resumed = train_locally(
        first.state_dict, ds, fed.train, site="iowa", server_round=2, optimizer_state=state
    )
    fresh = train_locally(first.state_dict, ds, fed.train, site="iowa", server_round=2)
    later = [float(v) for k, v in resumed.optimizer_state.items() if k.endswith(".step")]
    assert later[0] == 2 * steps[0]  # the step count (Adam's bias correction) continues
    assert _distance(resumed.state_dict, fresh.state_dict) > 0
    # a state from another model is ignored instead of breaking the round
    bad = {"0.exp_avg": np.zeros(3), "0.exp_avg_sq": np.zeros(3), "0.step": np.array(1.0)}
    ok = train_locally(w0, ds, fed.train, site="iowa", server_round=1, optimizer_state=bad)
    assert _distance(ok.state_dict, first.state_dict) == 0
