"""Survival and diagnosis metrics over one whole cohort (never averaged over batches).

Every function here is pure and takes plain numpy arrays, one entry per patient:

* ``log_hz`` — shape ``(n,)``, the model's log-hazard ``g`` (a risk score: higher means
  shorter survival). The same number is the cancer logit, ``sigmoid(g)`` = P(cancer).
* ``time`` — shape ``(n,)``, follow-up in days (event or censoring time), finite and ``>= 0``.
* ``event`` — shape ``(n,)``, 1/True if death was observed at ``time``, 0/False if censored.

The numbers come from scikit-survival and scikit-learn (Harrell's C is numpy, checked against
scikit-survival in the tests, so that sites need not import them); this module checks inputs,
chooses the evaluation settings (Uno's truncation time, which time points a cohort can
support) and turns "undefined on this cohort" into ``None`` instead of an exception, so a
bootstrap can skip those resamples.

Inverse-probability-of-censoring weights (Uno's C, time-dependent AUC, Brier score) need an
estimate of the censoring distribution. The coordinator holds no individual training data
(sites only send weights and sums), so by default the censoring distribution is estimated
by Kaplan–Meier on the evaluation cohort itself (``survival_train`` = the cohort). Pass
``train_time``/``train_event`` to use another sample when one is available.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

# scikit-learn / scikit-survival are imported inside the functions that use them: importing
# them costs about 1 s, which a site would pay in every Flower message (one process each).

__all__ = [
    "DEFAULT_TD_TIMES",
    "TimeDependentAUC",
    "cancer_auc",
    "check_survival_arrays",
    "harrell_c",
    "integrated_brier",
    "td_auc_support",
    "time_dependent_auc",
    "uno_c",
    "uno_tau",
]

#: Default horizons for the time-dependent AUC: 1, 2 and 5 years, in days.
DEFAULT_TD_TIMES: tuple[float, ...] = (365.0, 730.0, 1825.0)


def _as_1d_float(value: object, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must hold only finite numbers")
    return arr


def check_survival_arrays(
    log_hz: object, time: object, event: object
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate and convert one cohort's predictions and outcomes.

    Args:
        log_hz: ``(n,)`` risk scores (log-hazard), finite.
        time: ``(n,)`` follow-up times in days, finite and ``>= 0``.
        event: ``(n,)`` event indicators, booleans or 0/1.

    Returns:
        ``(log_hz float64 (n,), time float64 (n,), event bool (n,))``.

    Raises:
        ValueError: naming the offending argument.
    """
    g = _as_1d_float(log_hz, "log_hz")
    t = _as_1d_float(time, "time")
    e_raw = np.asarray(event)
    if e_raw.ndim != 1:
        raise ValueError(f"event must be a 1-D array, got shape {e_raw.shape}")
    if e_raw.dtype != np.bool_:
        e_num = np.asarray(e_raw, dtype=np.float64)
        if not np.all(np.isin(e_num, (0.0, 1.0))):
            raise ValueError("event must hold only 0/1 or booleans")
        e = e_num.astype(bool)
    else:
        e = e_raw
    if not (g.shape == t.shape == e.shape):
        raise ValueError(
            f"log_hz, time and event must have the same length, got {g.shape[0]}, "
            f"{t.shape[0]} and {e.shape[0]}"
        )
    if g.shape[0] == 0:
        raise ValueError("log_hz, time and event must not be empty")
    if np.any(t < 0):
        raise ValueError("time must be >= 0 (days of follow-up)")
    return g, t, e


def _survival_train(
    time: np.ndarray,
    event: np.ndarray,
    train_time: object | None,
    train_event: object | None,
) -> np.ndarray:
    """Structured array for the censoring estimate: the cohort itself unless given."""
    from sksurv.util import Surv

    if (train_time is None) != (train_event is None):
        raise ValueError("train_time and train_event must be given together")
    if train_time is None:
        return Surv.from_arrays(event=event, time=time)
    _, tt, te = check_survival_arrays(np.zeros(np.shape(train_time)), train_time, train_event)
    return Surv.from_arrays(event=te, time=tt)


