"""Central evaluation of the global model on held-out cohorts, loaded once per run.

The coordinator holds the held-out cohorts (site folders it may read); after every round the
global weights are scored on each of them with the survival issue's evaluation
(:func:`~survfed.common.survival.evaluation.evaluate_predictions`: whole-cohort metrics with
bootstrap intervals, plus the oracle C-index when the cohort's ``_truth/`` is present). The
final report of a cohort also lists each patient's prediction (:func:`write_predictions`).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from scipy.special import expit

from survfed.client.crop_cache import ANNOTATIONS, CropDataset
from survfed.client.site_data import load_site_data
from survfed.common.config import TrainConfig, resolve_device
from survfed.common.survival.baseline import BaselineHazard, survival_curves
from survfed.common.survival.evaluation import EvaluationResult, evaluate_predictions
from survfed.common.survival.model import CropSurvivalModel, ModelConfig
from survfed.common.survival.plots import risk_groups, write_report
from survfed.common.survival.train import predict_outputs

__all__ = [
    "PREDICTION_HORIZONS_DAYS",
    "CohortScores",
    "HeldOutCohort",
    "evaluate_state",
    "load_held_out",
    "read_truth_log_hazard",
    "score_cohort",
    "summary_row",
    "write_cohort_report",
    "write_predictions",
]

PREDICTION_HORIZONS_DAYS = (365, 730, 1095, 1826)
"""Horizons (days: 1, 2, 3 and 5 years) of the survival probabilities in ``predictions.csv``.
Those past the baseline hazard's last rise (the training sites' last event) are left out: the
baseline is flat from there on, which says nothing about later deaths."""

_RISK_GROUPS = ("low", "intermediate", "high")


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


class CohortScores(NamedTuple):
    """One cohort scored by one model (:func:`score_cohort`).

    Attributes:
        result: the whole-cohort metrics.
        log_hz: ``(n,)`` predicted log-hazards, in the dataset's patient order.
        cancer_probability: ``(n,)`` predicted cancer probability (the sigmoid of the log-hazard
            with the two-task head, of the case classifier's logit with the noisy-OR head).
    """

    result: EvaluationResult
    log_hz: np.ndarray
    cancer_probability: np.ndarray


def evaluate_state(
    state_dict: Mapping[str, torch.Tensor],
    cohorts: Sequence[HeldOutCohort],
    config: TrainConfig,
    *,
    n_bootstrap: int,
    seed: int = 0,
    baseline: BaselineHazard | None = None,
) -> dict[str, CohortScores]:
    """Score the weights on every cohort: name -> its :class:`CohortScores`."""
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
) -> CohortScores:
    """Predict every patient of ``cohort`` once and compute the whole-cohort metrics.

    ``model`` must already be on ``device``.
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
    return CohortScores(result, g, expit(cancer_logit))


def write_cohort_report(
    cohort: HeldOutCohort,
    scores: CohortScores,
    report_dir: Path,
    *,
    baseline: BaselineHazard | None,
    title: str,
) -> Path:
    """Write the report folder (JSON, markdown, plots, ``predictions.csv``) of one scored
    cohort."""
    ds = cohort.dataset
    write_report(
        scores.result,
        scores.log_hz,
        ds.times,
        ds.events,
        report_dir,
        cancer=ds.cancer,
        baseline=baseline,
        title=title,
    )
    write_predictions(cohort, scores, Path(report_dir) / "predictions.csv", baseline=baseline)
    return report_dir


def write_predictions(
    cohort: HeldOutCohort,
    scores: CohortScores,
    path: Path,
    *,
    baseline: BaselineHazard | None,
) -> Path:
    """One row per patient of the cohort: outcome, prediction, risk group, survival.

    Columns: ``patient_id``, ``time_days``, ``event``, ``cancer`` (empty when unknown),
    ``log_hazard``, ``risk_group`` (``low`` / ``intermediate`` / ``high``: the cohort's
    tertiles of the log-hazard, the groups of the report's Kaplan-Meier plot),
    ``cancer_probability``, ``survival_<d>d`` for each horizon of
    :data:`PREDICTION_HORIZONS_DAYS` up to the baseline hazard's last rise (only with a
    baseline; ``S(t) = exp(-H0(t) exp(log_hazard))``) and ``oracle_log_hazard`` when the
    cohort's truth is known. The file names patients: it belongs with the cohort's data, at the
    coordinator.
    """
    ds = cohort.dataset
    g = np.asarray(scores.log_hz, dtype=np.float64)
    groups = risk_groups(g, 3) if g.size else np.zeros(0, dtype=np.int64)
    labels = _RISK_GROUPS if groups.size and groups.max() == 2 else None
    horizons = []
    if baseline is not None and np.any(np.diff(baseline.cumhaz) > 0):
        last_rise = float(baseline.edges[1:][np.diff(baseline.cumhaz) > 0][-1])
        horizons = [d for d in PREDICTION_HORIZONS_DAYS if d <= last_rise]
    survival = survival_curves(baseline, g, horizons) if horizons and g.size else None
    header = ["patient_id", "time_days", "event", "cancer", "log_hazard", "risk_group"]
    header += ["cancer_probability", *(f"survival_{d}d" for d in horizons)]
    if cohort.oracle is not None:
        header.append("oracle_log_hazard")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for i, pid in enumerate(ds.patient_ids):
            cancer = float(ds.cancer[i])
            row: list[object] = [
                pid,
                f"{float(ds.times[i]):g}",
                int(ds.events[i]),
                "" if np.isnan(cancer) else int(cancer),
                f"{g[i]:.6g}",
                labels[groups[i]] if labels else str(int(groups[i]) + 1),
                f"{float(scores.cancer_probability[i]):.6g}",
            ]
            if survival is not None:
                row += [f"{float(v):.6g}" for v in survival[i]]
            if cohort.oracle is not None:
                row.append(f"{float(cohort.oracle[i]):.6g}")
            writer.writerow(row)
    return path


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
