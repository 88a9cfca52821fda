"""Central evaluation of a trained model on a held-out cohort (a site folder).

Predictions are made once for the whole cohort and every metric is computed once over it
(never averaged over batches); see :mod:`survfed.common.survival.evaluation`. When the cohort
was written by ``survfed make-cohort`` its ``_truth/`` folder gives the true log-hazards, and
the oracle C-index (the best any image model can reach) is reported beside the model's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from survfed.common.config import resolve_device
from survfed.common.run_folder import RunFolder
from survfed.common.survival.evaluation import EvaluationResult
from survfed.common.survival.model import load_model
from survfed.server.central_eval import load_held_out, score_cohort, write_cohort_report

__all__ = ["CohortEvaluation", "evaluate_run"]


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
    (cohort,) = load_held_out([cohort_dir], cache, model_config, progress=progress)
    result, g = score_cohort(
        model.to(device),
        cohort,
        device=device,
        n_bootstrap=n_bootstrap,
        seed=seed,
        baseline=baseline,
    )
    report_dir = Path(out_dir) if out_dir is not None else run.path / f"eval-{cohort.name}"
    write_cohort_report(
        cohort,
        result,
        g,
        report_dir,
        baseline=baseline,
        title=f"survfed evaluation: {run.path.name} on {cohort.name}",
    )
    return CohortEvaluation(cohort.name, result, report_dir, len(cohort.dataset.excluded))
