"""Central evaluation of the global model on held-out cohorts, loaded once per run.

The coordinator holds the held-out cohorts (site folders it may read); after every round the
global weights are scored on each of them with the survival issue's evaluation
(:func:`~survfed.common.survival.evaluation.evaluate_predictions`: whole-cohort metrics with
bootstrap intervals, plus the oracle C-index when the cohort's ``_truth/`` is present).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from survfed.client.crop_cache import ANNOTATIONS, CropDataset
from survfed.client.site_data import load_site_data
from survfed.common.config import TrainConfig, resolve_device
from survfed.common.survival.baseline import BaselineHazard
from survfed.common.survival.evaluation import EvaluationResult, evaluate_predictions
from survfed.common.survival.model import CropSurvivalModel, ModelConfig
from survfed.common.survival.plots import write_report
from survfed.common.survival.train import predict_outputs

__all__ = [
    "HeldOutCohort",
    "evaluate_state",
    "load_held_out",
    "read_truth_log_hazard",
    "score_cohort",
    "summary_row",
    "write_cohort_report",
]


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


@dataclass(frozen=True)
class HeldOutCohort:
    """One held-out cohort: its name, crops, and true log-hazards when known.

    Attributes:
        name: the cohort (site folder) name.
        dataset: its crop dataset (in memory).
        oracle: ``(n,)`` true log-hazards from ``_truth/`` or ``None``.
    """

    name: str
    dataset: CropDataset
    oracle: np.ndarray | None


def load_held_out(
    cohort_dirs: Sequence[str | Path],
    cache_dir: str | Path,
    model_config: ModelConfig,
    *,
    progress: bool = False,
    source: str = ANNOTATIONS,
    centres_by_cohort: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> list[HeldOutCohort]:
    """Catalogue and crop each held-out cohort once (crops cached under ``cache_dir``).

    ``source`` / ``centres_by_cohort``: crops at a detector's proposals instead of the
    annotations (cohort name → patient → centres; see
    :func:`survfed.client.crop_cache.build_crop_cache`).
    """
    cohorts = []
    for d in cohort_dirs:
        path = Path(d)
        if not path.is_dir():
            raise FileNotFoundError(f"held-out cohort {path} is not a folder")
        centres = None if centres_by_cohort is None else centres_by_cohort[path.name]
        site = load_site_data(
            path, cache_dir, model_config, progress=progress, in_memory=True, source=source,
            centres_mm=centres,
        )  # fmt: skip
        oracle = read_truth_log_hazard(path, site.dataset.patient_ids)
        cohorts.append(HeldOutCohort(site.name, site.dataset, oracle))
    names = [c.name for c in cohorts]
    if len(set(names)) != len(names):
        raise ValueError(f"eval-cohorts must have distinct folder names, got {names}")
    return cohorts


def evaluate_state(
    state_dict: Mapping[str, torch.Tensor],
    cohorts: Sequence[HeldOutCohort],
    config: TrainConfig,
    *,
    n_bootstrap: int,
    seed: int = 0,
    baseline: BaselineHazard | None = None,
) -> dict[str, tuple[EvaluationResult, np.ndarray]]:
    """Score the weights on every cohort: name -> (metrics, predicted log-hazards ``(n,)``)."""
    device = resolve_device(config.device)
    model = config.model.build_model()
    model.load_state_dict(dict(state_dict))
    model.to(device)
    out = {}
    for cohort in cohorts:
        out[cohort.name] = score_cohort(
            model, cohort, device=device, n_bootstrap=n_bootstrap, seed=seed, baseline=baseline
        )
    return out


def score_cohort(
    model: CropSurvivalModel,
    cohort: HeldOutCohort,
    *,
    device: str,
    n_bootstrap: int,
    seed: int = 0,
    baseline: BaselineHazard | None = None,
) -> tuple[EvaluationResult, np.ndarray]:
    """Predict every patient of ``cohort`` once and compute the whole-cohort metrics.

    ``model`` must already be on ``device``. Returns the metrics and the log-hazards ``(n,)``.
    """
    ds = cohort.dataset
    g, cancer_logit = predict_outputs(model, ds, device=device, batch_size=32)
    result = evaluate_predictions(
        g,
        ds.times,
        ds.events,
        ds.cancer,
        baseline=baseline,
        oracle_log_hz=cohort.oracle,
        n_bootstrap=n_bootstrap,
        seed=seed,
        cancer_score=None if model.cancer_head == "two-task" else cancer_logit,
    )
    return result, g


def write_cohort_report(
    cohort: HeldOutCohort,
    result: EvaluationResult,
    g: np.ndarray,
    report_dir: Path,
    *,
    baseline: BaselineHazard | None,
    title: str,
) -> Path:
    """Write the report folder (JSON, markdown, plots) of one scored cohort."""
    ds = cohort.dataset
    write_report(
        result,
        g,
        ds.times,
        ds.events,
        report_dir,
        cancer=ds.cancer,
        baseline=baseline,
        title=title,
    )
    return report_dir


def summary_row(result: EvaluationResult, prefix: str = "") -> dict[str, float | None]:
    """The headline numbers of one evaluation as flat keys (for metrics.csv)."""
    d = result.to_dict()
    row: dict[str, float | None] = {}
    for key in ("c_index", "uno_c_index", "auc", "oracle_c_index"):
        value = d.get(key)
        row[prefix + key] = value if isinstance(value, int | float) else None
        ci = d.get(f"{key}_ci")
        low, high = ci if isinstance(ci, list) else (None, None)
        row[prefix + key + "_low"] = low
        row[prefix + key + "_high"] = high
    return row
