"""Plots of detection results: the FROC curve (sensitivity against false positives per scan)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from survfed.common.detection.metrics import FP_RATES, DetectionMetrics
from survfed.common.survival.plots import new_figure, save_figure

__all__ = ["plot_froc"]


def plot_froc(curves: Mapping[str, DetectionMetrics], path: str | Path, title: str) -> Path:
    """One FROC curve per entry of ``curves`` (label → metrics), log-2 false-positive axis
    from 1/16 to 16 per scan, the LUNA16 read-out rates marked; written as PNG to ``path``."""
    if not curves:
        raise ValueError("curves must hold at least one DetectionMetrics")
    fig = new_figure(6.0, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    for label, m in curves.items():
        fps, sens = np.asarray(m.fps_per_scan, float), np.asarray(m.sensitivity, float)
        keep = fps > 0
        if keep.any():
            order = np.argsort(fps[keep])
            ax.plot(fps[keep][order], sens[keep][order], label=f"{label}, CPM {m.cpm:.3f}")
        rates = sorted(m.sensitivities)
        ax.scatter(rates, [m.sensitivities[r] for r in rates], s=12)
    ax.set_xscale("log", base=2)
    ax.set_xlim(1 / 16, 16)
    ax.set_xticks(list(FP_RATES), [f"{r:g}" for r in FP_RATES])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)
