"""Tests for survfed.common.survival.losses.

The Cox loss is proven against reference fits: a linear model fitted with ``cox_nll`` must
reach the coefficients and log partial likelihood of lifelines' ``CoxPHFitter`` and
scikit-survival's ``CoxPHSurvivalAnalysis`` on the veterans and NCCTG lung tables.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from lifelines import CoxPHFitter
from lifelines.datasets import load_lung
from scipy import optimize, stats
from sksurv.datasets import load_veterans_lung_cancer
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.linear_model.coxph import CoxPHOptimizer
from sksurv.preprocessing import OneHotEncoder

from survfed.common.survival.losses import (
    TwoTaskLoss,
    cox_nll,
    exponential_oracle_nll,
    two_task_loss,
)

TOL = 1e-3  # the agreement target (coefficients and log partial likelihood)

# --------------------------------------------------------------------------------------------
# reference data and fits
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Table:
    x: pd.DataFrame  # covariates, float
    time: np.ndarray
    event: np.ndarray  # bool
    strata: np.ndarray | None


def _veterans(stratified: bool) -> Table:
    x, y = load_veterans_lung_cancer()
    strata = None
    if stratified:
        strata = x["Celltype"].cat.codes.to_numpy()
        x = x.drop(columns="Celltype")
    x = OneHotEncoder().fit_transform(x).astype(float)
    return Table(x, y["Survival_in_days"].astype(float), y["Status"].astype(bool), strata)


def _lung(stratified: bool) -> Table:
    df = load_lung().drop(columns="inst").dropna().reset_index(drop=True)
    strata = None
    if stratified:
        strata = df["sex"].to_numpy()
        df = df.drop(columns="sex")
    x = df.drop(columns=["time", "status"]).astype(float)
    return Table(x, df["time"].to_numpy(float), df["status"].to_numpy() == 1, strata)


TABLES = {"veterans": _veterans, "lung": _lung}


def _fit_torch(table: Table, ties: str) -> tuple[np.ndarray, float]:
    """Linear Cox fit with cox_nll(reduction='sum'), float64 LBFGS; returns (beta, loglik)."""
    x = table.x.to_numpy(float)
    mu, sd = x.mean(0), x.std(0)
    xs = torch.tensor((x - mu) / sd)  # standardised for conditioning; Cox ignores centring
    event, time = torch.tensor(table.event), torch.tensor(table.time)
    strata = None if table.strata is None else torch.tensor(table.strata)
    beta = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [beta],
        lr=1.0,
        max_iter=500,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = cox_nll(xs @ beta, event, time, ties=ties, strata=strata, reduction="sum")
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        loss = cox_nll(xs @ beta, event, time, ties=ties, strata=strata, reduction="sum")
    assert beta.grad is not None and float(beta.grad.abs().max()) < 1e-6
    return beta.detach().numpy() / sd, -float(loss)


def _fit_lifelines(table: Table) -> tuple[np.ndarray, float]:
    df = table.x.copy()
    df["T"], df["E"] = table.time, table.event.astype(int)
    strata = None
    if table.strata is not None:
        df["S"] = table.strata
        strata = ["S"]
    cph = CoxPHFitter(penalizer=0.0, baseline_estimation_method="breslow")
    cph.fit(df, duration_col="T", event_col="E", strata=strata)
    return cph.params_[table.x.columns].to_numpy(), float(cph.log_likelihood_)


def _sksurv_loglik(table: Table, beta: np.ndarray, ties: str) -> float:
    """scikit-survival's own log partial likelihood at ``beta`` (summed over strata)."""
    strata = np.zeros(len(table.time)) if table.strata is None else table.strata
    x = table.x.to_numpy(float)
    total = 0.0
    for s in np.unique(strata):
        sel = strata == s
        alpha = np.zeros(x.shape[1])
        opt = CoxPHOptimizer(x[sel], table.event[sel], table.time[sel], alpha=alpha, ties=ties)
        total -= sel.sum() * opt.nlog_likelihood(beta)  # it returns the mean over samples
    return total


