"""Hazard formula, event/censoring draws and the oracle C-index of the cohort design."""

from __future__ import annotations

import math

import numpy as np
import pytest
from lifelines.utils import concordance_index

from survfed.common.synth.nodules import draw_nodules
from survfed.common.synth.outcomes import (
    OutcomeParams,
    draw_outcome,
    log_hazard,
    oracle_c_index,
)
from survfed.common.synth.sites import site_profile


def test_log_hazard_formula():
    p = OutcomeParams(beta_0=0.1, beta_c=2.0, beta_d=1.5, beta_s=0.8, d_ref_mm=15.0)
    assert log_hazard(False, 25.0, 0.9, p) == pytest.approx(0.1)
    # 0.1 + 2 + 1.5 * (25 - 15) / 10 + 0.8 * (0.9 - 0.5)
    assert log_hazard(True, 25.0, 0.9, p) == pytest.approx(3.92)
    assert log_hazard(True, 10.0, 0.0, p) == pytest.approx(0.1 + 2 - 0.75 - 0.4)
    with pytest.raises(ValueError, match="d_max_mm"):
        log_hazard(True, 0.0, 0.5, p)


def test_draw_outcome_is_consistent():
    rng = np.random.default_rng(7)
    p = OutcomeParams()
    for _ in range(200):
        o = draw_outcome(
            rng,
            cancer=True,
            d_max_mm=20.0,
            irregularity=0.7,
            age_years=70.0,
            baseline_hazard_per_year=0.03,
            follow_up_days=2000.0,
            accrual_days=700.0,
            loss_rate_per_year=0.05,
            params=p,
        )
        assert 1300.0 <= o.admin_censor_days <= 2000.0
        assert o.censor_time_days == min(o.admin_censor_days, o.loss_censor_days)
        assert o.event == int(o.event_time_days <= o.censor_time_days)
        assert o.time_days == max(1, math.ceil(min(o.event_time_days, o.censor_time_days)))
        assert o.frailty == pytest.approx(p.beta_age * 0.5 + o.noise)
    with pytest.raises(ValueError, match="baseline_hazard_per_year"):
        draw_outcome(
            rng,
            cancer=False,
            d_max_mm=0,
            irregularity=0,
            age_years=60,
            baseline_hazard_per_year=0,
            follow_up_days=10,
            accrual_days=1,
            loss_rate_per_year=0,
            params=p,
        )


def test_event_times_follow_the_exponential_rate():
    """Without censoring, the mean event time is 1 / (lambda exp(eta + eps)) on average."""
    rng = np.random.default_rng(3)
    p = OutcomeParams(sigma_eps=0.0, beta_age=0.0)
    times = [
        draw_outcome(
            rng,
            cancer=False,
            d_max_mm=0,
            irregularity=0,
            age_years=65,
            baseline_hazard_per_year=0.5,
            follow_up_days=1e9,
            accrual_days=0,
            loss_rate_per_year=0,
            params=p,
        ).event_time_days
        for _ in range(4000)
    ]
    assert np.mean(times) == pytest.approx(365.25 / 0.5, rel=0.05)


def test_oracle_c_index_matches_lifelines():
    rng = np.random.default_rng(0)
    t = rng.integers(1, 400, 300).astype(float)
    e = rng.random(300) < 0.5
    risk = -t + rng.normal(0, 80, 300)
    ours = oracle_c_index(t, e, risk)
    assert ours == pytest.approx(concordance_index(t, -risk, e), abs=1e-3)
    assert math.isnan(oracle_c_index(t, np.zeros(300), risk))


def _simulate(seed: int, sites: dict[str, int], params: OutcomeParams):
    """The cohort's clinical, nodule and outcome draws, without images."""
    times, events, etas = [], [], []
    for name, n in sites.items():
        site = site_profile(name)
        rng = np.random.default_rng([seed, len(name), n])
        for _ in range(n):
            cancer = bool(rng.random() < site.cancer_rate)
            malignant = [x for x in draw_nodules(rng, cancer) if x.malignant]
            big = max(malignant, key=lambda x: x.diameter_mm) if malignant else None
            o = draw_outcome(
                rng,
                cancer=cancer,
                d_max_mm=big.diameter_mm if big else 0.0,
                irregularity=big.irregularity if big else 0.0,
                age_years=float(rng.normal(site.age_mean, 8.0)),
                baseline_hazard_per_year=site.baseline_hazard_per_year,
                follow_up_days=site.follow_up_days,
                accrual_days=site.accrual_days,
                loss_rate_per_year=site.loss_rate_per_year,
                params=params,
            )
            times.append(o.time_days)
            events.append(o.event)
            etas.append(o.log_hazard)
    return np.array(times), np.array(events), np.array(etas)


def test_oracle_c_index_is_that_of_a_strong_real_model():
    """Pooled over a large 3-site design the oracle C is about 0.78; events 30-50 %."""
    t, e, eta = _simulate(0, {"iowa": 600, "maastro": 600, "stanford": 600}, OutcomeParams())
    c = oracle_c_index(t, e, eta)
    assert 0.74 <= c <= 0.82
    assert 0.3 <= e.mean() <= 0.5


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_oracle_c_index_in_range_for_small_cohorts(seed):
    t, e, eta = _simulate(seed, {"iowa": 40, "maastro": 50, "stanford": 30}, OutcomeParams())
    assert 0.70 <= oracle_c_index(t, e, eta) <= 0.85
