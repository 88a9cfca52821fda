"""Report plots and the report folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from lifelines import KaplanMeierFitter
from lifelines.statistics import multivariate_logrank_test
from sksurv.datasets import load_veterans_lung_cancer

from survfed.common.survival.baseline import (
    baseline_from_aggregates,
    breslow_aggregates,
    make_time_grid,
)
from survfed.common.survival.evaluation import evaluate_predictions
from survfed.common.survival.plots import (
    calibration_table,
    km_at,
    logrank_p,
    plot_calibration,
    plot_km_by_risk_group,
    plot_metric_history,
    plot_roc,
    risk_groups,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path, min_bytes: int = 5000) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > min_bytes


def _cohort(n: int = 1500, seed: int = 0):
    """Exponential times (hazard exp(g)/800 per day), the true g as the model."""
    rng = np.random.default_rng(seed)
    g = rng.normal(0.0, 1.0, n)
    t_event = rng.exponential(800.0 / np.exp(g))
    t_cens = rng.uniform(300.0, 2500.0, n)
    t = np.ceil(np.minimum(t_event, t_cens))
    e = t_event <= t_cens
    cancer = (rng.random(n) < 1.0 / (1.0 + np.exp(-g))).astype(float)
    return g, t, e, cancer


def test_risk_groups_are_quantiles_and_handle_ties() -> None:
    g = np.arange(9.0)
    np.testing.assert_array_equal(risk_groups(g), [0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert set(risk_groups(np.zeros(10))) == {0}
    ties = risk_groups(np.r_[np.zeros(8), 1.0, 2.0])
    assert ties.max() < 3 and ties[0] == 0 and ties[-1] == ties.max()


def test_logrank_and_km_match_lifelines() -> None:
    x, y = load_veterans_lung_cancer()
    t, e = y["Survival_in_days"].astype(float), y["Status"]
    groups = x["Celltype"].to_numpy()
    ref = multivariate_logrank_test(t, groups, e).p_value
    assert logrank_p(t, e, groups) == pytest.approx(ref, rel=1e-6)
    assert logrank_p(t, e, np.zeros(len(t))) is None
    kmf = KaplanMeierFitter().fit(t, e)
    for h in (30.0, 100.0, 365.0):
        s, low, high = km_at(t, e, h)
        assert s == pytest.approx(kmf.survival_function_at_times(h).iloc[0], abs=1e-12)
        assert low < s < high
    assert np.isnan(km_at(t, e, 5000.0)[0])


def test_calibration_of_the_true_model_is_good() -> None:
    g, t, e, _ = _cohort()
    edges = make_time_grid(t.max(), 30)
    base = baseline_from_aggregates([breslow_aggregates(g, t, e, edges)], edges)
    tab = calibration_table(base, g, t, e, 365.0, n_groups=5)
    assert tab.n.sum() == len(g) and len(tab.n) == 5
    assert np.all(np.diff(tab.predicted) < 0)  # higher risk group, lower survival
    # The true model with its own baseline: observed KM within 0.05 of predicted.
    np.testing.assert_allclose(tab.observed, tab.predicted, atol=0.05)
    # A miscalibrated model (every hazard doubled) predicts visibly lower survival.
    off = calibration_table(base, g + np.log(2.0), t, e, 365.0)
    assert np.mean(off.predicted - off.observed) < -0.08


def test_plots_write_non_empty_pngs(tmp_path: Path) -> None:
    g, t, e, cancer = _cohort(600, seed=1)
    edges = make_time_grid(t.max(), 30)
    base = baseline_from_aggregates([breslow_aggregates(g, t, e, edges)], edges)
    assert _is_png(plot_km_by_risk_group(g, t, e, tmp_path / "km.png"))
    assert _is_png(plot_roc(g, cancer, tmp_path / "roc.png"))
    assert _is_png(plot_calibration(base, g, t, e, 730.0, tmp_path / "cal.png"))
    history = [{"round": r, "c_index": 0.5 + 0.02 * r, "loss": 1.0 / r} for r in range(1, 8)]
    history[3]["c_index"] = None
    hist = plot_metric_history(history, ["c_index", "loss"], tmp_path / "sub" / "hist.png")
    assert _is_png(hist)
    assert plot_roc(g, np.zeros(len(g)), tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    with pytest.raises(TypeError, match="keys"):
        plot_metric_history(history, "c_index", tmp_path / "h.png")


def test_write_report(tmp_path: Path) -> None:
    g, t, e, cancer = _cohort(500, seed=2)
    edges = make_time_grid(t.max(), 30)
    base = baseline_from_aggregates([breslow_aggregates(g, t, e, edges)], edges)
    res = evaluate_predictions(g, t, e, cancer, baseline=base, oracle_log_hz=g, n_bootstrap=20)
    out = tmp_path / "report"
    files = write_report(res, g, t, e, out, cancer=cancer, baseline=base)
    names = {p.name for p in files}
    assert names == {"report.json", "report.md", "km_risk_groups.png", "roc_cancer.png",
                     "calibration.png"}  # fmt: skip
    for p in files:
        assert p.parent == out and p.stat().st_size > 0
    data = json.loads((out / "report.json").read_text())
    assert data["c_index"] == pytest.approx(res.c_index.estimate)
    assert data["oracle_c_index"] == data["c_index"]
    assert data["logrank_p"] < 1e-6
    assert data["calibration_horizon_days"] in (365.0, 730.0, 1825.0)
    md = (out / "report.md").read_text()
    for png in ("km_risk_groups.png", "roc_cancer.png", "calibration.png"):
        assert f"]({png})" in md
    assert "Harrell's C-index" in md
    # Without labels and baseline: only the KM plot.
    files2 = write_report(res, g, t, e, tmp_path / "r2")
    assert {p.name for p in files2} == {"report.json", "report.md", "km_risk_groups.png"}
    with pytest.raises(ValueError, match="log_hz"):
        write_report(res, g[:10], t[:10], e[:10], tmp_path / "r3")


def test_degenerate_cohorts_still_give_a_report(tmp_path: Path) -> None:
    # No events at all, and every event at one time (log-rank covariance singular).
    for name, (g, t, e) in {
        "no_events": (np.arange(10.0) / 10, np.arange(1.0, 11.0) * 100, np.zeros(10)),
        "tied": (np.random.default_rng(0).normal(size=8), np.full(8, 50.0), np.ones(8)),
    }.items():
        edges = make_time_grid(t.max(), 30)
        base = baseline_from_aggregates([breslow_aggregates(g, t, e, edges)], edges)
        res = evaluate_predictions(g, t, e, baseline=base, n_bootstrap=10)
        write_report(res, g, t, e, tmp_path / name, baseline=base)
        data = json.loads((tmp_path / name / "report.json").read_text())
        assert data["c_index"] is None and data["c_index_ci"] is None
        assert data["logrank_p"] is None
        assert data["td_auc"] == {} and data["ibs"] is None
