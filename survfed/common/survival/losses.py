r"""Survival losses: Cox partial likelihood (Breslow/Efron ties, strata), the exponential
oracle loss and the two-task loss of seed 000.

Notation (shared by every function here). For patient :math:`i = 1..n`:
:math:`g_i` = ``log_hz[i]`` the model's log relative hazard (unitless), :math:`t_i` =
``time[i]`` the follow-up time (any unit, only its order matters for Cox),
:math:`\delta_i` = ``event[i]`` (1 = event observed, 0 = censored at :math:`t_i`), and
:math:`s_i` = ``strata[i]`` (e.g. the hospital site).

**Cox negative partial log-likelihood** (:func:`cox_nll`). Within a stratum :math:`s`, let
:math:`\xi_1 < \xi_2 < \dots` be the distinct times, :math:`H_k = \{i: t_i = \xi_k,
\delta_i = 1\}` the :math:`m_k = |H_k|` events at :math:`\xi_k` and
:math:`R_k = \{j: s_j = s, t_j \ge \xi_k\}` the risk set (censored patients with
:math:`t_j = \xi_k` are at risk at :math:`\xi_k`). With :math:`D_k = \sum_{j\in R_k} e^{g_j}`
and :math:`T_k = \sum_{i\in H_k} e^{g_i}`, the log partial likelihood is

.. math::

    \ell = \sum_s \sum_k \Big[\sum_{i\in H_k} g_i - \sum_{r=0}^{m_k-1}
           \log\big(D_k - c_{r,k}\,T_k\big)\Big],
    \qquad c_{r,k} = \begin{cases} 0 & \text{Breslow} \\ r/m_k & \text{Efron} \end{cases}

Without ties both methods are Cox's original partial likelihood. ``reduction="sum"`` returns
:math:`-\ell`; ``reduction="mean"`` returns :math:`-\ell / \sum_i \delta_i`, the mean over
the events of the *whole input* (all strata together). A stratum without events contributes
exactly 0; a one-patient stratum contributes :math:`g_i - g_i = 0` if it is an event.

**Mini-batched Cox loss** (seed 000, eq. 5). The mini-batched loss *is* :func:`cox_nll`
evaluated on one batch: the risk set :math:`R_k` is restricted to the patients of the batch.
Pair it with :class:`survfed.common.survival.batching.SiteStratifiedBatchSampler`, which keeps
every batch inside one site and puts at least one event in every batch. On the full data
set with ``strata=site`` the same function is the (site-stratified) full-batched loss (eq. 3).

**Why not torchsurv's ``neg_partial_log_likelihood``** (0.2): it drops a censored patient
whose time equals an event time from that event's risk set when the event times themselves
have no ties (the answer then depends on the input order), it accumulates tied terms in
float32 whatever the input dtype, its ``"mean"`` averages over distinct event times rather
than events, and it returns a graph-less 0 with a warning when there is no event. The tests
check this implementation against torchsurv where torchsurv is right, and against lifelines
and scikit-survival reference fits.

**Exponential oracle loss** (seed 000, eqs. 8/9; :func:`exponential_oracle_nll`). If the
baseline hazard is a known constant :math:`\lambda_0`, event times are exponential with rate
:math:`\lambda_0 e^{g_i}` and the averaged negative *full* log-likelihood is

.. math::

    L_\text{oracle} = -\frac1n \sum_i \Big[\delta_i(\log\lambda_0 + g_i)
                      - \lambda_0 e^{g_i} t_i\Big].

**Two-task loss** (seed 000, eq. 6; :func:`two_task_loss`): the same output :math:`g` is the
cancer logit and the log hazard,
:math:`L = w_\text{bce}\,\mathrm{BCE}(\sigma(g), y) + w_\text{cox}\,L_\text{Cox}(g)`, the
BCE averaged over the patients whose cancer label :math:`y` is known.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "TwoTaskLoss",
    "cox_nll",
    "exponential_oracle_nll",
    "two_task_loss",
]

Ties = Literal["efron", "breslow"]
Reduction = Literal["mean", "sum"]


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------


def _as_log_hz(log_hz: Tensor) -> Tensor:
    if not isinstance(log_hz, Tensor):
        raise TypeError(f"log_hz must be a torch.Tensor, got {type(log_hz).__name__}")
    if not log_hz.is_floating_point():
        raise TypeError(f"log_hz must be a floating-point tensor, got dtype {log_hz.dtype}")
    if log_hz.ndim == 2 and log_hz.shape[1] == 1:
        log_hz = log_hz[:, 0]
    if log_hz.ndim != 1:
        raise ValueError(f"log_hz must have shape (n,) or (n, 1), got {tuple(log_hz.shape)}")
    if not bool(torch.isfinite(log_hz.detach()).all()):
        raise ValueError("log_hz contains NaN or infinite values")
    # compute in at least float32 (half/bfloat16 under autocast lose the risk-set sums)
    if log_hz.dtype in (torch.float16, torch.bfloat16):
        log_hz = log_hz.float()
    return log_hz


def _as_vector(value: Tensor, name: str, n: int, device: torch.device) -> Tensor:
    if not isinstance(value, Tensor):
        value = torch.as_tensor(value)
    if value.ndim == 2 and value.shape[1] == 1:
        value = value[:, 0]
    if value.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) like log_hz, got {tuple(value.shape)}")
    return value.to(device)


def _as_event(event: Tensor, n: int, device: torch.device) -> Tensor:
    event = _as_vector(event, "event", n, device)
    if event.dtype != torch.bool:
        if event.is_floating_point() and not bool(torch.isfinite(event).all()):
            raise ValueError("event must hold 0/1 (or booleans), found NaN or inf")
        if not bool(((event == 0) | (event == 1)).all()):
            raise ValueError("event must hold only 0/1 (or booleans)")
        event = event != 0
    return event


def _as_time(time: Tensor, n: int, device: torch.device) -> Tensor:
    time = _as_vector(time, "time", n, device)
    if time.dtype == torch.bool or time.is_complex():
        raise TypeError(f"time must be a real numeric tensor, got dtype {time.dtype}")
    if time.is_floating_point() and not bool(torch.isfinite(time).all()):
        raise ValueError("time contains NaN or infinite values")
    return time


def _as_mask(mask: Tensor | None, name: str, n: int, device: torch.device) -> Tensor | None:
    if mask is None:
        return None
    mask = _as_vector(mask, name, n, device)
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a boolean tensor, got dtype {mask.dtype}")
    return mask


def _zero_with_graph(log_hz: Tensor) -> Tensor:
    """An exact 0 that is connected to ``log_hz`` (zero gradient, never NaN)."""
    return log_hz.reshape(-1)[:0].sum()


# --------------------------------------------------------------------------------------------
# Cox partial likelihood
# --------------------------------------------------------------------------------------------


def _stratum_pll(g: Tensor, event: Tensor, time: Tensor, ties: Ties) -> Tensor:
    """Log partial likelihood of one stratum, one term per event; shape (n_events,).

    Fully vectorised: after sorting by time, ``log D`` at each distinct time is a reverse
    ``logcumsumexp``; the Efron correction is written per event as
    ``log(D_k - r/m_k T_k) = log D_k + log1p(-(r/m_k) T_k / D_k)`` where ``r`` is the event's
    rank among the ``m_k`` events tied at its time, and ``T_k / D_k <= 1`` is a sum of
    ``exp(g_i - log D_k) <= 1`` (no overflow for any ``g``).
    """
    order = torch.argsort(time, stable=True)
    g, event, time = g[order], event[order], time[order]
    # log of the reverse cumulative sum: lse[p] = log sum_{q >= p} exp(g[q])
    log_rev = torch.logcumsumexp(g.flip(0), dim=0).flip(0)
    # first sorted position holding each patient's time = start of its risk set
    first = torch.searchsorted(time, time, side="left")
    log_d = log_rev[first]  # (n,) log D of each patient's time
    ev = event.nonzero().squeeze(1)
    g_ev, log_d_ev = g[ev], log_d[ev]
    if ties == "breslow":
        return g_ev - log_d_ev
    # Efron: rank r of each event among the events tied at its time, and m_k
    ev_count = event.to(torch.long)
    excl = torch.cumsum(ev_count, 0) - ev_count  # events strictly before position p
    rank = (excl - excl[first])[ev]  # (n_events,)
    group = first[ev]  # tied events share the same first position → group id
    m = torch.zeros_like(ev_count).scatter_add_(0, group, torch.ones_like(group))[group]
    p = torch.exp(g_ev - log_d_ev)  # e^{g_i} / D_k  in (0, 1]
    ratio = torch.zeros_like(g).scatter_add(0, group, p)[group]  # T_k / D_k
    frac = rank.to(g.dtype) / m.to(g.dtype)
    return g_ev - log_d_ev - torch.log1p(-frac * ratio)


def cox_nll(
    log_hz: Tensor,
    event: Tensor,
    time: Tensor,
    *,
    ties: Ties = "efron",
    strata: Tensor | None = None,
    mask: Tensor | None = None,
    reduction: Reduction = "mean",
    allow_no_events: bool = False,
) -> Tensor:
    r"""Cox negative log partial likelihood with Breslow or Efron ties and strata.

    See the module docstring for the formula. On a mini-batch this is seed 000's
    mini-batched loss (eq. 5): the risk sets hold only the batch's patients.

    Args:
        log_hz: log relative hazard :math:`g`, shape ``(n,)`` or ``(n, 1)``, float (computed
            in the input's precision, at least float32; float64 is exact enough for reference
            fits). Must be finite.
        event: event indicator, shape ``(n,)``, bool or 0/1.
        time: follow-up time, shape ``(n,)``, any real dtype and unit (only order matters).
        ties: ``"efron"`` (default, as lifelines/R) or ``"breslow"``.
        strata: optional stratum label per patient, shape ``(n,)``, any dtype
            ``torch.unique`` accepts (e.g. site ids). Risk sets never cross strata.
        mask: optional boolean ``(n,)``; patients with ``False`` are removed entirely
            (neither events nor in any risk set), e.g. padding.
        reduction: ``"mean"`` = divided by the number of events of the whole (masked)
            input, all strata together; ``"sum"`` = the negative log partial likelihood.
        allow_no_events: if the (masked) input holds no event the partial likelihood is
            constant; by default this raises ``ValueError`` (never a silent 0 or NaN). With
            ``True`` an exact 0 that still has a gradient graph (zero gradient) is returned.

    Returns:
        Scalar tensor, dtype of ``log_hz`` (at least float32).

    Raises:
        ValueError: on shape mismatch, non-finite values, non-0/1 events, an unknown
            ``ties``/``reduction``, or no event at all unless ``allow_no_events``.
    """
    if ties not in ("efron", "breslow"):
        raise ValueError(f"ties must be 'efron' or 'breslow', got {ties!r}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    log_hz = _as_log_hz(log_hz)
    n, device = log_hz.shape[0], log_hz.device
    event = _as_event(event, n, device)
    time = _as_time(time, n, device)
    keep = _as_mask(mask, "mask", n, device)
    if strata is not None:
        strata = _as_vector(strata, "strata", n, device)
    if keep is not None:
        log_hz, event, time = log_hz[keep], event[keep], time[keep]
        strata = None if strata is None else strata[keep]

    n_events = int(event.sum())
    if n_events == 0:
        if allow_no_events:
            return _zero_with_graph(log_hz)
        raise ValueError(
            f"cox_nll: the input ({log_hz.shape[0]} patients after masking) holds no event; "
            "its partial likelihood is constant. Pass allow_no_events=True to get 0, or use "
            "SiteStratifiedBatchSampler so every Cox batch holds an event."
        )

    if strata is None:
        terms = _stratum_pll(log_hz, event, time, ties)
    else:
        _, stratum_id = torch.unique(strata, return_inverse=True)
        parts = []
        for s in range(int(stratum_id.max()) + 1):
            sel = stratum_id == s
            if bool(event[sel].any()):
                parts.append(_stratum_pll(log_hz[sel], event[sel], time[sel], ties))
        terms = torch.cat(parts)
    total = -terms.sum()
    return total / n_events if reduction == "mean" else total


# --------------------------------------------------------------------------------------------
# oracle and two-task losses
# --------------------------------------------------------------------------------------------


def exponential_oracle_nll(
    log_hz: Tensor,
    event: Tensor,
    time: Tensor,
    baseline_rate: float | Tensor,
    *,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Negative full log-likelihood of exponential survival with a known baseline rate.

    :math:`-\frac1n\sum_i [\delta_i(\log\lambda_0 + g_i) - \lambda_0 e^{g_i} t_i]` (seed 000,
    eqs. 8/9: the oracle loss, which knows :math:`\lambda_0`; evaluated at the true
    :math:`g` it is the "true loss").

    Args:
        log_hz: log relative hazard :math:`g`, shape ``(n,)`` or ``(n, 1)``, float.
        event: event indicator, shape ``(n,)``, bool or 0/1.
        time: follow-up time, shape ``(n,)``, >= 0, in the unit of ``1 / baseline_rate``.
        baseline_rate: :math:`\lambda_0 > 0` (events per time unit); a float, or a tensor of
            shape ``(n,)`` for per-patient (e.g. per-site) baseline rates.
        reduction: ``"mean"`` over all ``n`` patients, or ``"sum"``.

    Returns:
        Scalar tensor.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    log_hz = _as_log_hz(log_hz)
    n, device = log_hz.shape[0], log_hz.device
    if n == 0:
        raise ValueError("log_hz must hold at least one patient")
    event = _as_event(event, n, device).to(log_hz.dtype)
    time = _as_time(time, n, device).to(log_hz.dtype)
    if bool((time < 0).any()):
        raise ValueError("time must be >= 0 for the exponential likelihood")
    rate = torch.as_tensor(baseline_rate, dtype=log_hz.dtype, device=device)
    if rate.ndim != 0:
        rate = _as_vector(rate, "baseline_rate", n, device)
    if not bool((torch.isfinite(rate) & (rate > 0)).all()):
        raise ValueError(f"baseline_rate must be finite and > 0, got {baseline_rate!r}")
    ll = event * (torch.log(rate) + log_hz) - rate * torch.exp(log_hz) * time
    return -ll.mean() if reduction == "mean" else -ll.sum()


class TwoTaskLoss(NamedTuple):
    """Result of :func:`two_task_loss`.

    Attributes:
        total: ``bce_weight * bce + cox_weight * cox`` (scalar, differentiable).
        cox: the Cox term (mean over events), exactly 0 when it was not computed.
        bce: the BCE term (mean over labelled patients), exactly 0 when none is labelled.
        n_events: number of events that entered the Cox term (0 if skipped).
        n_labelled: number of patients whose cancer label entered the BCE term.
    """

    total: Tensor
    cox: Tensor
    bce: Tensor
    n_events: int
    n_labelled: int


def two_task_loss(
    log_hz: Tensor,
    event: Tensor,
    time: Tensor,
    cancer: Tensor,
    *,
    cox_weight: float = 1.0,
    bce_weight: float = 1.0,
    ties: Ties = "efron",
    strata: Tensor | None = None,
    cancer_mask: Tensor | None = None,
    allow_no_events: bool = False,
    cancer_logit: Tensor | None = None,
) -> TwoTaskLoss:
    r"""Seed 000's two-task loss (eq. 6): BCE on :math:`\sigma(g)` plus Cox on the same :math:`g`.

    :math:`L = w_\text{bce}\cdot\frac{1}{|K|}\sum_{i\in K}\mathrm{BCE}(\sigma(g_i), y_i)
    + w_\text{cox}\cdot\mathrm{cox\_nll}(g)` with :math:`K` the patients whose cancer label
    is known. BCE is computed from logits (``binary_cross_entropy_with_logits``).

    Args:
        log_hz: model output :math:`g`, shape ``(n,)`` or ``(n, 1)``: the cancer logit and the
            log relative hazard.
        event, time, ties, strata: as in :func:`cox_nll` (mean reduction).
        cancer: cancer label per patient, shape ``(n,)``, 0/1 float; ``NaN`` = unknown.
        cox_weight, bce_weight: non-negative weights of the two terms; a term with weight 0
            is not computed (so a Cox-free batch is fine with ``cox_weight=0``).
        cancer_mask: optional boolean ``(n,)``, ``False`` = label unknown (combined with the
            NaN rule).
        allow_no_events: passed to :func:`cox_nll`; with ``True`` a batch without events
            gets a Cox term of exactly 0 and still trains the BCE term.
        cancer_logit: ``(n,)`` logit of P(cancer) from a separate cancer head (e.g. the leaky
            noisy-OR); the BCE term uses it instead of :math:`g`. ``None``: seed 000's shared
            output.

    Returns:
        :class:`TwoTaskLoss` (total, cox, bce, n_events, n_labelled). If no patient is
        labelled the BCE term is exactly 0 (with a gradient graph); it is never NaN.
    """
    for name, w in (("cox_weight", cox_weight), ("bce_weight", bce_weight)):
        if not (float(w) >= 0 and float(w) < float("inf")):
            raise ValueError(f"{name} must be finite and >= 0, got {w!r}")
    if cox_weight == 0 and bce_weight == 0:
        raise ValueError("cox_weight and bce_weight are both 0: nothing to train")
    log_hz = _as_log_hz(log_hz)
    n, device = log_hz.shape[0], log_hz.device
    cancer = _as_vector(cancer, "cancer", n, device)
    if cancer.dtype == torch.bool:
        cancer = cancer.to(log_hz.dtype)
    cancer = cancer.to(log_hz.dtype)
    labelled = ~torch.isnan(cancer)
    extra = _as_mask(cancer_mask, "cancer_mask", n, device)
    if extra is not None:
        labelled = labelled & extra
    y = cancer[labelled]
    if bool(((y != 0) & (y != 1)).any()):
        raise ValueError("cancer must hold 0, 1 or NaN (unknown)")

    zero = _zero_with_graph(log_hz)
    n_labelled = int(labelled.sum())
    if cancer_logit is not None:
        cancer_logit = _as_log_hz(cancer_logit)
        if cancer_logit.shape != log_hz.shape:
            raise ValueError(
                f"cancer_logit must have shape {tuple(log_hz.shape)}, got "
                f"{tuple(cancer_logit.shape)}"
            )
    logit = log_hz if cancer_logit is None else cancer_logit
    if bce_weight > 0 and n_labelled > 0:
        bce = F.binary_cross_entropy_with_logits(logit[labelled], y, reduction="mean")
    else:
        bce = zero
    n_events = 0
    if cox_weight > 0:
        event_b = _as_event(event, n, device)
        n_events = int(event_b.sum())
        cox = cox_nll(
            log_hz, event_b, time, ties=ties, strata=strata, allow_no_events=allow_no_events
        )
    else:
        cox = zero
    total = bce_weight * bce + cox_weight * cox
    return TwoTaskLoss(total=total, cox=cox, bce=bce, n_events=n_events, n_labelled=n_labelled)
