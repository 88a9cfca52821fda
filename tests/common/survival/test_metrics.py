"""Cohort metrics against the library calls, known values and sanity cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from lifelines.utils import concordance_index as lifelines_cindex
from scipy import integrate, stats
from sklearn.metrics import roc_auc_score
from sksurv.datasets import load_veterans_lung_cancer, load_whas500
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.metrics import (
    concordance_index_censored,
    concordance_index_ipcw,
    cumulative_dynamic_auc,
    integrated_brier_score,
)
from sksurv.nonparametric import kaplan_meier_estimator
from sksurv.util import Surv

from survfed.common.survival.metrics import (
    cancer_auc,
    check_survival_arrays,
    harrell_c,
    integrated_brier,
    td_auc_support,
    time_dependent_auc,
    uno_c,
    uno_tau,
)


def _cox_predictions(loader):
    x, y = loader()
    x = x.select_dtypes("number").astype(float)
    model = CoxPHSurvivalAnalysis(alpha=0.1).fit(x, y)
    event_name, time_name = y.dtype.names
    return model, model.predict(x), y[time_name].astype(float), y[event_name].astype(bool), y


@pytest.fixture(scope="module")
def whas500():
    return _cox_predictions(load_whas500)


@pytest.fixture(scope="module")
def veterans():
    return _cox_predictions(load_veterans_lung_cancer)


def _exponential_cohort(n: int, seed: int, sd: float = 1.0, censor_max: float | None = None):
    """Exponential times with hazard exp(g)/1000 per day; uniform censoring if asked."""
    rng = np.random.default_rng(seed)
    g = rng.normal(0.0, sd, n)
    t_event = rng.exponential(1000.0 / np.exp(g))
    if censor_max is None:
        return g, t_event, np.ones(n, bool), t_event
    t_cens = rng.uniform(0.0, censor_max, n)
    return g, np.minimum(t_event, t_cens), t_event <= t_cens, t_event


def test_harrell_matches_sksurv_and_lifelines(veterans, whas500) -> None:
    for _, g, t, e, _ in (veterans, whas500):
        c = harrell_c(g, t, e)
        assert c == pytest.approx(concordance_index_censored(e, t, g)[0], abs=1e-12)
        assert c == pytest.approx(lifelines_cindex(t, -g, e), abs=1e-9)
    assert harrell_c(whas500[1], whas500[2], whas500[3]) == pytest.approx(0.7577, abs=1e-3)


def test_harrell_matches_sksurv_with_tied_scores_and_times_over_several_blocks() -> None:
    """harrell_c is numpy (sites avoid importing scikit-learn): tied scores count 1/2, an
    event ties with a censoring at the same time, and 1300 events span three row blocks."""
    rng = np.random.default_rng(4)
    n = 2000
    g = np.round(rng.normal(size=n), 1)  # many tied scores
    t = np.round(rng.exponential(500.0, n), -1)  # many tied times
    e = rng.random(n) < 0.65
    assert e.sum() > 1024
    assert harrell_c(g, t, e) == pytest.approx(concordance_index_censored(e, t, g)[0], abs=1e-12)
    assert harrell_c(g, t, np.zeros(n, bool)) is None


def test_harrell_matches_analytic_value_for_exponential_model() -> None:
    # With exponential times and hazard ratio exp(Δg), the riskier patient dies first with
    # probability sigmoid(|Δg|); Δg ~ N(0, 2·sd²) gives C = E[sigmoid(|Δg|)].
    sd = 1.0
    s = math.sqrt(2.0) * sd
    analytic, _ = integrate.quad(
        lambda d: 2.0 * stats.norm.pdf(d, scale=s) / (1.0 + math.exp(-d)), 0.0, 12.0
    )
    g, t, e, _ = _exponential_cohort(3000, seed=1, sd=sd)
    assert analytic == pytest.approx(0.7252, abs=1e-4)
    assert harrell_c(g, t, e) == pytest.approx(analytic, abs=0.012)  # SE ≈ 0.005


def test_perfect_and_reversed_risk() -> None:
    rng = np.random.default_rng(0)
    t = rng.permutation(np.arange(1.0, 201.0)) * 10
    e = rng.random(200) < 0.7
    perfect = -t
    assert harrell_c(perfect, t, e) == 1.0
    assert harrell_c(-perfect, t, e) == 0.0
    assert uno_c(perfect, t, e) == pytest.approx(1.0)
    assert uno_c(-perfect, t, e) == pytest.approx(0.0)
    td = time_dependent_auc(perfect, t, e, (500.0, 1000.0))
    assert td.auc == pytest.approx({500.0: 1.0, 1000.0: 1.0})
    assert time_dependent_auc(-perfect, t, e, (500.0,)).auc[500.0] == pytest.approx(0.0)
    assert harrell_c(np.zeros(200), t, e) == 0.5  # all tied scores


def test_undefined_concordance_returns_none() -> None:
    t = np.array([1.0, 2.0, 3.0])
    assert harrell_c([0.1, 0.2, 0.3], t, [0, 0, 0]) is None
    assert uno_c([0.1, 0.2, 0.3], t, [0, 0, 0]) is None


def test_uno_matches_sksurv_with_cohort_as_training_sample(whas500) -> None:
    _, g, t, e, y = whas500
    tau = uno_tau(t)
    assert tau == pytest.approx(np.quantile(t, 0.9))
    ref = concordance_index_ipcw(y, y, g, tau=tau)[0]
    assert uno_c(g, t, e) == pytest.approx(ref, abs=1e-12)
    assert uno_c(g, t, e, tau=700.0) == pytest.approx(
        concordance_index_ipcw(y, y, g, tau=700.0)[0], abs=1e-12
    )
    # A separate training sample for the censoring distribution is used when given.
    half = slice(0, 250)
    ref_train = concordance_index_ipcw(y[half], y, g, tau=700.0)[0]
    got = uno_c(g, t, e, tau=700.0, train_time=t[half], train_event=e[half])
    assert got == pytest.approx(ref_train, abs=1e-12)
    with pytest.raises(ValueError, match="together"):
        uno_c(g, t, e, train_time=t)


def test_uno_corrects_censoring_bias() -> None:
    # Heavy censoring that depends on nothing: Uno's C recovers the uncensored truncated C.
    g, t, e, t_true = _exponential_cohort(3000, seed=5, sd=1.0, censor_max=1500.0)
    tau = 600.0
    truth = concordance_index_ipcw(
        Surv.from_arrays(np.ones_like(e), t_true),
        Surv.from_arrays(np.ones_like(e), t_true),
        g,
        tau=tau,
    )[0]
    assert uno_c(g, t, e, tau=tau) == pytest.approx(truth, abs=0.02)


def test_cancer_auc(veterans) -> None:
    rng = np.random.default_rng(2)
    score = rng.normal(size=300)
    label = (rng.random(300) < 1 / (1 + np.exp(-2 * score))).astype(float)
    assert cancer_auc(score, label) == pytest.approx(roc_auc_score(label, score), abs=1e-12)
    masked = label.copy()
    masked[:100] = np.nan
    assert cancer_auc(score, masked) == pytest.approx(
        roc_auc_score(label[100:], score[100:]), abs=1e-12
    )
    assert cancer_auc(score, np.ones(300)) is None
    assert cancer_auc(score, np.full(300, np.nan)) is None
    assert cancer_auc([1.0, 2.0], [0.0, 1.0]) == 1.0
    assert cancer_auc([2.0, 1.0], [0.0, 1.0]) == 0.0
    with pytest.raises(ValueError, match="cancer"):
        cancer_auc([1.0, 2.0], [0.0, 2.0])
    with pytest.raises(ValueError, match="cancer"):
        cancer_auc([1.0, 2.0], [0.0])


def test_time_dependent_auc_matches_sksurv_and_drops_unsupported(veterans) -> None:
    _, g, t, e, y = veterans  # follow-up 1 to 999 days
    td = time_dependent_auc(g, t, e)
    assert sorted(td.auc) == [365.0, 730.0]
    assert list(td.dropped) == [1825.0]
    assert "beyond 1825" in td.dropped[1825.0]
    ref, ref_mean = cumulative_dynamic_auc(y, y, g, [365.0, 730.0])
    np.testing.assert_allclose([td.auc[365.0], td.auc[730.0]], ref, atol=1e-12)
    assert td.mean_auc == pytest.approx(ref_mean, abs=1e-12)
    # No event before the horizon.
    reason = td_auc_support(np.array([10.0, 20.0, 30.0]), np.array([0, 0, 1]), 15.0)
    assert reason is not None and "no event" in reason
    short = time_dependent_auc(g, np.minimum(t, 300.0), e)
    assert short.auc == {} and short.mean_auc is None and len(short.dropped) == 3


def test_integrated_brier_matches_sksurv(whas500) -> None:
    model, _, t, e, y = whas500
    x, _ = load_whas500()
    grid = np.linspace(t.min(), np.quantile(t, 0.9), 50)
    surv = np.vstack(
        [
            fn(grid)
            for fn in model.predict_survival_function(x.select_dtypes("number").astype(float))
        ]
    )
    ref = integrated_brier_score(y, y, surv, grid)
    got = integrated_brier(surv, grid, t, e)
    assert got == pytest.approx(ref, abs=1e-12)
    # Grid points outside [min(time), max(time)) are dropped, not an error.
    wide = np.r_[0.0, grid, t.max() + 100.0]
    wide_surv = np.hstack([np.ones((len(t), 1)), surv, surv[:, -1:]])
    assert integrated_brier(wide_surv, wide, t, e) == pytest.approx(ref, abs=1e-12)
    # The model beats the Kaplan-Meier curve given to everyone (the null model).
    km_t, km_s = kaplan_meier_estimator(e, t)
    km = km_s[np.searchsorted(km_t, grid, side="right") - 1]
    null = integrated_brier(np.tile(km, (len(t), 1)), grid, t, e)
    assert got < null - 0.01
    assert integrated_brier(surv[:, :1], grid[:1], t, e) is None
    with pytest.raises(ValueError, match="surv_prob"):
        integrated_brier(surv[:, :-1], grid, t, e)
    with pytest.raises(ValueError, match="increasing"):
        integrated_brier(surv, grid[::-1], t, e)


def test_input_checks_name_the_argument() -> None:
    with pytest.raises(ValueError, match="log_hz"):
        check_survival_arrays([np.nan], [1.0], [1])
    with pytest.raises(ValueError, match="time"):
        check_survival_arrays([0.0], [-1.0], [1])
    with pytest.raises(ValueError, match="event"):
        check_survival_arrays([0.0], [1.0], [2])
    with pytest.raises(ValueError, match="same length"):
        check_survival_arrays([0.0, 1.0], [1.0], [1])
    with pytest.raises(ValueError, match="times"):
        time_dependent_auc([0.0, 1.0], [1.0, 2.0], [1, 1], times=(-5.0,))
    g, _, e = check_survival_arrays([1, 2], [3, 4], [True, False])
    assert g.dtype == np.float64 and e.dtype == np.bool_
