"""Breslow baseline hazard built from per-site aggregates on a common time grid.

A Cox model predicts only relative risk ``exp(g)``; survival probabilities
``S_i(t) = exp(-H0(t) exp(g_i))`` also need the baseline cumulative hazard ``H0``. Breslow's
estimator is ``H0(t) = sum_{event times s <= t} d_s / sum_{j: T_j >= s} exp(g_j)``, which
needs every individual event time. In a federation those never leave a site, so survfed
bins time on a grid shared by all sites and each site sends only two sums per bin:

* ``events[b]`` — number of events with time in bin ``b``;
* ``risk_sum[b]`` — ``sum exp(g_i)`` over the site's patients at risk at the start of bin b.

The coordinator adds the sites' numbers and sets ``ΔH0_b = d_b / R_b`` (0 when ``R_b = 0``).
On a 1-day grid with integer day times this equals Breslow's estimator exactly; on coarser
grids each bin's events share the risk set at the bin's start.

Grid conventions (``edges``: ``(B+1,)`` strictly increasing days, ``edges[0] >= 0``):

* bin ``b`` is ``(edges[b], edges[b+1]]``; the first bin also holds times ``<= edges[0]``;
* a patient whose time lies in bin ``k`` is at risk in bins ``0..k``;
* a time beyond ``edges[-1]`` counts as censored at ``edges[-1]`` (at risk in every bin, its
  event not counted): the estimate covers ``[0, edges[-1]]`` only;
* ``H0`` is estimated at the edges; between two edges it is interpolated linearly (a constant
  hazard within each bin, the natural reading of binned counts), and it stays flat after
  ``edges[-1]``. On a 1-day grid with integer day times the values at whole days are exactly
  Breslow's step function.

Within a bin, patients who leave (die or are censored) are still counted in ``R_b``, so the
plain estimate is slightly low on coarse grids. ``risk_set="actuarial"`` counts them as half
at risk, ``R*_b = (R_b + R_{b+1}) / 2`` — computed from the same sums, nothing more leaves a
site — which removes most of that bias (the last bin keeps ``R_b``).

Coarse bins also protect privacy: with 1-day bins and a small site, ``events`` reveals event
days. Use the default 30-day step (or the config's fixed edges) in a real federation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

from survfed.common.survival.metrics import check_survival_arrays

__all__ = [
    "BaselineHazard",
    "BreslowAggregates",
    "baseline_from_aggregates",
    "breslow_aggregates",
    "check_edges",
    "make_time_grid",
    "survival_curves",
]


def make_time_grid(max_days: float, step_days: float = 30.0) -> np.ndarray:
    """Bin edges ``0, step, 2·step, ...`` up to the first multiple of ``step`` ``>= max_days``.

    Args:
        max_days: longest follow-up the grid must cover, in days (> 0).
        step_days: bin width in days (> 0), default 30.

    Returns:
        ``(B+1,)`` float64 edges in days, ``B = ceil(max_days / step_days)``.
    """
    if not (isinstance(max_days, int | float) and math.isfinite(max_days) and max_days > 0):
        raise ValueError(f"max_days must be a positive number of days, got {max_days!r}")
    if not (isinstance(step_days, int | float) and math.isfinite(step_days) and step_days > 0):
        raise ValueError(f"step_days must be a positive number of days, got {step_days!r}")
    n_bins = max(1, math.ceil(max_days / step_days - 1e-9))
    return np.arange(n_bins + 1, dtype=np.float64) * float(step_days)


def check_edges(edges: object) -> np.ndarray:
    """Validate fixed bin edges (e.g. from the config): ``(B+1,)``, B >= 1, increasing, >= 0."""
    arr = np.asarray(edges, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] < 2:
        raise ValueError(f"edges must be a 1-D array of at least 2 times, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or arr[0] < 0 or np.any(np.diff(arr) <= 0):
        raise ValueError("edges must be finite, >= 0 and strictly increasing (days)")
    return arr


class BreslowAggregates(NamedTuple):
    """One site's sums on the common grid (the only thing that leaves the site).

    Attributes:
        events: ``(B,)`` int64, events per bin.
        risk_sum: ``(B,)`` float64, ``sum exp(g_i)`` over patients at risk at each bin's start.
    """

    events: np.ndarray
    risk_sum: np.ndarray


def _bin_index(time: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each time: ``b`` for ``time in (edges[b], edges[b+1]]``; 0 below; B beyond."""
    return np.maximum(np.searchsorted(edges, time, side="left") - 1, 0)