def harrell_c(log_hz: object, time: object, event: object) -> float | None:
    """Harrell's concordance index of a risk score, as sksurv's ``concordance_index_censored``.

    A pair (i, j) is comparable when patient i had the event and ``time[j] > time[i]``, or
    ``time[j] == time[i]`` and j was censored; it is concordant when ``log_hz[i] > log_hz[j]``
    and counts 1/2 when the scores tie (within 1e-8, sksurv's ``tied_tol``).
    C = (concordant + ties / 2) / comparable.

    Written with numpy (O(n²) in blocks of rows, as sksurv's own loop is O(n²)) rather than
    called from scikit-survival because sites compute it every round and importing
    scikit-learn costs a site 1.5-7 s per Flower message (one process each). The tests check
    it against ``concordance_index_censored`` on real cohorts with tied times and scores.

    Args:
        log_hz: ``(n,)`` risk scores; higher = shorter expected survival.
        time: ``(n,)`` follow-up in days.
        event: ``(n,)`` event indicators.

    Returns:
        C in [0, 1], or ``None`` when the cohort has no comparable pair (e.g. no events).
    """
    g, t, e = check_survival_arrays(log_hz, time, event)
    concordant = 0.0
    comparable = 0
    cases = np.flatnonzero(e)
    for start in range(0, cases.size, _C_BLOCK):
        i = cases[start : start + _C_BLOCK, None]
        later = (t[None, :] > t[i]) | ((t[None, :] == t[i]) & ~e[None, :])
        diff = g[i] - g[None, :]
        tie = np.abs(diff) <= 1e-8
        comparable += int(later.sum())
        concordant += float((later & (diff > 0) & ~tie).sum()) + 0.5 * float((later & tie).sum())
    if comparable == 0:
        return None
    return concordant / comparable


_C_BLOCK = 512  # rows of the pair matrix per step: 512 x n booleans


def uno_tau(time: object, quantile: float = 0.9) -> float:
    """Truncation time for Uno's C: the ``quantile`` of the observed times, in days.

    Truncating at a high quantile (not the maximum) keeps the censoring weights
    ``1/G(t)^2`` bounded, which is what makes Uno's estimate stable.
    """
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    t = _as_1d_float(time, "time")
    if t.size == 0:
        raise ValueError("time must not be empty")
    return float(np.quantile(t, quantile))


def uno_c(
    log_hz: object,
    time: object,
    event: object,
    *,
    tau: float | None = None,
    tau_quantile: float = 0.9,
    train_time: object | None = None,
    train_event: object | None = None,
) -> float | None:
    """Uno's IPCW concordance index (sksurv ``concordance_index_ipcw``).

    Args:
        log_hz: ``(n,)`` risk scores.
        time: ``(n,)`` follow-up in days.
        event: ``(n,)`` event indicators.
        tau: truncation time in days; pairs are only compared when the earlier time is
            ``< tau``. Default: :func:`uno_tau` of ``time`` at ``tau_quantile``. Pass a fixed
            ``tau`` when bootstrapping so every resample estimates the same quantity.
        tau_quantile: quantile of the observed times used when ``tau`` is None.
        train_time, train_event: sample for the censoring distribution (Kaplan–Meier);
            default the evaluation cohort itself (the coordinator has no training patients).

    Returns:
        Uno's C in [0, 1], or ``None`` when undefined (no event before ``tau``, or a zero
        censoring survival probability at an event time).
    """
    from sksurv.metrics import concordance_index_ipcw
    from sksurv.util import Surv

    g, t, e = check_survival_arrays(log_hz, time, event)
    if tau is None:
        tau = uno_tau(t, tau_quantile)
    if not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau must be a positive number of days, got {tau}")
    if not np.any(e & (t < tau)):
        return None
    train = _survival_train(t, e, train_time, train_event)
    try:
        with np.errstate(invalid="ignore", divide="ignore"):
            c = concordance_index_ipcw(train, Surv.from_arrays(event=e, time=t), g, tau=tau)[0]
    except (ValueError, ZeroDivisionError):
        return None
    return None if not math.isfinite(c) else float(c)


