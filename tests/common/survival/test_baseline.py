"""Aggregate Breslow baseline vs the individual-level Breslow estimator."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lifelines import CoxPHFitter
from lifelines.datasets import load_rossi
from sksurv.datasets import load_whas500
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.linear_model.coxph import BreslowEstimator

from survfed.common.survival.baseline import (
    BaselineHazard,
    BreslowAggregates,
    baseline_from_aggregates,
    breslow_aggregates,
    check_edges,
    make_time_grid,
    survival_curves,
)


@pytest.fixture(scope="module")
def whas500() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cox linear predictor (fixed coefficients) with the real WHAS500 outcomes (days)."""
    x, y = load_whas500()
    x = x.select_dtypes("number").astype(float)
    model = CoxPHSurvivalAnalysis(alpha=0.1).fit(x, y)
    return model.predict(x), y["lenfol"].astype(float), y["fstat"].astype(bool)


def _exact_breslow(g: np.ndarray, t: np.ndarray, e: np.ndarray) -> BreslowEstimator:
    return BreslowEstimator().fit(g, e, t)


def test_make_time_grid_edges() -> None:
    np.testing.assert_array_equal(make_time_grid(100, 30), [0, 30, 60, 90, 120])
    np.testing.assert_array_equal(make_time_grid(90, 30), [0, 30, 60, 90])
    np.testing.assert_array_equal(make_time_grid(5, 1), [0, 1, 2, 3, 4, 5])
    assert make_time_grid(2358).shape == (80,)  # ceil(2358 / 30) = 79 bins
    with pytest.raises(ValueError, match="max_days"):
        make_time_grid(0)
    with pytest.raises(ValueError, match="step_days"):
        make_time_grid(10, -1)
    with pytest.raises(ValueError, match="edges"):
        check_edges([0, 10, 10])


def test_one_day_grid_matches_sksurv_breslow(whas500) -> None:
    g, t, e = whas500
    edges = make_time_grid(t.max(), 1)
    base = baseline_from_aggregates([breslow_aggregates(g, t, e, edges)], edges)
    exact = _exact_breslow(g, t, e).cum_baseline_hazard_
    days = np.arange(1, int(t.max()) + 1, dtype=float)
    ref = exact(days)
    got = base.cumulative_hazard(days)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)
    # Between grid points H0 is linear (constant hazard within a bin).
    np.testing.assert_allclose(
        base.cumulative_hazard(days[:-1] + 0.5), (ref[:-1] + ref[1:]) / 2, rtol=1e-9
    )


def test_one_day_grid_matches_lifelines_baseline() -> None:
    rossi = load_rossi()
    cph = CoxPHFitter().fit(rossi, duration_col="week", event_col="arrest")
    covariates = rossi.drop(columns=["week", "arrest"])
    g = np.log(cph.predict_partial_hazard(covariates).to_numpy())  # centred, as lifelines'
    t = rossi["week"].to_numpy(float)
    e = rossi["arrest"].to_numpy(bool)
    edges = make_time_grid(t.max(), 1)
    base = baseline_from_aggregates([breslow_aggregates(g, t, e, edges)], edges)
    ref = cph.baseline_cumulative_hazard_
    weeks = ref.index.to_numpy(float)
    np.testing.assert_allclose(
        base.cumulative_hazard(weeks), ref.iloc[:, 0].to_numpy(), rtol=1e-6, atol=1e-9
    )


def test_thirty_day_grid_close_to_exact(whas500) -> None:
    g, t, e = whas500
    edges = make_time_grid(t.max(), 30)
    exact = _exact_breslow(g, t, e).cum_baseline_hazard_
    at = edges[1:-1]  # grid edges inside the follow-up
    days = np.linspace(1, np.quantile(t, 0.9), 400)
    s_exact = np.exp(-np.outer(np.exp(g), exact(days)))
    # Measured on WHAS500 (H0 at the edges 0.003-0.31; exp(g) up to ~30):
    #   start:     max |ΔH0| 0.0030 (relative 9.9%), mean |ΔS| 0.0087 up to the 90% time
    #   actuarial: max |ΔH0| 0.00089 (relative 2.8%), mean |ΔS| 0.0021
    # The plain estimate is never above the exact one at the edges: patients who leave within
    # a bin still count in its risk sum.
    for risk_set, abs_tol, rel_tol, s_tol in (
        ("start", 0.004, 0.11, 0.012),
        ("actuarial", 0.0012, 0.035, 0.004),
    ):
        base = baseline_from_aggregates(
            [breslow_aggregates(g, t, e, edges)], edges, risk_set=risk_set
        )
        diff = base.cumulative_hazard(at) - exact(at)
        assert np.max(np.abs(diff)) < abs_tol, risk_set
        assert np.max(np.abs(diff) / exact(at)) < rel_tol, risk_set
        assert np.mean(np.abs(survival_curves(base, g, days) - s_exact)) < s_tol, risk_set
        if risk_set == "start":
            assert np.all(diff < 1e-12)