def breslow_aggregates(
    log_hz: object, time: object, event: object, edges: object
) -> BreslowAggregates:
    """A site's Breslow sums on the grid ``edges``.

    Args:
        log_hz: ``(n,)`` log-hazard ``g`` of the current model for the site's patients.
        time: ``(n,)`` follow-up in days (>= 0).
        event: ``(n,)`` event indicators (0/1 or bool).
        edges: ``(B+1,)`` grid from :func:`make_time_grid` or the config.

    Returns:
        :class:`BreslowAggregates` with ``events (B,) int64`` and ``risk_sum (B,) float64``.
    """
    g, t, e = check_survival_arrays(log_hz, time, event)
    grid = check_edges(edges)
    n_bins = grid.shape[0] - 1
    if np.any(g > 700):
        raise ValueError("log_hz must be <= 700 (exp overflows float64)")
    idx = _bin_index(t, grid)  # in 0..B; B = beyond the grid
    counted = e & (idx < n_bins)
    events = np.bincount(idx[counted], minlength=n_bins).astype(np.int64)
    # risk_sum[b] = sum over patients with idx >= b: reverse cumulative sum of per-bin sums.
    per_bin = np.bincount(idx, weights=np.exp(g), minlength=n_bins + 1)
    risk_sum = np.cumsum(per_bin[::-1])[::-1][:n_bins]
    return BreslowAggregates(events=events, risk_sum=risk_sum.astype(np.float64))


