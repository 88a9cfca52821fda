"""Patient-level percentile bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from sksurv.datasets import load_whas500
from sksurv.linear_model import CoxPHSurvivalAnalysis

from survfed.common.survival.bootstrap import (
    BootstrapCI,
    bootstrap_ci,
    bootstrap_ci_many,
    bootstrap_indices,
)
from survfed.common.survival.metrics import cancer_auc, harrell_c


def test_interval_is_the_percentile_of_the_resampled_values() -> None:
    x = np.random.default_rng(0).normal(size=50)
    res = bootstrap_ci(np.mean, x, n_resamples=300, seed=4)
    values = [x[idx].mean() for idx in bootstrap_indices(50, 300, 4)]
    low, high = np.quantile(values, [0.025, 0.975])
    assert res.estimate == pytest.approx(x.mean())
    assert (res.low, res.high) == pytest.approx((low, high), abs=1e-12)
    assert res.n_used == res.n_resamples == 300 and res.level == 0.95


def test_width_matches_theory_and_narrows_with_n() -> None:
    rng = np.random.default_rng(1)
    widths = {}
    for n in (100, 1600):
        x = rng.normal(size=n)
        r = bootstrap_ci(np.mean, x, n_resamples=400, seed=0)
        widths[n] = r.high - r.low
        assert r.low < r.estimate < r.high
        # Normal theory: 2 · 1.96 · sd / sqrt(n).
        assert widths[n] == pytest.approx(2 * 1.96 * x.std() / np.sqrt(n), rel=0.15)
    assert widths[100] / widths[1600] == pytest.approx(4.0, rel=0.2)


def test_c_index_interval_contains_estimate_and_is_deterministic() -> None:
    x, y = load_whas500()
    x = x.select_dtypes("number").astype(float)
    g = CoxPHSurvivalAnalysis(alpha=0.1).fit(x, y).predict(x)
    t, e = y["lenfol"], y["fstat"]
    a = bootstrap_ci(harrell_c, g, t, e, n_resamples=100, seed=7)
    b = bootstrap_ci(harrell_c, g, t, e, n_resamples=100, seed=7)
    c = bootstrap_ci(harrell_c, g, t, e, n_resamples=100, seed=8)
    assert a == b
    assert a.low != c.low
    assert a.low < a.estimate < a.high
    assert 0.03 < a.high - a.low < 0.12  # SE of C on 500 patients ≈ 0.016-0.02
    assert a.estimate == pytest.approx(harrell_c(g, t, e))


def test_undefined_resamples_are_skipped_and_counted() -> None:
    score = np.linspace(0.0, 1.0, 20)
    label = np.zeros(20)
    label[7] = 1.0  # a single positive: resamples without patient 7 have one class
    res = bootstrap_ci(cancer_auc, score, label, n_resamples=200, seed=3)
    expected_used = sum(7 in idx for idx in bootstrap_indices(20, 200, 3))
    assert res.n_used == expected_used
    assert 100 < res.n_used < 200  # P(patient drawn) = 1 - 0.95^20 ≈ 0.64
    assert res.interval is not None
    none = bootstrap_ci(lambda s: None, score, n_resamples=10)
    assert none.interval is None and none.n_used == 0 and none.estimate is None
    nan = bootstrap_ci(lambda s: float("nan"), score, n_resamples=10)
    assert nan.n_used == 0 and nan.estimate is None


def test_many_is_paired_with_scalar_calls() -> None:
    x = np.random.default_rng(5).exponential(size=80)
    many = bootstrap_ci_many(
        lambda v: {"mean": float(np.mean(v)), "median": float(np.median(v))}, x, seed=2
    )
    assert many["mean"] == bootstrap_ci(np.mean, x, seed=2)
    assert many["median"] == bootstrap_ci(np.median, x, seed=2)
    partial = bootstrap_ci_many(
        lambda v: {"a": 1.0, "b": 1.0} if v.shape[0] == 80 and v[0] == x[0] else {"a": 1.0},
        x,
        n_resamples=50,
    )
    assert partial["a"].n_used == 50
    assert partial["b"].n_used == sum(idx[0] == 0 for idx in bootstrap_indices(80, 50, 0))


def test_zero_resamples_and_input_checks() -> None:
    x = np.arange(10.0)
    r = bootstrap_ci(np.mean, x, n_resamples=0)
    assert r == BootstrapCI(4.5, None, None, 0, 0, 0.95)
    assert r.to_dict()["low"] is None
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci(np.mean, x, n_resamples=-1)
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(np.mean, x, level=1.5)
    with pytest.raises(ValueError, match=r"arrays\[1\]"):
        bootstrap_ci(lambda a, b: 0.0, x, x[:5])
    with pytest.raises(TypeError, match="mapping"):
        bootstrap_ci_many(np.mean, x)