def cancer_auc(score: object, cancer: object) -> float | None:
    """ROC AUC of a cancer score (sklearn ``roc_auc_score``).

    Args:
        score: ``(n,)`` cancer logit or probability (AUC is rank-based, either works).
        cancer: ``(n,)`` labels 0/1; NaN = unknown, those patients are skipped.

    Returns:
        AUC in [0, 1], or ``None`` when the labelled patients hold only one class.
    """
    from sklearn.metrics import roc_auc_score

    s = _as_1d_float(score, "score")
    y = np.asarray(cancer, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError(f"cancer must have shape {s.shape} like score, got {y.shape}")
    known = ~np.isnan(y)
    y, s = y[known], s[known]
    if not np.all(np.isin(y, (0.0, 1.0))):
        raise ValueError("cancer must hold only 0, 1 or NaN")
    if np.unique(y).size < 2:
        return None
    return float(roc_auc_score(y.astype(int), s))


@dataclass(frozen=True)
class TimeDependentAUC:
    """Cumulative/dynamic AUC at the horizons a cohort supports.

    Attributes:
        auc: ``{time_days: AUC}`` for the horizons that were evaluated (ascending).
        dropped: ``{time_days: reason}`` for the requested horizons the cohort cannot support.
        mean_auc: sksurv's survival-weighted mean over the evaluated horizons, or ``None``.
    """

    auc: dict[float, float] = field(default_factory=dict)
    dropped: dict[float, str] = field(default_factory=dict)
    mean_auc: float | None = None


def td_auc_support(time: object, event: object, t: float) -> str | None:
    """Why horizon ``t`` (days) cannot be evaluated on this cohort, or ``None`` if it can.

    A horizon needs at least one case (an event at or before ``t``) and at least one
    control (follow-up beyond ``t``), i.e. it lies strictly inside the follow-up range.
    """
    tt = _as_1d_float(time, "time")
    ee = np.asarray(event).astype(bool)
    if not np.any(ee & (tt <= t)):
        return f"no event at or before {t:g} days"
    if not np.any(tt > t):
        return f"no patient followed beyond {t:g} days (max follow-up {tt.max():g})"
    return None


def time_dependent_auc(
    log_hz: object,
    time: object,
    event: object,
    times: Sequence[float] = DEFAULT_TD_TIMES,
    *,
    train_time: object | None = None,
    train_event: object | None = None,
) -> TimeDependentAUC:
    """Cumulative/dynamic time-dependent AUC (sksurv ``cumulative_dynamic_auc``).

    Cases at horizon ``t`` are patients with an event at or before ``t``; controls are those
    still followed after ``t``. Horizons without a case or a control are dropped and listed
    with the reason.

    Args:
        log_hz: ``(n,)`` risk scores.
        time: ``(n,)`` follow-up in days.
        event: ``(n,)`` event indicators.
        times: horizons in days (default 1, 2 and 5 years).
        train_time, train_event: sample for the censoring distribution; default the cohort.
    """
    from sksurv.metrics import cumulative_dynamic_auc
    from sksurv.util import Surv

    g, t, e = check_survival_arrays(log_hz, time, event)
    horizons = sorted({float(x) for x in times})
    if not horizons:
        raise ValueError("times must hold at least one horizon")
    if any(not math.isfinite(h) or h <= 0 for h in horizons):
        raise ValueError(f"times must be positive numbers of days, got {list(times)}")
    dropped: dict[float, str] = {}
    kept: list[float] = []
    for h in horizons:
        reason = td_auc_support(t, e, h)
        if reason is None:
            kept.append(h)
        else:
            dropped[h] = reason
    if not kept:
        return TimeDependentAUC({}, dropped, None)
    train = _survival_train(t, e, train_time, train_event)
    try:
        scores, mean_auc = cumulative_dynamic_auc(
            train, Surv.from_arrays(event=e, time=t), g, np.asarray(kept)
        )
    except ValueError as err:
        return TimeDependentAUC({}, {**dropped, **{h: str(err) for h in kept}}, None)
    auc = {h: float(s) for h, s in zip(kept, scores, strict=True) if math.isfinite(s)}
    for h, s in zip(kept, scores, strict=True):
        if not math.isfinite(s):
            dropped[h] = "AUC not finite"
    mean = float(mean_auc) if math.isfinite(mean_auc) and auc else None
    return TimeDependentAUC(auc, dict(sorted(dropped.items())), mean)


def integrated_brier(
    surv_prob: object,
    grid: object,
    time: object,
    event: object,
    *,
    train_time: object | None = None,
    train_event: object | None = None,
) -> float | None:
    """Integrated Brier score of predicted survival curves (sksurv ``integrated_brier_score``).

    Args:
        surv_prob: ``(n, m)`` predicted survival probabilities ``S_i(grid[j])`` in [0, 1].
        grid: ``(m,)`` strictly increasing times in days of the columns of ``surv_prob``.
        time: ``(n,)`` follow-up in days.
        event: ``(n,)`` event indicators.
        train_time, train_event: sample for the censoring distribution; default the cohort.

    Grid points outside the cohort's follow-up ``[min(time), max(time))`` are dropped (the
    Brier score is not estimable there); the score is integrated by the trapezoid rule over
    the remaining points and divided by their span.

    Returns:
        The IBS (lower is better; 0.25 is an uninformative constant 0.5), or ``None`` when fewer
        than two grid points fall inside the follow-up or the censoring weights are undefined.
    """
    from sksurv.metrics import integrated_brier_score
    from sksurv.util import Surv

    grid_arr = _as_1d_float(grid, "grid")
    if grid_arr.size >= 2 and np.any(np.diff(grid_arr) <= 0):
        raise ValueError("grid must be strictly increasing")
    _, t, e = check_survival_arrays(np.zeros(np.shape(time)), time, event)
    probs = np.asarray(surv_prob, dtype=np.float64)
    if probs.shape != (t.shape[0], grid_arr.shape[0]):
        raise ValueError(
            f"surv_prob must have shape (n, m) = ({t.shape[0]}, {grid_arr.shape[0]}), "
            f"got {probs.shape}"
        )
    if not np.all(np.isfinite(probs)) or np.any(probs < 0) or np.any(probs > 1):
        raise ValueError("surv_prob must hold probabilities in [0, 1]")
    inside = (grid_arr >= t.min()) & (grid_arr < t.max())
    if inside.sum() < 2:
        return None
    train = _survival_train(t, e, train_time, train_event)
    try:
        ibs = integrated_brier_score(
            train, Surv.from_arrays(event=e, time=t), probs[:, inside], grid_arr[inside]
        )
    except ValueError:
        return None
    return float(ibs) if math.isfinite(ibs) else None