def test_sites_sum_to_pooled(whas500) -> None:
    g, t, e = whas500
    edges = make_time_grid(t.max(), 30)
    site = np.random.default_rng(3).integers(0, 3, size=g.shape[0])
    aggs = [breslow_aggregates(g[site == k], t[site == k], e[site == k], edges) for k in range(3)]
    pooled = breslow_aggregates(g, t, e, edges)
    np.testing.assert_array_equal(sum(a.events for a in aggs), pooled.events)
    np.testing.assert_allclose(sum(a.risk_sum for a in aggs), pooled.risk_sum, rtol=1e-12)
    fed = baseline_from_aggregates(aggs, edges)
    one = baseline_from_aggregates([pooled], edges)
    np.testing.assert_allclose(fed.cumhaz, one.cumhaz, rtol=1e-12)
    assert isinstance(pooled, BreslowAggregates) and pooled.events.dtype == np.int64


def test_aggregate_definition_small_example() -> None:
    g = np.log([1.0, 2.0, 4.0, 8.0])
    t = np.array([5.0, 10.0, 25.0, 40.0])  # 40 is beyond the last edge (30)
    e = np.array([1, 0, 1, 1])
    edges = np.array([0.0, 10.0, 20.0, 30.0])
    agg = breslow_aggregates(g, t, e, edges)
    # bins (0,10], (10,20], (20,30]; time 40 censored at 30 (at risk everywhere, not counted).
    np.testing.assert_array_equal(agg.events, [1, 0, 1])
    np.testing.assert_allclose(agg.risk_sum, [15.0, 12.0, 12.0])
    base = baseline_from_aggregates([agg], edges)
    np.testing.assert_allclose(base.cumhaz, [0, 1 / 15, 1 / 15, 1 / 15 + 1 / 12])
    h = 1 / 15 + 1 / 12
    np.testing.assert_allclose(
        base.cumulative_hazard([-1, 0, 5, 10, 15, 25, 30, 1e6]),
        [0, 0, 1 / 30, 1 / 15, 1 / 15, 1 / 15 + 1 / 24, h, h],
    )
    # Actuarial risk sets: (R_b + R_{b+1}) / 2 = 13.5, 12; the last bin keeps R_b = 12.
    act = baseline_from_aggregates([agg], edges, risk_set="actuarial")
    np.testing.assert_allclose(act.cumhaz, [0, 1 / 13.5, 1 / 13.5, 1 / 13.5 + 1 / 12])
    with pytest.raises(ValueError, match="risk_set"):
        baseline_from_aggregates([agg], edges, risk_set="mid")


def test_known_exponential_hazard_is_recovered() -> None:
    rng = np.random.default_rng(11)
    n, lam0 = 4000, 1 / 1000  # baseline hazard per day
    g = rng.normal(0, 0.7, n)
    t_event = rng.exponential(1 / (lam0 * np.exp(g)))
    t_cens = rng.uniform(0, 3000, n)
    t = np.ceil(np.minimum(t_event, t_cens))
    e = t_event <= t_cens
    edges = make_time_grid(1500, 30)
    base = baseline_from_aggregates([breslow_aggregates(g, t, e, edges)], edges)
    at = np.array([180.0, 360.0, 720.0, 1440.0])
    np.testing.assert_allclose(base.cumulative_hazard(at), lam0 * at, rtol=0.08)


def test_empty_bins_and_inconsistent_sums() -> None:
    edges = np.array([0.0, 10.0, 20.0])
    base = baseline_from_aggregates([([1, 0], [2.0, 0.0])], edges)
    np.testing.assert_allclose(base.cumhaz, [0.0, 0.5, 0.5])
    with pytest.raises(ValueError, match="no one at risk"):
        baseline_from_aggregates([([1, 1], [2.0, 0.0])], edges)
    with pytest.raises(ValueError, match=r"aggregates\[1\]"):
        baseline_from_aggregates([([1, 0], [2.0, 1.0]), ([1], [2.0])], edges)
    with pytest.raises(ValueError, match="at least one"):
        baseline_from_aggregates([], edges)


def test_survival_curves_values_and_edge_cases() -> None:
    base = BaselineHazard(np.array([0.0, 10.0, 20.0]), np.array([0.0, 0.1, 0.3]))
    g = np.array([0.0, np.log(2.0), 800.0])
    s = survival_curves(base, g, [0.0, 10.0, 25.0])
    assert s.shape == (3, 3)
    np.testing.assert_allclose(s[0], np.exp([-0.0, -0.1, -0.3]))
    np.testing.assert_allclose(s[1], np.exp([-0.0, -0.2, -0.6]))
    np.testing.assert_array_equal(s[2], [1.0, 0.0, 0.0])  # overflow handled, no NaN
    with pytest.raises(ValueError, match="log_hz"):
        survival_curves(base, [[0.0]], [1.0])
    with pytest.raises(TypeError, match="baseline"):
        survival_curves({"edges": [0, 1]}, [0.0], [1.0])


def test_baseline_round_trip_and_validation() -> None:
    base = BaselineHazard(np.array([0.0, 30.0, 60.0]), np.array([0.0, 0.2, 0.5]))
    again = BaselineHazard.from_dict(json.loads(json.dumps(base.to_dict())))
    np.testing.assert_array_equal(again.cumhaz, base.cumhaz)
    np.testing.assert_array_equal(again.edges, base.edges)
    with pytest.raises(ValueError, match="cumhaz"):
        BaselineHazard(np.array([0.0, 30.0]), np.array([0.0, -1.0]))
    with pytest.raises(ValueError, match="time"):
        breslow_aggregates([0.0], [-1.0], [1], [0.0, 1.0])
    with pytest.raises(ValueError, match="same length"):
        breslow_aggregates([0.0, 1.0], [1.0], [1], [0.0, 1.0])
