"""Central evaluation of a trained model on a held-out cohort (a site folder).

Predictions are made once for the whole cohort and every metric is computed once over it
(never averaged over batches); see :mod:`survfed.common.survival.evaluation`. When the cohort
was written by ``survfed make-cohort`` its ``_truth/`` folder gives the true log-hazards, and
the oracle C-index (the best any image model can reach) is reported beside the model's.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from survfed.client.site_data import load_site_data
from survfed.common.config import resolve_device
from survfed.common.run_folder import RunFolder
from survfed.common.survival.evaluation import EvaluationResult, evaluate_predictions
from survfed.common.survival.model import load_model
from survfed.common.survival.plots import write_report
from survfed.common.survival.train import predict

__all__ = ["CohortEvaluation", "evaluate_run", "read_truth_log_hazard"]


@dataclass(frozen=True)
class CohortEvaluation:
    """One model on one cohort: the metrics and where the report was written."""

    site: str
    result: EvaluationResult
    report_dir: Path
    excluded: int

    def to_dict(self) -> dict[str, object]:
        return {
            "site": self.site,
            **self.result.to_dict(),
            "excluded_patients": self.excluded,
            "report": str(self.report_dir),
        }


def read_truth_log_hazard(cohort_dir: Path, patient_ids: list[str]) -> np.ndarray | None:
    """True log-hazards of ``patient_ids`` from ``<cohort>/../_truth/<site>/truth.csv``.

    Returns ``None`` when there is no truth file (a real cohort) or it lacks a patient.
    """
    truth = cohort_dir.parent / "_truth" / cohort_dir.name / "truth.csv"
    if not truth.is_file():
        return None
    with truth.open(newline="") as fh:
        rows = {row["patient_id"]: row for row in csv.DictReader(fh)}
    if not rows or "log_hazard" not in next(iter(rows.values())):
        return None
    try:
        return np.array([float(rows[pid]["log_hazard"]) for pid in patient_ids])
    except KeyError:
        return None


def evaluate_run(
    run_dir: str | Path,
    cohort_dir: str | Path,
    *,
    out_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    n_bootstrap: int = 200,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> CohortEvaluation:
    """Evaluate the model of ``run_dir`` on the cohort folder ``cohort_dir``.

    Args:
        run_dir: a run folder holding ``model.pt`` (and ``baseline.json`` for the Brier score
            and calibration).
        cohort_dir: a site folder (clinical.csv, nodules.csv, dicom/).
        out_dir: report folder (default ``run_dir/eval-<cohort name>``).
        cache_dir: crop cache (default ``run_dir/cache``).
        n_bootstrap: bootstrap resamples for the intervals.
        seed: bootstrap seed.
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: progress bars.
    """
    run = RunFolder(run_dir)
    cohort_dir = Path(cohort_dir)
    model, model_config = load_model(run.model_path)
    baseline = run.read_baseline()
    device = resolve_device(device)
    cache = Path(cache_dir) if cache_dir is not None else run.path / "cache"
    site = load_site_data(cohort_dir, cache, model_config, progress=progress)
    ds = site.dataset
    g = predict(model.to(device), ds, device=device, batch_size=32)
    oracle = read_truth_log_hazard(cohort_dir, ds.patient_ids)
    result = evaluate_predictions(
        g,
        ds.times,
        ds.events,
        ds.cancer,
        baseline=baseline,
        oracle_log_hz=oracle,
        n_bootstrap=n_bootstrap,
        seed=seed,
    )
    report_dir = Path(out_dir) if out_dir is not None else run.path / f"eval-{site.name}"
    write_report(
        result,
        g,
        ds.times,
        ds.events,
        report_dir,
        cancer=ds.cancer,
        baseline=baseline,
        title=f"survfed evaluation: {run.path.name} on {site.name}",
    )
    return CohortEvaluation(site.name, result, report_dir, len(ds.excluded))
