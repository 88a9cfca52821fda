"""Evaluate one model's predictions on one held-out cohort, with bootstrap intervals.

:func:`evaluate_predictions` takes the per-patient log-hazard ``g`` (also the cancer logit) of
a whole cohort and the outcomes, and computes every metric once over the whole cohort:
Harrell's and Uno's C-index, cancer AUC, time-dependent AUC at the horizons the cohort
supports, the integrated Brier score (when an aggregate Breslow baseline is given) and the
oracle C-index of the true log-hazard (when known, e.g. from a synthetic cohort's
``_truth/``). Each comes with a patient-level percentile bootstrap interval; all intervals use
the same resamples (same seed).

Settings fixed on the full cohort and kept for every resample, so the bootstrap estimates
the same quantity: Uno's truncation time ``tau`` (a high quantile of the observed times), the
time-dependent AUC horizons kept, and the Brier-score time grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from survfed.common.survival.baseline import BaselineHazard, survival_curves
from survfed.common.survival.bootstrap import BootstrapCI, bootstrap_ci, bootstrap_ci_many
from survfed.common.survival.metrics import (
    DEFAULT_TD_TIMES,
    cancer_auc,
    check_survival_arrays,
    harrell_c,
    integrated_brier,
    time_dependent_auc,
    uno_c,
    uno_tau,
)

__all__ = ["EvaluationResult", "evaluate_predictions", "ibs_grid"]


def _day_key(t: float) -> str:
    """JSON key of a horizon in days: ``"365"`` for 365.0, ``"365.5"`` otherwise."""
    return str(int(t)) if float(t).is_integer() else f"{t:g}"


def _clean(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _ci(b: BootstrapCI | None) -> list[float] | None:
    if b is None or b.interval is None:
        return None
    return [b.interval[0], b.interval[1]]


@dataclass(frozen=True)
class EvaluationResult:
    """All metrics of one cohort.

    Attributes:
        n, events, censored: cohort counts.
        max_follow_up_days, median_follow_up_days: of the observed times.
        c_index: Harrell's C with its interval.
        uno_c_index: Uno's C (truncated at ``uno_tau_days``) with its interval.
        uno_tau_days: Uno's truncation time.
        auc: cancer ROC AUC with its interval; ``None`` when no cancer labels were given.
        n_cancer_labelled, n_cancer_positive: patients with a known label / with cancer.
        td_auc: ``{horizon_days: BootstrapCI}`` for the supported horizons.
        td_auc_dropped: ``{horizon_days: reason}`` for the requested horizons dropped.
        td_auc_mean: sksurv's survival-weighted mean AUC over the kept horizons.
        ibs: integrated Brier score with its interval; ``None`` without a baseline.
        ibs_range_days: ``(start, end)`` of the Brier-score grid.
        oracle_c_index: Harrell's C of the true log-hazard; ``None`` when not known.
        n_bootstrap, seed, level: bootstrap settings.
    """

    n: int
    events: int
    censored: int
    max_follow_up_days: float
    median_follow_up_days: float
    c_index: BootstrapCI
    uno_c_index: BootstrapCI
    uno_tau_days: float
    auc: BootstrapCI | None
    n_cancer_labelled: int
    n_cancer_positive: int
    td_auc: dict[float, BootstrapCI] = field(default_factory=dict)
    td_auc_dropped: dict[float, str] = field(default_factory=dict)
    td_auc_mean: float | None = None
    ibs: BootstrapCI | None = None
    ibs_range_days: tuple[float, float] | None = None
    oracle_c_index: BootstrapCI | None = None
    has_baseline: bool = False
    n_bootstrap: int = 200
    seed: int = 0
    level: float = 0.95

    def to_dict(self) -> dict[str, object]:
        """JSON-serialisable summary; NaN and undefined values become ``None``.

        Always present: ``n, events, censored, c_index, c_index_ci, uno_c_index,
        uno_c_index_ci, uno_tau_days, auc, auc_ci, td_auc, td_auc_ci, td_auc_dropped``
        (horizon keys are day strings, e.g. ``"365"``) and ``bootstrap``. ``ibs, ibs_ci`` only
        with a baseline; ``oracle_c_index, oracle_c_index_ci`` only when the oracle is known.
        Intervals are ``[low, high]`` or ``None``.
        """
        out: dict[str, object] = {
            "n": self.n,
            "events": self.events,
            "censored": self.censored,
            "max_follow_up_days": self.max_follow_up_days,
            "median_follow_up_days": self.median_follow_up_days,
            "c_index": _clean(self.c_index.estimate),
            "c_index_ci": _ci(self.c_index),
            "uno_c_index": _clean(self.uno_c_index.estimate),
            "uno_c_index_ci": _ci(self.uno_c_index),
            "uno_tau_days": self.uno_tau_days,
            "auc": _clean(self.auc.estimate) if self.auc else None,
            "auc_ci": _ci(self.auc),
            "n_cancer_labelled": self.n_cancer_labelled,
            "n_cancer_positive": self.n_cancer_positive,
            "td_auc": {_day_key(t): _clean(b.estimate) for t, b in self.td_auc.items()},
            "td_auc_ci": {_day_key(t): _ci(b) for t, b in self.td_auc.items()},
            "td_auc_dropped": {_day_key(t): r for t, r in self.td_auc_dropped.items()},
            "td_auc_mean": _clean(self.td_auc_mean),
        }
        used: dict[str, object] = {
            "c_index": self.c_index.n_used,
            "uno_c_index": self.uno_c_index.n_used,
            "auc": self.auc.n_used if self.auc else None,
            "td_auc": {_day_key(t): b.n_used for t, b in self.td_auc.items()},
        }
        if self.has_baseline:
            out["ibs"] = _clean(self.ibs.estimate) if self.ibs else None
            out["ibs_ci"] = _ci(self.ibs)
            out["ibs_range_days"] = list(self.ibs_range_days) if self.ibs_range_days else None
            used["ibs"] = self.ibs.n_used if self.ibs else None
        if self.oracle_c_index is not None:
            out["oracle_c_index"] = _clean(self.oracle_c_index.estimate)
            out["oracle_c_index_ci"] = _ci(self.oracle_c_index)
            used["oracle_c_index"] = self.oracle_c_index.n_used
        out["bootstrap"] = {
            "n_resamples": self.n_bootstrap,
            "seed": self.seed,
            "level": self.level,
            "used": used,
        }
        return out

    def rows(self) -> list[tuple[str, BootstrapCI]]:
        """``(label, value)`` for every metric computed, in report order."""
        rows: list[tuple[str, BootstrapCI]] = [
            ("Harrell's C-index", self.c_index),
            (f"Uno's C-index (tau {self.uno_tau_days:g} d)", self.uno_c_index),
        ]
        if self.auc is not None:
            rows.append((f"Cancer AUC ({self.n_cancer_labelled} labelled)", self.auc))
        rows.extend((f"Time-dependent AUC at {t:g} d", b) for t, b in self.td_auc.items())
        if self.ibs is not None:
            lo, hi = self.ibs_range_days or (math.nan, math.nan)
            rows.append((f"Integrated Brier score ({lo:g}-{hi:g} d)", self.ibs))
        if self.oracle_c_index is not None:
            rows.append(("Oracle C-index (true hazard)", self.oracle_c_index))
        return rows

    def format_text(self) -> str:
        """A readable plain-text table of the metrics."""
        pct = 100.0 * self.events / self.n
        lines = [
            f"Cohort: n={self.n}, events={self.events} ({pct:.1f}%), censored={self.censored}, "
            f"follow-up median {self.median_follow_up_days:g} d, max {self.max_follow_up_days:g} d",
            "",
        ]
        level = f"{100 * self.level:g}% CI"
        header = f"{'metric':<44} {'value':>7}  {level:<18} {'resamples':>9}"
        lines += [header, "-" * len(header)]
        for label, b in self.rows():
            value = "n/a" if b.estimate is None else f"{b.estimate:.3f}"
            ci = "n/a" if b.interval is None else f"[{b.low:.3f}, {b.high:.3f}]"
            lines.append(f"{label:<44} {value:>7}  {ci:<18} {b.n_used:>4}/{b.n_resamples:<4}")
        if self.td_auc_mean is not None and len(self.td_auc) > 1:
            lines.append(f"{'Mean time-dependent AUC':<44} {self.td_auc_mean:>7.3f}")
        for t, reason in self.td_auc_dropped.items():
            lines.append(f"Time-dependent AUC at {t:g} d not computed: {reason}")
        if self.auc is None:
            lines.append("Cancer AUC not computed: no cancer labels")
        elif self.auc.estimate is None:
            lines.append("Cancer AUC undefined: the labelled patients hold only one class")
        if self.has_baseline and self.ibs is None:
            lines.append("Integrated Brier score not computed: grid outside the follow-up")
        return "\n".join(lines)


def ibs_grid(
    time: np.ndarray, baseline: BaselineHazard, end_days: float, n_points: int = 100
) -> np.ndarray | None:
    """Brier-score grid: ``n_points`` evenly spaced from the first observed time to
    ``min(end_days, last baseline edge)``; ``None`` if that range is empty."""
    start = float(np.min(time))
    end = min(float(end_days), float(baseline.edges[-1]))
    if not end > start or n_points < 2:
        return None
    return np.linspace(start, end, n_points)


def _optional_vector(value: object, n: int, name: str, allow_nan: bool) -> np.ndarray | None:
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) like log_hz, got {arr.shape}")
    bad = np.isinf(arr) if allow_nan else ~np.isfinite(arr)
    if np.any(bad):
        raise ValueError(f"{name} must be finite" + (" or NaN" if allow_nan else ""))
    return arr


def evaluate_predictions(
    log_hz: object,
    time: object,
    event: object,
    cancer: object | None = None,
    *,
    baseline: BaselineHazard | None = None,
    oracle_log_hz: object | None = None,
    n_bootstrap: int = 200,
    seed: int = 0,
    level: float = 0.95,
    td_times: Sequence[float] = DEFAULT_TD_TIMES,
    tau_quantile: float = 0.9,
    ibs_points: int = 100,
    cancer_score: object | None = None,
) -> EvaluationResult:
    """Compute every survival and diagnosis metric of one cohort, with bootstrap intervals.

    Args:
        log_hz: ``(n,)`` predicted log-hazard ``g`` per patient (``sigmoid(g)`` = P(cancer)).
        time: ``(n,)`` follow-up in days.
        event: ``(n,)`` event indicators (0/1 or bool).
        cancer: ``(n,)`` cancer labels 0/1 with NaN = unknown, or ``None``.
        baseline: aggregate Breslow baseline for survival curves; enables the IBS.
        oracle_log_hz: ``(n,)`` true log-hazard (synthetic cohorts), for the oracle C-index.
        n_bootstrap: bootstrap resamples (0 = no intervals).
        seed: bootstrap seed.
        level: interval coverage.
        td_times: time-dependent AUC horizons in days (default 365, 730, 1825); horizons the
            cohort cannot support are dropped and listed in ``td_auc_dropped``.
        tau_quantile: quantile of observed times used as Uno's ``tau`` and as the end of the
            Brier-score grid.
        ibs_points: number of points of the Brier-score grid.
        cancer_score: ``(n,)`` the cancer score of a separate cancer head (e.g. the noisy-OR
            logit) for the cancer AUC; ``None`` = ``g`` (seed 000's two-task head).

    Returns:
        :class:`EvaluationResult`.
    """
    g, t, e = check_survival_arrays(log_hz, time, event)
    n = g.shape[0]
    y_cancer = _optional_vector(cancer, n, "cancer", allow_nan=True)
    oracle = _optional_vector(oracle_log_hz, n, "oracle_log_hz", allow_nan=False)
    if baseline is not None and not isinstance(baseline, BaselineHazard):
        raise TypeError(f"baseline must be a BaselineHazard, got {type(baseline).__name__}")
    if not isinstance(ibs_points, int) or ibs_points < 2:
        raise ValueError(f"ibs_points must be an integer >= 2, got {ibs_points!r}")
    boot = {"n_resamples": n_bootstrap, "seed": seed, "level": level}

    c_index = bootstrap_ci(harrell_c, g, t, e, **boot)

    tau = uno_tau(t, tau_quantile)

    def _uno(g_: np.ndarray, t_: np.ndarray, e_: np.ndarray) -> float | None:
        return uno_c(g_, t_, e_, tau=tau)

    uno = bootstrap_ci(_uno, g, t, e, **boot)

    auc = None
    n_labelled = n_positive = 0
    if y_cancer is not None:
        known = ~np.isnan(y_cancer)
        n_labelled, n_positive = int(known.sum()), int(np.nansum(y_cancer))
        score = _optional_vector(cancer_score, n, "cancer_score", allow_nan=False)
        score = g if score is None else score
        auc = bootstrap_ci(cancer_auc, score, y_cancer, **boot)

    full_td = time_dependent_auc(g, t, e, td_times)
    kept = tuple(full_td.auc)
    td: dict[float, BootstrapCI] = {}
    if kept:

        def _td(g_: np.ndarray, t_: np.ndarray, e_: np.ndarray) -> dict[float, float]:
            return time_dependent_auc(g_, t_, e_, kept).auc

        td = bootstrap_ci_many(_td, g, t, e, **boot)

    ibs = None
    ibs_range = None
    if baseline is not None:
        grid = ibs_grid(t, baseline, tau, ibs_points)
        if grid is not None:
            ibs_range = (float(grid[0]), float(grid[-1]))

            def _ibs(g_: np.ndarray, t_: np.ndarray, e_: np.ndarray) -> float | None:
                return integrated_brier(survival_curves(baseline, g_, grid), grid, t_, e_)

            ibs = bootstrap_ci(_ibs, g, t, e, **boot)
            if ibs.estimate is None:
                ibs, ibs_range = None, None

    oracle_c = bootstrap_ci(harrell_c, oracle, t, e, **boot) if oracle is not None else None

    return EvaluationResult(
        n=n,
        events=int(e.sum()),
        censored=int(n - e.sum()),
        max_follow_up_days=float(t.max()),
        median_follow_up_days=float(np.median(t)),
        c_index=c_index,
        uno_c_index=uno,
        uno_tau_days=tau,
        auc=auc,
        n_cancer_labelled=n_labelled,
        n_cancer_positive=n_positive,
        td_auc=td,
        td_auc_dropped=full_td.dropped,
        td_auc_mean=full_td.mean_auc,
        ibs=ibs,
        ibs_range_days=ibs_range,
        oracle_c_index=oracle_c,
        has_baseline=baseline is not None,
        n_bootstrap=n_bootstrap,
        seed=seed,
        level=level,
    )
