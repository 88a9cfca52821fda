"""Central evaluation of a nodule detector on held-out cohorts (coordinator side).

A held-out cohort is a site folder the coordinator may read. Its usable patients are
lung-preprocessed once (cached, :func:`survfed.client.detection_data.prepare_scans`); the
detector then proposes nodules in every annotated patient and the metrics of
:mod:`survfed.common.detection.metrics` are computed once over the cohort:

* the headline numbers on nodules of **6 mm and larger** (seed 003 evaluates those; smaller
  ones are "irrelevant findings"): FROC sensitivities at 1/8 … 8 false positives per scan, their
  mean (CPM) and the recall among the top-5 proposals;
* the same over every annotated nodule, for the record.

The same proposals (for *every* usable patient, annotated or not) give the survival crops of a
detector-crop model (:func:`proposal_centres`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from survfed.client.detection_data import (
    ScanRecord,
    SiteScans,
    load_scans,
    lung_box,
    prepare_scans,
    proposals_mm,
)
from survfed.common.config import DetectorTrainConfig
from survfed.common.detection.inference import detect
from survfed.common.detection.metrics import (
    DetectionMetrics,
    SizeBin,
    detection_metrics,
    recall_by_size,
)
from survfed.common.detection.nnet import NNet
from survfed.common.imaging.preprocess import PreprocessedScan

__all__ = [
    "MIN_DIAMETER_MM",
    "SIZE_BINS_MM",
    "DetectorEvaluation",
    "HeldOutScans",
    "evaluate_detector",
    "load_held_out_scans",
    "proposal_centres",
    "score_proposals",
    "size_label",
    "size_line",
    "size_table",
    "write_detector_report",
]

MIN_DIAMETER_MM = 6.0
"""Nodules below this diameter are not scored in the headline metrics (seed 003 §VI-A)."""

SIZE_BINS_MM: tuple[float, ...] = (0.0, 6.0, 8.0, 12.0, 20.0, 30.0)
"""Lower edges (mm) of the nodule-diameter bins of the by-size recall table: under 6 mm (not
scored in the headline), 6–8 (Lung-RADS' solid-nodule step), 8–12, 12–20, 20–30, 30 and more."""


@dataclass(frozen=True)
class HeldOutScans:
    """One held-out cohort for the detector.

    Attributes:
        name: the cohort (site folder) name.
        site_dir: its folder.
        records: every usable, preprocessed patient.
        scans: the annotated ones, for the metrics.
    """

    name: str
    site_dir: Path
    records: list[ScanRecord]
    scans: SiteScans


def load_held_out_scans(
    cohort_dirs: Sequence[str | Path],
    cache_dir: str | Path,
    config: DetectorTrainConfig,
    *,
    progress: bool = False,
) -> list[HeldOutScans]:
    """Preprocess (cached under ``cache_dir/<cohort>``) and load every held-out cohort."""
    out = []
    for d in cohort_dirs:
        path = Path(d)
        if not path.is_dir():
            raise FileNotFoundError(f"held-out cohort {path} is not a folder")
        records, _ = prepare_scans(
            path.name,
            path,
            Path(cache_dir) / path.name,
            config.preprocess_config(),
            device=config.device,
            progress=progress,
        )
        out.append(HeldOutScans(path.name, path, records, load_scans(records)))
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise ValueError(f"eval-cohorts must have distinct folder names, got {names}")
    return out


@dataclass(frozen=True)
class DetectorEvaluation:
    """Detection metrics of one cohort.

    Attributes:
        cohort: its name.
        metrics: on nodules >= :data:`MIN_DIAMETER_MM` (the headline).
        metrics_all: on every annotated nodule.
        n_scans: annotated scans scored.
        by_size: hits per diameter bin of :data:`SIZE_BINS_MM` (bounds in mm).
    """

    cohort: str
    metrics: DetectionMetrics
    metrics_all: DetectionMetrics
    n_scans: int
    by_size: tuple[SizeBin, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: ``cpm``, ``recall_top_k``, ``sens@<rate>``... and ``all_nodules``."""
        return {
            "cohort": self.cohort,
            "min_diameter_mm": MIN_DIAMETER_MM,
            **_clean(self.metrics.to_dict()),
            "all_nodules": _clean(self.metrics_all.to_dict()),
            "by_size_mm": [b.to_dict() for b in self.by_size],
        }


def _clean(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in d.items()}


def evaluate_detector(
    model: NNet,
    cohorts: Sequence[HeldOutScans],
    config: DetectorTrainConfig,
    *,
    device: str,
) -> dict[str, DetectorEvaluation]:
    """Score ``model`` (on ``device``) on every cohort's annotated scans."""
    import torch

    model.eval()
    spacing = config.detector.spacing_mm
    out = {}
    with torch.inference_mode():
        for cohort in cohorts:
            scans = cohort.scans.scans
            if not scans:
                continue
            props = [
                detect(
                    model,
                    s.image,
                    config.detector,
                    device=device,
                    amp=device.startswith("cuda"),
                    lung_box=s.lung_box,
                )
                for s in scans
            ]
            out[cohort.name] = score_proposals(
                cohort.name, props, [s.nodules for s in scans], mm_per_unit=spacing
            )
    return out


def score_proposals(
    cohort: str,
    proposals: Sequence[np.ndarray],
    nodules: Sequence[np.ndarray],
    *,
    mm_per_unit: float,
) -> DetectorEvaluation:
    """The headline metrics (nodules of at least :data:`MIN_DIAMETER_MM`), those over every
    nodule and the by-size hits, of one cohort's proposals ``(n, 5)`` and nodules ``(m, 4)``
    per scan, in one unit of ``mm_per_unit`` mm (voxels of the grid: its spacing; patient
    mm: 1)."""
    if not (np.isfinite(mm_per_unit) and mm_per_unit > 0):
        raise ValueError(f"mm_per_unit must be a positive number, got {mm_per_unit!r}")
    edges = [e / mm_per_unit for e in SIZE_BINS_MM]
    bins = recall_by_size(proposals, nodules, edges)
    return DetectorEvaluation(
        cohort=cohort,
        metrics=detection_metrics(proposals, nodules, min_diameter=MIN_DIAMETER_MM / mm_per_unit),
        metrics_all=detection_metrics(proposals, nodules),
        n_scans=len(proposals),
        by_size=tuple(  # bounds back in mm
            dataclasses.replace(b, low=b.low * mm_per_unit, high=b.high * mm_per_unit) for b in bins
        ),
    )


def proposal_centres(
    model: NNet, cohort: HeldOutScans, config: DetectorTrainConfig, *, device: str, k: int
) -> dict[str, np.ndarray]:
    """Patient id → ``(≤ k, 3)`` top-``k`` proposal centres ``(x, y, z)`` mm, for every usable
    patient of ``cohort`` (the survival crops of a detector-crop model)."""
    import torch

    model.eval()
    out: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        for record in cohort.records:
            scan = PreprocessedScan.load(record.path)
            props = detect(
                model,
                scan.image,
                config.detector,
                device=device,
                amp=device.startswith("cuda"),
                lung_box=lung_box(scan),
            )
            out[record.patient_id] = proposals_mm(scan, props)[:k, :3]
    return out


def size_table(evaluation: DetectorEvaluation) -> str:
    """Markdown table of :attr:`DetectorEvaluation.by_size` (empty string without bins)."""
    if not evaluation.by_size:
        return ""
    k = evaluation.metrics.k
    lines = [
        f"| diameter mm | nodules | hit in top {k} | hit by any proposal |",
        "|---|---:|---:|---:|",
    ]
    for b in evaluation.by_size:
        label = f"{b.low:g}–{b.high:g}" if np.isfinite(b.high) else f"≥ {b.low:g}"
        if b.n:
            top, hit = f"{b.top_k} ({b.top_k / b.n:.0%})", f"{b.any} ({b.any / b.n:.0%})"
            lines.append(f"| {label} | {b.n} | {top} | {hit} |")
        else:
            lines.append(f"| {label} | 0 | – | – |")
    return "\n".join(lines) + "\n"


def size_label(low: float, high: float | None) -> str:
    """Plain-text name of a diameter bin: ``6-8``, or ``>=30`` when open above (``high`` None
    or infinite)."""
    if high is None or not np.isfinite(high):
        return f">={low:g}"
    return f"{low:g}-{high:g}"


def size_line(evaluation: DetectorEvaluation) -> str:
    """One line: top-k hits over nodules per size bin, e.g. ``6-8 mm 4/15``."""
    parts = [f"{size_label(b.low, b.high)} mm {b.top_k}/{b.n}" for b in evaluation.by_size]
    return f"top-{evaluation.metrics.k} hits by size: " + ", ".join(parts) if parts else ""


def write_detector_report(evaluation: DetectorEvaluation, out_dir: str | Path, title: str) -> Path:
    """``metrics.json``, ``report.md`` and ``froc.png`` (both nodule sets) into ``out_dir``."""
    from survfed.common.detection.plots import plot_froc

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = evaluation.to_dict()
    (out / "metrics.json").write_text(json.dumps(data, indent=2) + "\n")
    big = f"nodules >= {MIN_DIAMETER_MM:g} mm (n={evaluation.metrics.n_nodules})"
    every = f"all nodules (n={evaluation.metrics_all.n_nodules})"
    curves = {big: evaluation.metrics, every: evaluation.metrics_all}
    plot_froc(curves, out / "froc.png", f"FROC: {evaluation.cohort}")
    m = evaluation.metrics
    rows = "\n".join(f"| {rate:g} | {sens:.3f} |" for rate, sens in sorted(m.sensitivities.items()))
    (out / "report.md").write_text(
        f"# {title}\n\n"
        f"Cohort **{evaluation.cohort}**: {evaluation.n_scans} annotated scans, "
        f"{m.n_nodules} nodules >= {MIN_DIAMETER_MM:g} mm ({m.n_excluded} smaller ones not "
        f"scored), {m.n_proposals} proposals.\n\n"
        f"- CPM (mean sensitivity at 1/8 … 8 false positives per scan): **{m.cpm:.3f}**\n"
        f"- recall among the top {m.k} proposals: **{m.recall_top_k:.3f}**\n"
        f"- highest sensitivity reached: {m.max_sensitivity:.3f}\n"
        f"- all nodules: CPM {evaluation.metrics_all.cpm:.3f}, top-{m.k} recall "
        f"{evaluation.metrics_all.recall_top_k:.3f}\n\n"
        "| false positives per scan | sensitivity |\n|---:|---:|\n"
        f"{rows}\n\n"
        "By nodule size (a hit: a proposal's centre inside the nodule):\n\n"
        f"{size_table(evaluation)}\n"
        "![FROC](froc.png)\n"
    )
    return out