def _fit_sksurv(table: Table, ties: str) -> tuple[np.ndarray, float]:
    assert table.strata is None
    y = np.empty(len(table.time), dtype=[("event", bool), ("time", float)])
    y["event"], y["time"] = table.event, table.time
    model = CoxPHSurvivalAnalysis(alpha=0.0, ties=ties, n_iter=200, tol=1e-12)
    model.fit(table.x, y)
    return model.coef_, _sksurv_loglik(table, model.coef_, ties)


def _fit_sksurv_stratified(table: Table, ties: str) -> tuple[np.ndarray, float]:
    """Stratified reference neither library fits directly (lifelines has Efron only): minimise
    the sum of scikit-survival's per-stratum likelihoods with scipy."""
    x = table.x.to_numpy(float)
    sd = x.std(0)
    res = optimize.minimize(
        lambda b: -_sksurv_loglik(table, b / sd, ties),
        np.zeros(x.shape[1]),
        method="BFGS",
        options={"gtol": 1e-9},
    )
    return res.x / sd, -float(res.fun)


REFERENCE_CASES = [
    # (table, stratified, ties, reference)
    ("veterans", False, "efron", "lifelines"),
    ("veterans", False, "efron", "sksurv"),
    ("veterans", False, "breslow", "sksurv"),
    ("veterans", True, "efron", "lifelines"),
    ("veterans", True, "breslow", "sksurv"),
    ("lung", False, "efron", "lifelines"),
    ("lung", False, "efron", "sksurv"),
    ("lung", False, "breslow", "sksurv"),
    ("lung", True, "efron", "lifelines"),
    ("lung", True, "breslow", "sksurv"),
]


@pytest.mark.parametrize(("name", "stratified", "ties", "reference"), REFERENCE_CASES)
def test_linear_fit_matches_reference(name: str, stratified: bool, ties: str, reference: str):
    table = TABLES[name](stratified)
    beta, loglik = _fit_torch(table, ties)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if reference == "lifelines":
            ref_beta, ref_ll = _fit_lifelines(table)
        elif stratified:
            ref_beta, ref_ll = _fit_sksurv_stratified(table, ties)
        else:
            ref_beta, ref_ll = _fit_sksurv(table, ties)
    np.testing.assert_allclose(beta, ref_beta, rtol=TOL, atol=TOL * 0.1)
    assert abs(beta - ref_beta).max() < TOL
    assert loglik == pytest.approx(ref_ll, abs=TOL)
    # and the likelihood itself (not only its optimum) agrees with scikit-survival's
    assert loglik == pytest.approx(_sksurv_loglik(table, beta, ties), abs=1e-8)


def test_breslow_and_efron_differ_on_tied_data():
    """Guards against a ties argument that is silently ignored (veterans has tied deaths)."""
    table = _veterans(False)
    b_efron, ll_efron = _fit_torch(table, "efron")
    b_breslow, ll_breslow = _fit_torch(table, "breslow")
    assert abs(ll_efron - ll_breslow) > 0.05
    assert abs(b_efron - b_breslow).max() > 1e-3


# --------------------------------------------------------------------------------------------
# the formula on small hand-checkable inputs
# --------------------------------------------------------------------------------------------


