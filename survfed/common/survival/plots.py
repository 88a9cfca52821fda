"""Evaluation plots and the report folder (report.json, report.md, PNGs).

Plots use matplotlib's object-oriented API with the Agg canvas (``matplotlib.figure.Figure``,
no ``pyplot``), so nothing global is touched and they work on headless servers and in threads.
Survival curves come from scikit-survival (``kaplan_meier_estimator``, log-log confidence
bands), the log-rank test from ``sksurv.compare.compare_survival``, the ROC curve from sklearn.

Risk groups are quantile groups of the predicted log-hazard ``g`` (tertiles by default):
group 0 = lowest predicted risk.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve
from sksurv.compare import compare_survival
from sksurv.nonparametric import kaplan_meier_estimator
from sksurv.util import Surv

from survfed.common.survival.baseline import BaselineHazard, survival_curves
from survfed.common.survival.evaluation import EvaluationResult
from survfed.common.survival.metrics import cancer_auc, check_survival_arrays

__all__ = [
    "CalibrationTable",
    "calibration_table",
    "km_at",
    "logrank_p",
    "new_figure",
    "plot_calibration",
    "plot_km_by_risk_group",
    "plot_metric_history",
    "plot_roc",
    "risk_groups",
    "save_figure",
    "write_report",
]

_GROUP_NAMES = {2: ("low", "high"), 3: ("low", "intermediate", "high")}


def new_figure(width: float = 6.4, height: float = 4.8) -> Figure:
    """A matplotlib figure on the Agg canvas (no pyplot state, safe in worker threads)."""
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG to ``path`` (parent folders created); returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", bbox_inches="tight")
    return out


def risk_groups(log_hz: object, n_groups: int = 3) -> np.ndarray:
    """Quantile group of each patient's log-hazard (0 = lowest risk).

    Args:
        log_hz: ``(n,)`` log-hazards.
        n_groups: number of groups (3 = tertiles).

    Returns:
        ``(n,)`` int64 group indices, renumbered ``0..k-1`` when ties leave groups empty.
    """
    g = np.asarray(log_hz, dtype=np.float64)
    if g.ndim != 1 or g.size == 0 or not np.all(np.isfinite(g)):
        raise ValueError("log_hz must be a non-empty finite 1-D array")
    if not isinstance(n_groups, int) or n_groups < 1:
        raise ValueError(f"n_groups must be a positive integer, got {n_groups!r}")
    cuts = np.quantile(g, np.arange(1, n_groups) / n_groups)
    raw = np.searchsorted(cuts, g, side="left")
    _, groups = np.unique(raw, return_inverse=True)
    return groups.astype(np.int64)


def _group_label(k: int, n_groups: int) -> str:
    names = _GROUP_NAMES.get(n_groups)
    return f"{names[k]} risk" if names else f"risk group {k + 1}/{n_groups}"


def logrank_p(time: object, event: object, groups: object) -> float | None:
    """Log-rank test p-value across groups (sksurv ``compare_survival``); ``None`` if < 2
    groups or no events."""
    _, t, e = check_survival_arrays(np.zeros(np.shape(time)), time, event)
    grp = np.asarray(groups)
    if grp.shape != t.shape:
        raise ValueError(f"groups must have shape {t.shape}, got {grp.shape}")
    if np.unique(grp).size < 2 or not e.any():
        return None
    try:
        _, p = compare_survival(Surv.from_arrays(event=e, time=t), grp)
    except np.linalg.LinAlgError:  # degenerate, e.g. every event at one time
        return None
    return float(p) if math.isfinite(p) else None


def km_at(time: np.ndarray, event: np.ndarray, horizon: float) -> tuple[float, float, float]:
    """Kaplan–Meier survival at ``horizon`` days with its 95% log-log interval.

    Returns ``(S, low, high)``; all NaN when the horizon is beyond the last follow-up time.
    """
    if horizon > float(np.max(time)):
        return (math.nan, math.nan, math.nan)
    x, s, ci = kaplan_meier_estimator(event.astype(bool), time, conf_type="log-log")
    k = int(np.searchsorted(x, horizon, side="right")) - 1
    if k < 0:
        return (1.0, 1.0, 1.0)
    return (float(s[k]), float(ci[0, k]), float(ci[1, k]))


def _time_ticks(t_max: float) -> np.ndarray:
    if t_max >= 730:
        step = 365.0 if t_max <= 3650 else 730.0
    else:
        step = 30.0 * max(1, math.ceil(t_max / 30.0 / 6))
    return np.arange(0.0, t_max + 1e-9, step)


def plot_km_by_risk_group(
    log_hz: object,
    time: object,
    event: object,
    path: str | Path,
    *,
    n_groups: int = 3,
    title: str = "Kaplan–Meier by predicted risk group",
) -> Path:
    """Kaplan–Meier curves (with 95% bands) per quantile group of predicted risk, the
    log-rank p-value in the title and a number-at-risk table below.

    Args:
        log_hz, time, event: ``(n,)`` cohort arrays (days).
        path: PNG file to write.
        n_groups: quantile groups (3 = tertiles).
        title: plot title; the log-rank p-value is appended.

    Returns:
        The PNG path.
    """
    g, t, e = check_survival_arrays(log_hz, time, event)
    groups = risk_groups(g, n_groups)
    k_groups = int(groups.max()) + 1
    p = logrank_p(t, e, groups)
    ticks = _time_ticks(float(t.max()))

    fig = new_figure(7.0, 5.6)
    gs = fig.add_gridspec(2, 1, height_ratios=(4, 1), hspace=0.35)
    ax = fig.add_subplot(gs[0])
    ax_tab = fig.add_subplot(gs[1], sharex=ax)
    colors = ("tab:green", "tab:orange", "tab:red") if k_groups == 3 else None
    for k in range(k_groups):
        mask = groups == k
        x, s, ci = kaplan_meier_estimator(e[mask], t[mask], conf_type="log-log")
        x = np.r_[0.0, x]
        s, lo, hi = np.r_[1.0, s], np.r_[1.0, ci[0]], np.r_[1.0, ci[1]]
        color = colors[k] if colors else None
        label = f"{_group_label(k, k_groups)} (n={mask.sum()}, events={int(e[mask].sum())})"
        (line,) = ax.step(x, s, where="post", label=label, color=color)
        ax.fill_between(x, lo, hi, step="post", alpha=0.15, color=line.get_color())
        for tick in ticks:
            ax_tab.text(
                tick,
                k_groups - 1 - k,
                str(int(np.sum(t[mask] >= tick))),
                ha="center",
                va="center",
                fontsize=8,
                color=line.get_color(),
            )
    p_text = "= n/a" if p is None else (f"= {p:.2g}" if p >= 1e-4 else "< 1e-4")
    ax.set_title(f"{title}\nlog-rank p {p_text}")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0.0, 1.02)
    ax.set_xlim(-0.06 * float(t.max()), 1.02 * float(t.max()))
    ax.set_xticks(ticks)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax_tab.set_ylim(-0.5, k_groups - 0.5)
    ax_tab.set_yticks(range(k_groups))
    ax_tab.set_yticklabels(
        [_group_label(k, k_groups) for k in reversed(range(k_groups))], fontsize=8
    )
    ax_tab.set_xlabel("days")
    ax_tab.set_title("number at risk", fontsize=8, loc="left")
    for side in ("top", "right", "left"):
        ax_tab.spines[side].set_visible(False)
    ax_tab.tick_params(axis="y", length=0)
    return save_figure(fig, path)


def plot_roc(score: object, cancer: object, path: str | Path) -> Path | None:
    """ROC curve of the cancer score (NaN labels skipped) with its AUC in the legend.

    Returns:
        The PNG path, or ``None`` (nothing written) when the labels hold one class only.
    """
    s = np.asarray(score, dtype=np.float64)
    y = np.asarray(cancer, dtype=np.float64)
    auc = cancer_auc(s, y)
    if auc is None:
        return None
    known = ~np.isnan(y)
    fpr, tpr, _ = roc_curve(y[known].astype(int), s[known])
    fig = new_figure(5.2, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    n_pos = int(y[known].sum())
    ax.plot(fpr, tpr, label=f"AUC = {auc:.3f} ({n_pos} cancer / {int(known.sum())})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set_xlabel("false positive rate (1 − specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("Cancer ROC")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


@dataclass(frozen=True)
class CalibrationTable:
    """Predicted vs observed survival at one horizon, per risk group (``(k,)`` arrays).

    Attributes:
        horizon_days: the horizon.
        n: patients per group.
        predicted: mean predicted survival ``S_i(horizon)`` per group.
        observed, observed_low, observed_high: Kaplan–Meier survival at the horizon with its
            95% interval (NaN when the group's follow-up ends before the horizon).
    """

    horizon_days: float
    n: np.ndarray
    predicted: np.ndarray
    observed: np.ndarray
    observed_low: np.ndarray
    observed_high: np.ndarray


def calibration_table(
    baseline: BaselineHazard,
    log_hz: object,
    time: object,
    event: object,
    horizon: float,
    n_groups: int = 5,
) -> CalibrationTable:
    """Group patients by quantiles of ``g`` and compare mean predicted survival at
    ``horizon`` days with the group's Kaplan–Meier estimate."""
    g, t, e = check_survival_arrays(log_hz, time, event)
    if not (math.isfinite(horizon) and horizon > 0):
        raise ValueError(f"horizon must be a positive number of days, got {horizon!r}")
    pred = survival_curves(baseline, g, [horizon])[:, 0]
    groups = risk_groups(g, n_groups)
    k_groups = int(groups.max()) + 1
    rows = []
    for k in range(k_groups):
        mask = groups == k
        rows.append((mask.sum(), pred[mask].mean(), *km_at(t[mask], e[mask], horizon)))
    arr = np.asarray(rows, dtype=np.float64)
    return CalibrationTable(
        float(horizon), arr[:, 0].astype(np.int64), arr[:, 1], arr[:, 2], arr[:, 3], arr[:, 4]
    )


def plot_calibration(
    baseline: BaselineHazard,
    log_hz: object,
    time: object,
    event: object,
    horizon: float,
    path: str | Path,
    *,
    n_groups: int = 5,
) -> Path:
    """Calibration plot at ``horizon`` days: mean predicted survival per risk quintile (x)
    against the Kaplan–Meier estimate with its 95% interval (y), and the diagonal."""
    tab = calibration_table(baseline, log_hz, time, event, horizon, n_groups)
    fig = new_figure(5.2, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    ok = np.isfinite(tab.observed)
    yerr = np.vstack([tab.observed - tab.observed_low, tab.observed_high - tab.observed])
    ax.errorbar(
        tab.predicted[ok],
        tab.observed[ok],
        yerr=yerr[:, ok],
        fmt="o",
        capsize=3,
        label=f"risk groups ({len(tab.n)} quantiles)",
    )
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    ax.set_xlabel(f"predicted survival at {horizon:g} days")
    ax.set_ylabel(f"observed (Kaplan–Meier) survival at {horizon:g} days")
    ax.set_title(f"Calibration at {horizon:g} days")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return save_figure(fig, path)


def plot_metric_history(
    history: Sequence[Mapping[str, object]], keys: Sequence[str], path: str | Path
) -> Path:
    """Line plot of metrics per federated round.

    Args:
        history: one mapping per round, e.g. ``{"round": 3, "c_index": 0.71, "loss": 1.2}``;
            the x value is ``"round"`` when present, else the position (1-based). Missing or
            ``None`` values are left out.
        keys: metric names to plot (one line each).
        path: PNG file to write.
    """
    if not keys:
        raise ValueError("keys must name at least one metric")
    if isinstance(keys, str):
        raise TypeError("keys must be a sequence of metric names, not a single string")
    fig = new_figure(6.4, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    for key in keys:
        xs, ys = [], []
        for i, row in enumerate(history):
            v = row.get(key)
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                xs.append(row.get("round", i + 1))
                ys.append(float(v))
        ax.plot(xs, ys, marker="o", ms=3, label=key)
    ax.set_xlabel("round")
    ax.set_title("Metrics per round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _calibration_horizon(result: EvaluationResult) -> float:
    """The supported time-dependent AUC horizon closest to the median follow-up, else the
    median follow-up."""
    if result.td_auc:
        return min(result.td_auc, key=lambda h: abs(h - result.median_follow_up_days))
    return result.median_follow_up_days


def _markdown(
    result: EvaluationResult, title: str, plots: Mapping[str, str], extra: Mapping[str, object]
) -> str:
    level = f"{100 * result.level:g}% CI"
    lines = [
        f"# {title}",
        "",
        f"Patients: {result.n}, events: {result.events}, censored: {result.censored}; "
        f"follow-up median {result.median_follow_up_days:g} days, "
        f"max {result.max_follow_up_days:g} days.",
        "",
        "Metrics are computed once over the whole cohort; intervals are patient-level "
        f"percentile bootstrap ({result.n_bootstrap} resamples, seed {result.seed}).",
        "",
        f"| metric | value | {level} | resamples used |",
        "| --- | ---: | --- | ---: |",
    ]
    for label, b in result.rows():
        value = "n/a" if b.estimate is None else f"{b.estimate:.3f}"
        ci = "n/a" if b.interval is None else f"{b.low:.3f} – {b.high:.3f}"
        lines.append(f"| {label} | {value} | {ci} | {b.n_used}/{b.n_resamples} |")
    notes = [
        f"Time-dependent AUC at {t:g} days not computed: {r}."
        for t, r in result.td_auc_dropped.items()
    ]
    if result.auc is None:
        notes.append("Cancer AUC not computed: no cancer labels.")
    elif result.auc.estimate is None:
        notes.append("Cancer AUC undefined: the labelled patients hold only one class.")
    if not result.has_baseline:
        notes.append("Integrated Brier score and calibration need a baseline hazard; none given.")
    if extra.get("logrank_p") is not None:
        notes.append(f"Log-rank test across risk tertiles: p = {extra['logrank_p']:.3g}.")
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    captions = {
        "km": "Kaplan–Meier by predicted risk group",
        "roc": "Cancer ROC",
        "calibration": "Calibration",
    }
    for key, name in plots.items():
        lines += ["", f"## {captions.get(key, key)}", "", f"![{captions.get(key, key)}]({name})"]
    return "\n".join(lines) + "\n"


def write_report(
    result: EvaluationResult,
    log_hz: object,
    time: object,
    event: object,
    out_dir: str | Path,
    *,
    cancer: object | None = None,
    baseline: BaselineHazard | None = None,
    calibration_horizon: float | None = None,
    title: str = "survfed evaluation report",
) -> list[Path]:
    """Write the evaluation report folder.

    Files: ``report.json`` (``result.to_dict()`` plus ``logrank_p``, ``calibration_horizon_days``
    and ``plots``), ``report.md`` (summary table linking the PNGs), ``km_risk_groups.png``,
    ``roc_cancer.png`` (when cancer labels hold both classes) and ``calibration.png`` (when a
    baseline is given).

    Args:
        result: from :func:`~survfed.common.survival.evaluation.evaluate_predictions` on the
            same arrays.
        log_hz, time, event: ``(n,)`` cohort arrays (days).
        out_dir: folder to write (created if needed).
        cancer: ``(n,)`` cancer labels with NaN = unknown, or ``None``.
        baseline: aggregate baseline hazard (enables the calibration plot).
        calibration_horizon: days; default the supported time-dependent AUC horizon closest
            to the median follow-up.
        title: report title.

    Returns:
        Paths of the files written.
    """
    g, t, e = check_survival_arrays(log_hz, time, event)
    if g.shape[0] != result.n:
        raise ValueError(f"log_hz has {g.shape[0]} patients but result was computed on {result.n}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    plots: dict[str, str] = {}

    written.append(plot_km_by_risk_group(g, t, e, out / "km_risk_groups.png"))
    plots["km"] = written[-1].name
    if cancer is not None:
        roc = plot_roc(g, cancer, out / "roc_cancer.png")
        if roc is not None:
            written.append(roc)
            plots["roc"] = roc.name
    horizon = None
    if baseline is not None:
        horizon = calibration_horizon or _calibration_horizon(result)
        written.append(plot_calibration(baseline, g, t, e, horizon, out / "calibration.png"))
        plots["calibration"] = written[-1].name

    extra: dict[str, object] = {
        "logrank_p": logrank_p(t, e, risk_groups(g, 3)),
        "calibration_horizon_days": horizon,
        "plots": plots,
    }
    data = {**result.to_dict(), **extra}
    json_path = out / "report.json"
    json_path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    md_path = out / "report.md"
    md_path.write_text(_markdown(result, title, plots, extra))
    return [json_path, md_path, *written]
