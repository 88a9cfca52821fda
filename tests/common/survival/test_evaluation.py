"""evaluate_predictions: every metric once over the cohort, with intervals, JSON-safe."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sksurv.datasets import load_veterans_lung_cancer
from sksurv.linear_model import CoxPHSurvivalAnalysis

from survfed.common.survival.baseline import (
    baseline_from_aggregates,
    breslow_aggregates,
    make_time_grid,
    survival_curves,
)
from survfed.common.survival.evaluation import evaluate_predictions, ibs_grid
from survfed.common.survival.metrics import (
    cancer_auc,
    harrell_c,
    integrated_brier,
    time_dependent_auc,
    uno_c,
    uno_tau,
)


def _synthetic(n: int = 400, seed: int = 0):
    """Known log-hazard, a noisy model of it, cancer labels from the model's logit."""
    rng = np.random.default_rng(seed)
    true_g = rng.normal(0.0, 1.0, n)
    t_event = rng.exponential(900.0 / np.exp(true_g))
    t_cens = rng.uniform(200.0, 3000.0, n)
    time = np.ceil(np.minimum(t_event, t_cens))
    event = t_event <= t_cens
    model_g = true_g + rng.normal(0.0, 0.8, n)
    cancer = (rng.random(n) < 1.0 / (1.0 + np.exp(-true_g))).astype(float)
    cancer[rng.random(n) < 0.2] = np.nan
    return true_g, model_g, time, event, cancer


@pytest.fixture(scope="module")
def synthetic_result():
    true_g, g, t, e, cancer = _synthetic()
    edges = make_time_grid(t.max(), 30)
    base = baseline_from_aggregates([breslow_aggregates(g, t, e, edges)], edges)
    res = evaluate_predictions(
        g, t, e, cancer, baseline=base, oracle_log_hz=true_g, n_bootstrap=60, seed=1
    )
    return res, (true_g, g, t, e, cancer, base)


def test_point_estimates_equal_the_metric_functions(synthetic_result) -> None:
    res, (true_g, g, t, e, cancer, base) = synthetic_result
    assert res.n == 400 and res.events == int(e.sum()) and res.censored == 400 - int(e.sum())
    assert res.c_index.estimate == pytest.approx(harrell_c(g, t, e), abs=1e-12)
    tau = uno_tau(t)
    assert res.uno_tau_days == tau
    assert res.uno_c_index.estimate == pytest.approx(uno_c(g, t, e, tau=tau), abs=1e-12)
    assert res.auc.estimate == pytest.approx(cancer_auc(g, cancer), abs=1e-12)
    assert res.n_cancer_labelled == int(np.sum(~np.isnan(cancer)))
    td = time_dependent_auc(g, t, e)
    assert {k: v.estimate for k, v in res.td_auc.items()} == pytest.approx(td.auc)
    grid = ibs_grid(t, base, tau)
    ibs = integrated_brier(survival_curves(base, g, grid), grid, t, e)
    assert res.ibs.estimate == pytest.approx(ibs, abs=1e-12)
    assert res.ibs_range_days == (t.min(), tau)
    assert res.oracle_c_index.estimate == pytest.approx(harrell_c(true_g, t, e), abs=1e-12)


def test_intervals_and_known_ordering(synthetic_result) -> None:
    res = synthetic_result[0]
    for _, b in res.rows():
        assert b.interval is not None, b
        assert b.low <= b.estimate <= b.high
        assert b.n_used == 60
    # The true hazard ranks better than a noisy copy of it; both far above chance.
    assert res.oracle_c_index.estimate > res.c_index.estimate > 0.6
    assert 0.05 < res.ibs.estimate < 0.25  # better than the uninformative 0.25


def test_to_dict_is_json_safe_with_required_keys(synthetic_result) -> None:
    res = synthetic_result[0]
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    for key in ("n", "events", "censored", "c_index", "c_index_ci", "uno_c_index",
                "uno_c_index_ci", "auc", "auc_ci", "td_auc", "td_auc_ci", "ibs", "ibs_ci",
                "oracle_c_index", "oracle_c_index_ci"):  # fmt: skip
        assert key in d, key
    assert d["c_index"] == pytest.approx(res.c_index.estimate)
    assert d["c_index_ci"] == [res.c_index.low, res.c_index.high]
    assert set(d["td_auc"]) == {"365", "730", "1825"}
    assert d["bootstrap"]["used"]["c_index"] == 60
    text = res.format_text()
    assert "Harrell's C-index" in text and f"{res.c_index.estimate:.3f}" in text
    assert "Oracle C-index" in text and "Integrated Brier" in text


def test_optional_parts_absent_and_undefined_values_are_null() -> None:
    x, y = load_veterans_lung_cancer()
    x = x.select_dtypes("number").astype(float)
    g = CoxPHSurvivalAnalysis(alpha=0.1).fit(x, y).predict(x)
    t, e = y["Survival_in_days"], y["Status"]
    res = evaluate_predictions(g, t, e, np.ones(len(g)), n_bootstrap=20)
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert "oracle_c_index" not in d and "ibs" not in d
    assert d["auc"] is None and d["auc_ci"] is None  # one cancer class
    assert set(d["td_auc"]) == {"365", "730"}
    assert "1825" in d["td_auc_dropped"]
    assert "not computed" in res.format_text() and "one class" in res.format_text()
    res0 = evaluate_predictions(g, t, e, n_bootstrap=0)
    assert res0.to_dict()["c_index_ci"] is None and res0.to_dict()["auc"] is None
    assert res0.c_index.estimate == pytest.approx(res.c_index.estimate)


def test_perfect_and_reversed_predictions() -> None:
    t = np.arange(1.0, 101.0) * 20
    e = np.arange(100) % 3 != 0
    best = evaluate_predictions(-t, t, e, n_bootstrap=10)
    worst = evaluate_predictions(t, t, e, n_bootstrap=10)
    assert best.c_index.estimate == 1.0 and best.c_index.interval == (1.0, 1.0)
    assert worst.c_index.estimate == 0.0
    assert best.uno_c_index.estimate == pytest.approx(1.0)
    assert all(b.estimate == pytest.approx(1.0) for b in best.td_auc.values())


def test_argument_checks() -> None:
    g, t, e = np.zeros(5), np.arange(1.0, 6.0), np.ones(5)
    with pytest.raises(ValueError, match="cancer"):
        evaluate_predictions(g, t, e, np.zeros(4))
    with pytest.raises(ValueError, match="oracle_log_hz"):
        evaluate_predictions(g, t, e, oracle_log_hz=[np.nan] * 5)
    with pytest.raises(TypeError, match="baseline"):
        evaluate_predictions(g, t, e, baseline={"edges": [0, 1]})
