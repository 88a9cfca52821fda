"""Detection metrics over a cohort: FROC, CPM and top-k recall (LUNA16 rules).

All numbers are computed **once over all scans** of a cohort (never averaged over batches or
sites).

**Hits** (LUNA16). A proposal *hits* a nodule when its centre lies strictly inside the
nodule's sphere, ``‖c_prop − c_nod‖ < diameter / 2`` (voxels of the isotropic grid). A nodule
hit by several proposals counts once, with the highest of their confidences; the other hitting
proposals are neither true nor false positives. A proposal that hits two nodules counts for
both. A proposal that hits nothing is a false positive.

**Small nodules** (``min_diameter``, in the nodules' units, voxels; the paper evaluates nodules
≥ 6 mm, i.e. ``6 / spacing_mm`` voxels). Nodules below it are *excluded*: they are not
counted as targets, and a proposal that hits only excluded nodules is neither a hit nor a false
positive (LUNA16's "irrelevant findings").

**FROC.** Sweeping a confidence threshold gives, per threshold, the mean number of false
positives per scan and the share of (included) nodules hit; the sensitivities at 1/8, 1/4,
1/2, 1, 2, 4 and 8 false positives per scan are interpolated linearly on that curve
(``monai.metrics.compute_froc_curve_data`` / ``compute_froc_score``), and their mean is the
**CPM** (competition performance metric). Beyond the largest false-positive rate the curve
reaches, the sensitivity stays at its last value. A proposal of confidence 0 is never accepted.

**Top-k recall.** The share of included nodules hit by one of the ``k`` most confident
proposals of their scan (``k`` = 5: what the case classifier sees).

**By size** (:func:`recall_by_size`). The same hit rule, counted per nodule-diameter bin:
how many nodules of each size are hit among the top ``k`` and by any proposal. Detectors lose
the small nodules first, so one number per bin says where the misses lie.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from monai.metrics import compute_froc_curve_data, compute_froc_score

from survfed.common.detection.scan import check_nodules

__all__ = ["FP_RATES", "DetectionMetrics", "SizeBin", "detection_metrics", "recall_by_size"]

FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
"""False positives per scan at which the FROC sensitivities are read (LUNA16)."""


@dataclass(frozen=True)
class DetectionMetrics:
    """Cohort detection metrics (see the module docstring).

    Attributes:
        sensitivities: ``{fp_rate: sensitivity}`` at each of ``FP_RATES``.
        cpm: mean of those sensitivities.
        recall_top_k: share of included nodules hit among the top-``k`` proposals.
        max_sensitivity: share of included nodules hit by any proposal.
        k: the ``k`` of ``recall_top_k``.
        n_scans, n_nodules (included), n_excluded (below ``min_diameter``), n_proposals.
        fps_per_scan, sensitivity: the FROC curve's points as
            ``monai.metrics.compute_froc_curve_data`` returns them (thresholds increasing, so
            false positives decreasing, ending with the point ``(0, 0)``).
    """

    sensitivities: dict[float, float]
    cpm: float
    recall_top_k: float
    max_sensitivity: float
    k: int
    n_scans: int
    n_nodules: int
    n_excluded: int
    n_proposals: int
    fps_per_scan: np.ndarray = field(repr=False)
    sensitivity: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, float | int]:
        """Flat JSON-able summary (``sens@<rate>`` keys for the FROC points)."""
        out: dict[str, float | int] = {f"sens@{r:g}": s for r, s in self.sensitivities.items()}
        out.update(
            cpm=self.cpm,
            recall_top_k=self.recall_top_k,
            max_sensitivity=self.max_sensitivity,
            k=self.k,
            n_scans=self.n_scans,
            n_nodules=self.n_nodules,
            n_excluded=self.n_excluded,
            n_proposals=self.n_proposals,
        )
        return out


def _check_proposals(p: object, name: str) -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 5), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 5:
        raise ValueError(
            f"{name} must have shape (n, 5) = (z, y, x, d, confidence), got {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite")
    if (arr[:, 4] < 0).any():
        raise ValueError(f"{name} confidences (column 4) must be >= 0")
    return arr


def _hits(props: np.ndarray, nods: np.ndarray) -> np.ndarray:
    """``(n_props, n_nods)``: proposal centre strictly inside the nodule's sphere."""
    if not len(nods):
        return np.zeros((len(props), 0), dtype=bool)
    dist = np.linalg.norm(props[:, None, :3] - nods[None, :, :3], axis=-1)
    return dist < nods[None, :, 3] / 2


