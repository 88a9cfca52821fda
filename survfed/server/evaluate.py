"""Central evaluation of a trained model on a held-out cohort (a site folder).

Predictions are made once for the whole cohort and every metric is computed once over it
(never averaged over batches); see :mod:`survfed.common.survival.evaluation`. When the cohort
was written by ``survfed make-cohort`` its ``_truth/`` folder gives the true log-hazards, and
the oracle C-index (the best any image model can reach) is reported beside the model's.

A run folder may hold a survival model (``model.pt``), a nodule detector (``detector.pt`` of
``survfed train-detector``, or ``detector/detector.pt`` of a federation with detector rounds),
or both. :func:`evaluate_detector_run` scores the detector (FROC, CPM, top-5 recall;
:mod:`survfed.server.detector_eval`); :func:`evaluate_run` scores the survival model, on crops
cut where the model's training crops were cut — at the annotations, or at the run's detector's
proposals when it was trained on those (``crop_source`` in ``summary.json``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from survfed.client.crop_cache import ANNOTATIONS
from survfed.common.config import resolve_device
from survfed.common.run_folder import RunFolder, find_detector
from survfed.common.survival.evaluation import EvaluationResult
from survfed.common.survival.model import load_model
from survfed.server.central_eval import load_held_out, score_cohort, write_cohort_report
from survfed.server.detector_eval import DetectorEvaluation

__all__ = [
    "CohortEvaluation",
    "DetectorCohortEvaluation",
    "evaluate_detector_run",
    "evaluate_run",
    "find_detector",
]


@dataclass(frozen=True)
class DetectorCohortEvaluation:
    """A detector on one cohort: the metrics and where the report was written."""

    evaluation: DetectorEvaluation
    report_dir: Path

    def to_dict(self) -> dict[str, object]:
        return {**self.evaluation.to_dict(), "report": str(self.report_dir)}


def _detector_config(
    path: Path, device: str, mirror_tta: bool | None = None
):  # -> (NNet, DetectorTrainConfig)
    from survfed.common.config import DetectorTrainConfig
    from survfed.common.detection.train import load_detector

    model, det = load_detector(path, map_location=device)
    if mirror_tta is not None:
        det = det.replace(mirror_tta=mirror_tta)
    return model, DetectorTrainConfig(detector=det, device=device)


def evaluate_detector_run(
    run_dir: str | Path,
    cohort_dir: str | Path,
    *,
    out_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    device: str = "auto",
    progress: bool = True,
    mirror_tta: bool | None = None,
) -> DetectorCohortEvaluation:
    """Score the run's detector on the annotated patients of ``cohort_dir`` (with test-time
    mirroring on or off as ``mirror_tta`` says; ``None``: the detector's own setting)."""
    from survfed.server.detector_eval import (
        evaluate_detector,
        load_held_out_scans,
        write_detector_report,
    )

    run = RunFolder(run_dir)
    path = find_detector(run.path)
    if path is None:
        raise FileNotFoundError(f"{run.path} holds no detector.pt")
    device = resolve_device(device)
    model, config = _detector_config(path, device, mirror_tta)
    cache = Path(cache_dir) if cache_dir is not None else run.path / "cache"
    (cohort,) = load_held_out_scans([cohort_dir], cache / "scans", config, progress=progress)
    if not cohort.scans.scans:
        raise ValueError(f"cohort {cohort_dir} has no annotated patient to score a detector on")
    evaluation = evaluate_detector(model, [cohort], config, device=device)[cohort.name]
    report = Path(out_dir) if out_dir is not None else path.parent / f"eval-{cohort.name}"
    write_detector_report(evaluation, report, f"survfed detector {path} on {cohort.name}")
    return DetectorCohortEvaluation(evaluation, report)


def _proposal_crops_source(run: RunFolder, cohort_dir: Path, cache: Path, device: str, k: int):
    """``(source, centres)`` for a run trained on detector crops, else ``(ANNOTATIONS, None)``."""
    from survfed.client.local_detection import detector_id
    from survfed.server.detector_eval import load_held_out_scans, proposal_centres

    try:
        source = str(run.read_json("summary.json").get("crop_source") or ANNOTATIONS)
    except FileNotFoundError:
        source = ANNOTATIONS
    if source == ANNOTATIONS:
        return ANNOTATIONS, None
    path = find_detector(run.path)
    if path is None:
        raise FileNotFoundError(
            f"{run.path} was trained on the crops of {source} but holds no detector.pt"
        )
    model, config = _detector_config(path, device)
    if f"detector-{detector_id(model.state_dict())}" != source:
        raise ValueError(f"{path} is not the detector the model was trained with ({source})")
    (cohort,) = load_held_out_scans([cohort_dir], cache / "scans", config)
    return source, {cohort.name: proposal_centres(model, cohort, config, device=device, k=k)}


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
    source, centres = _proposal_crops_source(run, cohort_dir, cache, device, model_config.k)
    (cohort,) = load_held_out(
        [cohort_dir], cache, model_config, progress=progress, source=source,
        centres_by_cohort=centres,
    )  # fmt: skip
    scores = score_cohort(
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
        scores,
        report_dir,
        baseline=baseline,
        title=f"survfed evaluation: {run.path.name} on {cohort.name}",
    )
    return CohortEvaluation(cohort.name, scores.result, report_dir, len(cohort.dataset.excluded))