def _naive_nll(g, event, time, ties, strata=None) -> float:
    """Direct transcription of the module formula with Python loops (independent code)."""
    g, event, time = list(map(float, g)), list(map(bool, event)), list(map(float, time))
    strata = [0] * len(g) if strata is None else list(map(int, strata))
    ll = 0.0
    for s in set(strata):
        idx = [i for i in range(len(g)) if strata[i] == s]
        for xi in sorted({time[i] for i in idx}):
            tied = [i for i in idx if time[i] == xi and event[i]]
            if not tied:
                continue
            d = sum(math.exp(g[j]) for j in idx if time[j] >= xi)
            t = sum(math.exp(g[i]) for i in tied)
            m = len(tied)
            ll += sum(g[i] for i in tied)
            for r in range(m):
                c = r / m if ties == "efron" else 0.0
                ll -= math.log(d - c * t)
    return -ll


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_matches_naive_formula_with_ties_and_strata(ties: str):
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        n = int(torch.randint(2, 40, (1,), generator=gen))
        g = torch.randn(n, dtype=torch.float64, generator=gen) * 2
        event = torch.rand(n, generator=gen) < 0.6
        event[0] = True
        time = torch.randint(0, 6, (n,), generator=gen).double()  # many ties, incl. censored
        strata = torch.randint(0, 3, (n,), generator=gen)
        got = cox_nll(g, event, time, ties=ties, strata=strata, reduction="sum")
        assert float(got) == pytest.approx(_naive_nll(g, event, time, ties, strata), rel=1e-12)
        mean = cox_nll(g, event, time, ties=ties, strata=strata)
        assert float(mean) == pytest.approx(float(got) / int(event.sum()), rel=1e-12)


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_matches_torchsurv_where_torchsurv_is_right(ties: str):
    """torchsurv agrees when no censoring time equals an event time (its no-ties path drops
    a censored patient tied with an event from the risk set; it also computes ties in
    float32 and averages over distinct event times, hence our own implementation)."""
    gen = torch.Generator().manual_seed(5)
    n = 60
    g = torch.randn(n, dtype=torch.float64, generator=gen)
    event = torch.rand(n, generator=gen) < 0.5
    time = torch.randint(0, 12, (n,), generator=gen).double()
    time[~event] += 0.5
    strata = torch.randint(0, 3, (n,), generator=gen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchsurv warns on ties and on torch.jit at import
        from torchsurv.loss.cox import neg_partial_log_likelihood

        ref = neg_partial_log_likelihood(g, event, time, ties_method=ties, strata=strata,
                                         reduction="sum")  # fmt: skip
    got = cox_nll(g, event, time, ties=ties, strata=strata, reduction="sum")
    assert float(got) == pytest.approx(float(ref), rel=1e-6)


def test_censored_patient_tied_with_an_event_is_at_risk():
    g = torch.tensor([0.5, -0.3, 1.0, 0.2], dtype=torch.float64)
    event = torch.tensor([True, False, True, False])
    time = torch.tensor([1.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    e = g.exp()
    want = -((0.5 - math.log(e.sum())) + (1.0 - math.log(e[2] + e[3])))
    for perm in ([0, 1, 2, 3], [1, 0, 2, 3], [3, 2, 1, 0]):
        p = torch.tensor(perm)
        got = cox_nll(g[p], event[p], time[p], reduction="sum")
        assert float(got) == pytest.approx(want, rel=1e-14)


def test_all_times_equal():
    g = torch.tensor([0.3, -1.2, 2.0, 0.0], dtype=torch.float64)
    time = torch.full((4,), 7.0, dtype=torch.float64)
    d = float(g.exp().sum())
    # all events tied: Breslow -(Σg - m log D); Efron -(Σg - Σ_r log(D - r/m D))
    event = torch.ones(4, dtype=torch.bool)
    breslow = -(float(g.sum()) - 4 * math.log(d))
    efron = -(float(g.sum()) - sum(math.log(d * (1 - r / 4)) for r in range(4)))
    assert float(cox_nll(g, event, time, ties="breslow", reduction="sum")) == pytest.approx(
        breslow, rel=1e-14
    )
    assert float(cox_nll(g, event, time, ties="efron", reduction="sum")) == pytest.approx(
        efron, rel=1e-14
    )
    # one event among censored at the same time: everyone is at risk, both methods agree
    event = torch.tensor([False, False, True, False])
    for ties in ("efron", "breslow"):
        got = cox_nll(g, event, time, ties=ties)
        assert float(got) == pytest.approx(-(2.0 - math.log(d)), rel=1e-14)


def test_invariances_mask_and_strata():
    gen = torch.Generator().manual_seed(11)
    n = 30
    g = torch.randn(n, dtype=torch.float64, generator=gen)
    event = torch.rand(n, generator=gen) < 0.5
    event[:2] = True
    time = torch.randint(0, 8, (n,), generator=gen).double()
    base = cox_nll(g, event, time)
    # shift invariance and permutation invariance
    assert float(cox_nll(g + 123.4, event, time)) == pytest.approx(float(base), rel=1e-10)
    p = torch.randperm(n, generator=gen)
    assert float(cox_nll(g[p], event[p], time[p])) == pytest.approx(float(base), rel=1e-12)
    # mask = dropping the patients
    keep = torch.rand(n, generator=gen) < 0.7
    keep[:2] = True
    assert float(cox_nll(g, event, time, mask=keep)) == pytest.approx(
        float(cox_nll(g[keep], event[keep], time[keep])), rel=1e-14
    )
    # strata: sum over strata; a stratum without events adds exactly 0
    strata = torch.tensor([0] * 15 + [1] * 15)
    s0, s1 = strata == 0, strata == 1
    parts = [cox_nll(g[s], event[s], time[s], reduction="sum", allow_no_events=True)
             for s in (s0, s1)]  # fmt: skip
    total = cox_nll(g, event, time, strata=strata, reduction="sum")
    assert float(total) == pytest.approx(float(parts[0] + parts[1]), rel=1e-14)
    no_ev = event & s0  # stratum 1 has no events
    with_empty = cox_nll(g, no_ev, time, strata=strata, reduction="sum")
    assert float(with_empty) == pytest.approx(
        float(cox_nll(g[s0], no_ev[s0], time[s0], reduction="sum")), rel=1e-14
    )
    # the mean is over the events of the whole input
    assert float(cox_nll(g, event, time, strata=strata)) == pytest.approx(
        float(total) / int(event.sum()), rel=1e-14
    )
    # a one-patient stratum contributes 0 even when it is an event
    strata1 = torch.zeros(n, dtype=torch.long)
    strata1[0] = 7
    got = cox_nll(g, event, time, strata=strata1, reduction="sum")
    rest = cox_nll(g[1:], event[1:], time[1:], reduction="sum")
    assert float(got) == pytest.approx(float(rest), rel=1e-14)


def test_no_events():
    g = torch.randn(5, dtype=torch.float64, requires_grad=True)
    event = torch.zeros(5, dtype=torch.bool)
    time = torch.arange(5.0)
    with pytest.raises(ValueError, match="no event"):
        cox_nll(g, event, time)
    with pytest.raises(ValueError, match="no event"):  # events exist but are masked out
        cox_nll(g, torch.tensor([1, 0, 0, 0, 0]), time, mask=torch.tensor([0, 1, 1, 1, 1]) > 0)
    zero = cox_nll(g, event, time, allow_no_events=True)
    assert zero.item() == 0.0 and zero.requires_grad and zero.dtype == torch.float64
    zero.backward()
    assert g.grad is not None and torch.equal(g.grad, torch.zeros(5, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_log_hazards_stay_finite(dtype: torch.dtype):
    g = torch.tensor([500.0, -500.0, 80.0, 0.0, 300.0, 300.0], dtype=dtype, requires_grad=True)
    event = torch.tensor([1, 1, 0, 1, 1, 1])
    time = torch.tensor([1.0, 2.0, 2.0, 3.0, 4.0, 4.0])
    for ties in ("efron", "breslow"):
        loss = cox_nll(g, event, time, ties=ties)
        (grad,) = torch.autograd.grad(loss, g)
        assert loss.dtype == dtype
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert cox_nll(g.half(), event, time).dtype == torch.float32


def test_gradient_is_correct():
    gen = torch.Generator().manual_seed(2)
    g = torch.randn(12, dtype=torch.float64, generator=gen, requires_grad=True)
    event = torch.tensor([1, 1, 1, 0, 1, 0, 1, 1, 0, 1, 1, 0])
    time = torch.tensor([1, 1, 1, 1, 2, 2, 3, 3, 3, 4, 5, 5], dtype=torch.float64)
    strata = torch.tensor([0] * 6 + [1] * 6)
    for ties in ("efron", "breslow"):
        assert torch.autograd.gradcheck(
            lambda x, t=ties: cox_nll(x, event, time, ties=t, strata=strata), (g,)
        )


def test_input_validation_names_the_argument():
    g, e, t = torch.zeros(3), torch.tensor([1, 0, 1]), torch.tensor([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="log_hz"):
        cox_nll(torch.tensor([0.0, float("nan"), 1.0]), e, t)
    with pytest.raises(ValueError, match="event"):
        cox_nll(g, torch.tensor([1, 0]), t)
    with pytest.raises(ValueError, match="event"):
        cox_nll(g, torch.tensor([2, 0, 1]), t)
    with pytest.raises(ValueError, match="time"):
        cox_nll(g, e, torch.tensor([1.0, float("inf"), 3.0]))
    with pytest.raises(ValueError, match="ties"):
        cox_nll(g, e, t, ties="exact")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reduction"):
        cox_nll(g, e, t, reduction="none")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="strata"):
        cox_nll(g, e, t, strata=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="mask"):
        cox_nll(g, e, t, mask=torch.tensor([1, 1, 0]))
    with pytest.raises(ValueError, match="log_hz"):
        cox_nll(torch.zeros(3, 2), e, t)
    # (n, 1) model outputs are accepted
    assert float(cox_nll(g[:, None], e, t)) == pytest.approx(float(cox_nll(g, e, t)))


# --------------------------------------------------------------------------------------------
# oracle and two-task losses
# --------------------------------------------------------------------------------------------


def test_oracle_matches_scipy_exponential_likelihood():
    rng = np.random.default_rng(0)
    n, rate = 200, 0.3
    g = rng.normal(size=n)
    t_event = rng.exponential(1 / (rate * np.exp(g)))
    t_cens = rng.exponential(4.0, size=n)
    time, event = np.minimum(t_event, t_cens), t_event <= t_cens
    # full log-likelihood: event → log f(t), censored → log S(t), exponential(rate e^g)
    scale = 1 / (rate * np.exp(g))
    log_f, log_s = stats.expon.logpdf(time, scale=scale), stats.expon.logsf(time, scale=scale)
    ll = np.where(event, log_f, log_s)
    got = exponential_oracle_nll(torch.tensor(g), torch.tensor(event), torch.tensor(time), rate)
    assert float(got) == pytest.approx(-ll.mean(), rel=1e-12)
    got_sum = exponential_oracle_nll(
        torch.tensor(g), torch.tensor(event), torch.tensor(time), rate, reduction="sum"
    )
    assert float(got_sum) == pytest.approx(-ll.sum(), rel=1e-12)
    # per-patient rates
    rates = torch.full((n,), rate, dtype=torch.float64)
    assert float(
        exponential_oracle_nll(torch.tensor(g), torch.tensor(event), torch.tensor(time), rates)
    ) == pytest.approx(-ll.mean(), rel=1e-12)
    with pytest.raises(ValueError, match="baseline_rate"):
        exponential_oracle_nll(torch.tensor(g), torch.tensor(event), torch.tensor(time), 0.0)
    with pytest.raises(ValueError, match="time"):
        exponential_oracle_nll(torch.zeros(2), torch.ones(2), torch.tensor([1.0, -1.0]), 1.0)


def test_oracle_is_minimised_near_the_truth():
    """Fitting a constant shift of the true log hazard recovers a shift near 0."""
    rng = np.random.default_rng(1)
    n, rate = 20000, 0.5
    g = torch.tensor(rng.normal(size=n))
    time = torch.tensor(rng.exponential(1 / (rate * np.exp(g.numpy()))))
    event = torch.ones(n, dtype=torch.bool)
    shifts = torch.linspace(-0.2, 0.2, 41, dtype=torch.float64)
    losses = [float(exponential_oracle_nll(g + c, event, time, rate)) for c in shifts]
    assert abs(float(shifts[int(np.argmin(losses))])) <= 0.03


def _v(t: torch.Tensor) -> float:
    return float(t.detach())


def test_two_task_loss_parts_and_unknown_labels():
    gen = torch.Generator().manual_seed(4)
    n = 16
    g = torch.randn(n, dtype=torch.float64, generator=gen, requires_grad=True)
    event = torch.rand(n, generator=gen) < 0.5
    event[0] = True
    time = torch.rand(n, generator=gen, dtype=torch.float64)
    cancer = (torch.rand(n, generator=gen) < 0.5).double()
    cancer[[1, 4, 9]] = float("nan")
    known = ~torch.isnan(cancer)
    g0 = g.detach()

    out = two_task_loss(g, event, time, cancer, cox_weight=0.7, bce_weight=2.0)
    assert isinstance(out, TwoTaskLoss)
    bce_ref = _v(F.binary_cross_entropy(torch.sigmoid(g0[known]), cancer[known]))
    assert _v(out.bce) == pytest.approx(bce_ref, rel=1e-10)
    assert _v(out.cox) == pytest.approx(_v(cox_nll(g0, event, time)), rel=1e-14)
    assert _v(out.total) == pytest.approx(2.0 * bce_ref + 0.7 * _v(out.cox), rel=1e-14)
    assert out.n_labelled == n - 3 and out.n_events == int(event.sum())
    out.total.backward()
    assert g.grad is not None and torch.isfinite(g.grad).all()

    # an explicit mask combines with NaN
    mask = torch.ones(n, dtype=torch.bool)
    mask[2] = False
    masked = two_task_loss(g, event, time, cancer, cancer_mask=mask)
    assert masked.n_labelled == n - 4
    keep = known & mask
    ref = _v(F.binary_cross_entropy_with_logits(g0[keep], cancer[keep]))
    assert _v(masked.bce) == pytest.approx(ref, rel=1e-12)


def test_two_task_loss_degenerate_batches():
    g = torch.randn(4, dtype=torch.float64, requires_grad=True)
    time = torch.arange(4.0)
    no_events = torch.zeros(4, dtype=torch.bool)
    cancer = torch.tensor([1.0, 0.0, float("nan"), 1.0])
    # no events: error by default, BCE-only with allow_no_events or cox_weight=0
    with pytest.raises(ValueError, match="no event"):
        two_task_loss(g, no_events, time, cancer)
    out = two_task_loss(g, no_events, time, cancer, allow_no_events=True)
    assert _v(out.cox) == 0.0 and out.n_events == 0
    assert _v(out.total) == pytest.approx(_v(out.bce)) and _v(out.bce) > 0
    out0 = two_task_loss(g, no_events, time, cancer, cox_weight=0.0)
    assert _v(out0.total) == pytest.approx(_v(out.bce))
    # no known label: BCE exactly 0, total = Cox, gradient finite
    events = torch.tensor([1, 0, 1, 0])
    unlabelled = torch.full((4,), float("nan"))
    out = two_task_loss(g, events, time, unlabelled)
    assert _v(out.bce) == 0.0 and out.n_labelled == 0
    assert _v(out.total) == pytest.approx(_v(cox_nll(g, events, time)))
    out.total.backward()
    assert g.grad is not None and torch.isfinite(g.grad).all()
    with pytest.raises(ValueError, match="cancer"):
        two_task_loss(g, events, time, torch.tensor([0.0, 2.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="cox_weight"):
        two_task_loss(g, events, time, cancer, cox_weight=-1.0)
    with pytest.raises(ValueError, match="both 0"):
        two_task_loss(g, events, time, cancer, cox_weight=0.0, bce_weight=0.0)