@dataclass(frozen=True)
class SizeBin:
    """Nodules with ``low <= diameter < high`` (the nodules' units): ``n`` of them, ``top_k``
    hit among their scan's ``k`` most confident proposals, ``any`` hit by some proposal."""

    low: float
    high: float
    n: int
    top_k: int
    any: int

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-able (an open upper end is ``None``)."""
        high = self.high if np.isfinite(self.high) else None
        return {"low": self.low, "high": high, "n": self.n, "top_k": self.top_k, "any": self.any}


def recall_by_size(
    proposals: Sequence[np.ndarray],
    nodules: Sequence[np.ndarray],
    edges: Sequence[float],
    *,
    k: int = 5,
) -> list[SizeBin]:
    """Hits per nodule-diameter bin ``[edges[i], edges[i + 1])``; the last bin is open above.

    Args:
        proposals: per scan, ``(n_i, 5)`` ``(z, y, x, diameter, confidence)``, any order.
        nodules: per scan, ``(m_i, 4)`` ``(z, y, x, diameter)`` in the same unit.
        edges: increasing lower bin edges in the nodules' diameter unit (nodules below
            ``edges[0]`` are not counted).
        k: proposals per scan for ``top_k``.

    Returns:
        one :class:`SizeBin` per edge, empty bins included.
    """
    if len(proposals) != len(nodules):
        raise ValueError(
            f"proposals and nodules must list the same scans, got {len(proposals)} and "
            f"{len(nodules)}"
        )
    lows = np.asarray(edges, dtype=np.float64)
    if lows.ndim != 1 or not len(lows) or not np.isfinite(lows).all() or (np.diff(lows) <= 0).any():
        raise ValueError(f"edges must be increasing finite numbers, got {edges!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    highs = np.append(lows[1:], np.inf)
    n = np.zeros(len(lows), dtype=int)
    top = np.zeros(len(lows), dtype=int)
    hit_any = np.zeros(len(lows), dtype=int)
    for i, (raw_p, raw_n) in enumerate(zip(proposals, nodules, strict=True)):
        props = _check_proposals(raw_p, f"proposals[{i}]")
        nods = check_nodules(raw_n, f"nodules[{i}]")
        props = props[np.argsort(-props[:, 4], kind="stable")]
        hits = _hits(props, nods)
        which = np.searchsorted(lows, nods[:, 3], side="right") - 1  # -1: below edges[0]
        for j, b in enumerate(which):
            if b < 0:
                continue
            n[b] += 1
            top[b] += int(hits[:k, j].any())
            hit_any[b] += int(hits[:, j].any())
    return [
        SizeBin(float(lo), float(hi), int(c), int(t), int(a))
        for lo, hi, c, t, a in zip(lows, highs, n, top, hit_any, strict=True)
    ]


def detection_metrics(
    proposals: Sequence[np.ndarray],
    nodules: Sequence[np.ndarray],
    *,
    min_diameter: float = 0.0,
    k: int = 5,
    fp_rates: Sequence[float] = FP_RATES,
) -> DetectionMetrics:
    """FROC sensitivities, CPM and top-``k`` recall of a cohort.

    Args:
        proposals: per scan, ``(n_i, 5)`` ``(z, y, x, diameter, confidence)`` (voxels), any
            order (sorted here by confidence for the top-``k``).
        nodules: per scan, ``(m_i, 4)`` ``(z, y, x, diameter)`` in the same voxel grid.
        min_diameter: nodules with a smaller diameter are excluded (see the module docstring).
        k: proposals per scan for ``recall_top_k``.
        fp_rates: false positives per scan at which to read the FROC curve.

    Returns:
        :class:`DetectionMetrics`. With no included nodule every sensitivity is NaN.
    """
    if len(proposals) != len(nodules):
        raise ValueError(
            f"proposals and nodules must list the same scans, got {len(proposals)} and "
            f"{len(nodules)}"
        )
    if not proposals:
        raise ValueError("proposals must hold at least one scan")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if not (np.isfinite(min_diameter) and min_diameter >= 0):
        raise ValueError(f"min_diameter must be a finite number >= 0, got {min_diameter!r}")
    rates = tuple(float(r) for r in fp_rates)
    if not rates or any(not (np.isfinite(r) and r > 0) for r in rates):
        raise ValueError(f"fp_rates must be positive numbers, got {fp_rates!r}")

    fp_probs: list[float] = [0.0]  # sentinel: see below
    tp_probs: list[float] = []
    top_hits = n_excluded = n_props = 0
    for i, (raw_p, raw_n) in enumerate(zip(proposals, nodules, strict=True)):
        props = _check_proposals(raw_p, f"proposals[{i}]")
        nods = check_nodules(raw_n, f"nodules[{i}]")
        props = props[np.argsort(-props[:, 4], kind="stable")]
        n_props += len(props)
        included = nods[:, 3] >= min_diameter
        n_excluded += int((~included).sum())
        hits = _hits(props, nods)
        hits_incl = hits[:, included]
        is_fp = ~hits.any(axis=1)
        fp_probs.extend(props[is_fp, 4].tolist())
        conf = np.where(hits_incl, props[:, 4:5], -1.0)
        best = conf.max(axis=0) if len(props) else np.full(hits_incl.shape[1], -1.0)
        tp_probs.extend(np.maximum(best, 0.0).tolist())
        top_hits += int(hits_incl[:k].any(axis=0).sum())
    n_targets = len(tp_probs)
    n_scans = len(proposals)
    if n_targets == 0:
        nan = float("nan")
        return DetectionMetrics(
            sensitivities=dict.fromkeys(rates, nan),
            cpm=nan,
            recall_top_k=nan,
            max_sensitivity=nan,
            k=k,
            n_scans=n_scans,
            n_nodules=0,
            n_excluded=n_excluded,
            n_proposals=n_props,
            fps_per_scan=np.zeros(0),
            sensitivity=np.zeros(0),
        )
    # compute_froc_curve_data sweeps the thresholds sorted(set(fp ∪ tp))[1:]: it skips the
    # smallest value, meant to be the 0 of missed nodules. The 0 sentinel in fp_probs makes the
    # smallest value 0 in every case, so no real operating point is skipped, and a threshold
    # of 0 (which would count missed nodules as hits) is never used.
    fps, sens = compute_froc_curve_data(
        np.asarray(fp_probs), np.asarray(tp_probs), n_targets, n_scans
    )
    per_rate = {r: float(compute_froc_score(fps, sens, (r,))) for r in rates}
    return DetectionMetrics(
        sensitivities=per_rate,
        cpm=float(compute_froc_score(fps, sens, rates)),
        recall_top_k=top_hits / n_targets,
        max_sensitivity=float(np.mean(np.asarray(tp_probs) > 0)),
        k=k,
        n_scans=n_scans,
        n_nodules=n_targets,
        n_excluded=n_excluded,
        n_proposals=n_props,
        fps_per_scan=fps,
        sensitivity=sens,
    )