@dataclass(frozen=True)
class BaselineHazard:
    """Baseline cumulative hazard on a grid.

    Attributes:
        edges: ``(B+1,)`` bin edges in days.
        cumhaz: ``(B+1,)`` ``H0`` at each edge; ``cumhaz[0] = 0``, non-decreasing.
    """

    edges: np.ndarray
    cumhaz: np.ndarray

    def __post_init__(self) -> None:
        edges = check_edges(self.edges)
        cumhaz = np.asarray(self.cumhaz, dtype=np.float64)
        if cumhaz.shape != edges.shape:
            raise ValueError(f"cumhaz must have shape {edges.shape} like edges, got {cumhaz.shape}")
        if not np.all(np.isfinite(cumhaz)) or cumhaz[0] != 0 or np.any(np.diff(cumhaz) < 0):
            raise ValueError("cumhaz must be finite, start at 0 and be non-decreasing")
        object.__setattr__(self, "edges", edges)
        object.__setattr__(self, "cumhaz", cumhaz)

    def cumulative_hazard(self, times: object) -> np.ndarray:
        """``H0`` at ``times`` (days, any shape): linear between edges, 0 before the first
        edge, flat after the last one."""
        t = np.asarray(times, dtype=np.float64)
        if not np.all(np.isfinite(t)):
            raise ValueError("times must be finite")
        return np.interp(t, self.edges, self.cumhaz, left=0.0, right=float(self.cumhaz[-1]))

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-serialisable form (for the run folder)."""
        return {"edges": self.edges.tolist(), "cumhaz": self.cumhaz.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[float]]) -> BaselineHazard:
        """Inverse of :meth:`to_dict`."""
        for key in ("edges", "cumhaz"):
            if key not in data:
                raise ValueError(f"baseline data lacks the key {key!r}")
        return cls(np.asarray(data["edges"]), np.asarray(data["cumhaz"]))


def baseline_from_aggregates(
    aggregates: Sequence[tuple[object, object]],
    edges: object,
    *,
    risk_set: Literal["start", "actuarial"] = "start",
) -> BaselineHazard:
    """Sum the sites' aggregates and form the Breslow baseline ``ΔH0_b = d_b / R_b``.

    Args:
        aggregates: one ``(events (B,), risk_sum (B,))`` pair per site, e.g. from
            :func:`breslow_aggregates` (any sequence of two array-likes works, so values
            received over the wire can be passed directly).
        edges: ``(B+1,)`` the grid every site used.
        risk_set: ``"start"`` (default): ``R_b`` as sent, exact Breslow on a 1-day grid;
            ``"actuarial"``: ``(R_b + R_{b+1}) / 2``, less biased on coarse grids.

    Returns:
        :class:`BaselineHazard`; bins with ``R_b = 0`` add no hazard.
    """
    grid = check_edges(edges)
    n_bins = grid.shape[0] - 1
    if len(aggregates) == 0:
        raise ValueError("aggregates must hold at least one site's sums")
    d = np.zeros(n_bins, dtype=np.float64)
    r = np.zeros(n_bins, dtype=np.float64)
    for i, item in enumerate(aggregates):
        if len(item) != 2:
            raise ValueError(f"aggregates[{i}] must be an (events, risk_sum) pair")
        ev = np.asarray(item[0], dtype=np.float64)
        rs = np.asarray(item[1], dtype=np.float64)
        if ev.shape != (n_bins,) or rs.shape != (n_bins,):
            raise ValueError(
                f"aggregates[{i}] must hold two arrays of shape ({n_bins},) for {n_bins} bins, "
                f"got {ev.shape} and {rs.shape}"
            )
        if not (np.all(np.isfinite(ev)) and np.all(np.isfinite(rs))):
            raise ValueError(f"aggregates[{i}] must be finite")
        if np.any(ev < 0) or np.any(rs < 0) or np.any(ev != np.round(ev)):
            raise ValueError(f"aggregates[{i}]: events must be counts and risk_sum >= 0")
        d += ev
        r += rs
    if np.any((d > 0) & (r <= 0)):
        raise ValueError("aggregates are inconsistent: events in a bin with no one at risk")
    if risk_set == "actuarial":
        r = np.concatenate(((r[:-1] + r[1:]) / 2.0, r[-1:]))
    elif risk_set != "start":
        raise ValueError(f"risk_set must be 'start' or 'actuarial', got {risk_set!r}")
    increments = np.divide(d, r, out=np.zeros_like(d), where=r > 0)
    return BaselineHazard(grid, np.concatenate(([0.0], np.cumsum(increments))))


def survival_curves(baseline: BaselineHazard, log_hz: object, times: object) -> np.ndarray:
    """Predicted survival ``S_i(t) = exp(-H0(t) · exp(g_i))``.

    Args:
        baseline: the aggregate baseline hazard.
        log_hz: ``(n,)`` log-hazards ``g``.
        times: ``(m,)`` times in days.

    Returns:
        ``(n, m)`` float64 survival probabilities in [0, 1].
    """
    if not isinstance(baseline, BaselineHazard):
        raise TypeError(f"baseline must be a BaselineHazard, got {type(baseline).__name__}")
    g = np.asarray(log_hz, dtype=np.float64)
    if g.ndim != 1 or not np.all(np.isfinite(g)):
        raise ValueError(f"log_hz must be a finite 1-D array, got shape {g.shape}")
    t = np.asarray(times, dtype=np.float64)
    if t.ndim != 1:
        raise ValueError(f"times must be a 1-D array, got shape {t.shape}")
    h0 = baseline.cumulative_hazard(t)
    # exp(-exp(g + log H0)) avoids inf·0 when exp(g) overflows and H0 = 0.
    with np.errstate(divide="ignore", over="ignore"):
        return np.exp(-np.exp(g[:, None] + np.log(h0)[None, :]))
