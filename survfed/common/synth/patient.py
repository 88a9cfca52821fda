"""Generate one synthetic patient: anatomy, nodules, outcome, studies, DICOM and truth files.

Everything a patient gets is drawn from random streams seeded by
``SeedSequence([seed, site_key(site), patient_index, stream])``, so a patient's files do not
depend on the number of workers, on the order patients are made in, or on the other sites.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from survfed.common.imaging.dicom_write import PixelEncoding, SeriesMeta, write_ct_series
from survfed.common.imaging.volume import Volume
from survfed.common.synth.anatomy import Anatomy, draw_anatomy, lung_labels
from survfed.common.synth.naming import make_uid, series_file_names, token
from survfed.common.synth.nodules import Nodule, draw_nodules, place_nodules
from survfed.common.synth.outcomes import OutcomeParams, draw_outcome
from survfed.common.synth.presets import Preset
from survfed.common.synth.scanner import SeriesPlan, acquire
from survfed.common.synth.sites import SiteProfile, site_key

__all__ = ["PatientResult", "PatientTask", "make_patient"]

# random stream numbers (the 4th SeedSequence entry)
_S_CLINICAL, _S_ANATOMY, _S_NODULES, _S_OUTCOME, _S_STUDIES, _S_NAMES, _S_FOLLOW_UP = range(7)
FOLLOW_UP_DAYS = (60, 400)
"""A follow-up scan is taken this many days after time zero (uniform), while the patient is
still followed (before ``time_days``)."""
FOLLOW_UP_GROWTH = (1.2, 1.6)
"""Malignant nodules are this much wider on the follow-up scan (uniform)."""
_S_NOISE = 100  # + series number


@dataclass(frozen=True)
class PatientTask:
    """What a worker needs to make one patient (picklable)."""

    seed: int
    site: SiteProfile
    preset: Preset
    index: int
    patient_id: str
    site_dir: Path
    truth_dir: Path
    params: OutcomeParams
    mass_fraction: float = 0.0
    follow_up_fraction: float = 0.0


@dataclass(frozen=True)
class PatientResult:
    """Rows for the site's CSV files (column -> value), and counts."""

    site: str
    index: int
    clinical: dict[str, object]
    annotations: list[dict[str, object]]
    truth: dict[str, object]
    nodules_truth: list[dict[str, object]]
    n_series: int
    n_files: int


@dataclass(frozen=True)
class _Series:
    study: int  # 0 = the study at time zero, 1 = an older study, 2 = a follow-up study
    number: int
    slice_mm: float


def _rng(task: PatientTask, stream: int) -> np.random.Generator:
    return np.random.default_rng(
        np.random.SeedSequence([task.seed, site_key(task.site.name), task.index, stream])
    )


def _lung_box(anatomy: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    ia, ib = anatomy.inner_axes
    bx, by = anatomy.body_centre
    z0, z1 = anatomy.lung_z_range
    return np.array([bx - ia, by - ib, z0]), np.array([bx + ia, by + ib, z1])


def _plan_series(task: PatientTask, rng: np.random.Generator) -> list[_Series]:
    site, preset = task.site, task.preset
    choices = site.slice_choices(preset.name)
    main = float(rng.choice(choices, p=np.asarray(site.slice_weights) / sum(site.slice_weights)))
    series = [_Series(0, 2, main)]
    if rng.random() < site.p_two_series:
        thick = 8.0 if preset.name == "tiny" else 5.0
        other = thick if main < thick else min(choices)
        if other != main:
            series.append(_Series(0, 3, other))
    if rng.random() < site.p_older_study:
        series.append(_Series(1, 2, float(rng.choice(choices))))
    return series


@dataclass(frozen=True)
class _FollowUp:
    series: _Series
    date: dt.date
    offset: tuple[float, float, float]
    growth: float
    token: str


def _follow_up(task: PatientTask, time_days: float, entry: dt.date) -> _FollowUp | None:
    """The patient's follow-up study, if it gets one (own random stream: the rest of the
    patient is the same with or without follow-up scans)."""
    if task.follow_up_fraction <= 0.0:
        return None
    rng = _rng(task, _S_FOLLOW_UP)
    wanted = rng.random() < task.follow_up_fraction
    lo, hi = FOLLOW_UP_DAYS
    if not wanted or time_days <= lo:
        return None  # the patient left follow-up before a scan was due
    days = int(rng.integers(lo, int(min(hi, time_days))))
    offset = (rng.uniform(-12, 12), rng.uniform(-8, 8), rng.uniform(-40, 40))
    thinnest = min(task.site.slice_choices(task.preset.name))
    return _FollowUp(
        series=_Series(2, 2, float(thinnest)),
        date=entry + dt.timedelta(days=days),
        offset=offset,
        growth=float(rng.uniform(*FOLLOW_UP_GROWTH)),
        token=token(rng, 10),
    )


def _write_mask(labels: Volume, path: Path) -> None:
    """Write an integer label :class:`Volume` as gzip NIfTI (deterministic bytes)."""
    sitk.WriteImage(labels.to_sitk(), str(path), True)


def make_patient(task: PatientTask) -> PatientResult:
    """Make one patient: write its DICOM series and truth masks, return its CSV rows."""
    site, preset = task.site, task.preset
    pid = task.patient_id

    rng_c = _rng(task, _S_CLINICAL)
    age = float(np.clip(np.round(rng_c.normal(site.age_mean, 8.0)), 40, 90))
    sex = str(rng_c.choice(["M", "F"]))
    cancer = bool(rng_c.random() < site.cancer_rate)
    annotated = bool(rng_c.random() >= site.p_unannotated)

    anatomy = draw_anatomy(_rng(task, _S_ANATOMY))
    rng_n = _rng(task, _S_NODULES)
    drafts = draw_nodules(rng_n, cancer, task.mass_fraction)
    lo, hi = _lung_box(anatomy)
    nodules = place_nodules(rng_n, drafts, lambda x, y, z: lung_labels(anatomy, x, y, z), lo, hi)
    malignant = [n for n in nodules if n.malignant]
    cancer = cancer and bool(malignant)  # (a malignant nodule that found no place: no cancer)
    largest = max(malignant, key=lambda n: n.diameter_mm) if malignant else None
    d_max = largest.diameter_mm if largest else 0.0
    irregularity = largest.irregularity if largest else 0.0

    outcome = draw_outcome(
        _rng(task, _S_OUTCOME),
        cancer=cancer,
        d_max_mm=d_max,
        irregularity=irregularity,
        age_years=age,
        baseline_hazard_per_year=site.baseline_hazard_per_year,
        follow_up_days=site.follow_up_days,
        accrual_days=site.accrual_days,
        loss_rate_per_year=site.loss_rate_per_year,
        params=task.params,
    )

    rng_s = _rng(task, _S_STUDIES)
    plans = _plan_series(task, rng_s)
    entry = dt.date(site.start_year, 1, 1) + dt.timedelta(
        days=int(rng_s.integers(0, max(1, int(site.accrual_days))))
    )
    older = entry - dt.timedelta(days=int(rng_s.integers(150, 900)))
    older_offset = (rng_s.uniform(-12, 12), rng_s.uniform(-8, 8), rng_s.uniform(-40, 40))
    growth = rng_s.uniform(0.55, 0.85)
    rng_names = _rng(task, _S_NAMES)
    study_tokens = [token(rng_names, 10), token(rng_names, 10)]
    dates = {0: entry, 1: older}
    offsets = {0: (0.0, 0.0, 0.0), 1: older_offset}
    scale = {1: growth}  # malignant nodules' size on that study relative to time zero
    follow_up = _follow_up(task, outcome.time_days, entry)
    if follow_up is not None:
        plans.append(follow_up.series)
        dates[2], offsets[2], scale[2] = follow_up.date, follow_up.offset, follow_up.growth
        study_tokens.append(follow_up.token)
    chosen = min((s for s in plans if s.study == 0), key=lambda s: s.slice_mm)

    encoding_rng = _rng(task, _S_STUDIES + 50)
    encoding = PixelEncoding(
        pixel_representation=site.pixel_representation,
        rescale_intercept=float(encoding_rng.choice(site.rescale_intercepts)),
        transfer_syntax_uid=site.transfer_syntax,
    )
    n_files = 0
    truth_extra: dict[str, object] = {}
    study_times: dict[int, str] = {}  # series of one study share its StudyTime
    for series in plans:
        study_date = dates[series.study].strftime("%Y%m%d")
        offset = offsets[series.study]
        scan_nodules: list[Nodule] = [
            n.scaled(scale[series.study]) if (series.study in scale and n.malignant) else n
            for n in nodules
        ]
        rng_g = _rng(task, _S_NOISE + 10 * series.study + series.number)
        pixel = max(
            rng_g.uniform(*site.pixel_spacing_mm) * preset.pixel_scale,
            (2.0 * anatomy.body_axes[0] + 24.0) / preset.matrix,
        )
        z0, z1 = anatomy.lung_z_range
        bx, by = anatomy.body_centre
        plan = SeriesPlan(
            matrix=preset.matrix,
            pixel_spacing=round(float(pixel), 4),
            slice_spacing=series.slice_mm,
            centre_xy=(
                bx + offset[0] + rng_g.uniform(-10, 10),
                by + offset[1] + rng_g.uniform(-10, 10),
            ),
            z_range=(
                z0 + offset[2] - rng_g.uniform(20, 40),
                z1 + offset[2] + rng_g.uniform(15, 35),
            ),
            feet_first=site.patient_position == "FFS",
            head_to_feet=site.head_to_feet,
            noise_sd_hu=float(rng_g.uniform(*site.noise_sd_hu)),
            psf_sigma_mm=site.psf_sigma_mm,
            outside_fov_hu=site.outside_fov_hu,
            offset=offset,
        )
        acq = acquire(
            anatomy,
            scan_nodules,
            plan,
            rng_g,
            chunk_voxels=preset.chunk_voxels,
            min_vessel_radius_mm=preset.min_vessel_radius_mm,
        )
        study_uid = make_uid(task.seed, site.name, pid, "study", series.study)
        # drawn for every series so the random stream (and every other byte) stays as it was
        drawn_time = f"{int(rng_g.integers(7, 18)):02d}{int(rng_g.integers(0, 60)):02d}00"
        series_uid = make_uid(task.seed, site.name, pid, "series", series.study, series.number)
        meta = SeriesMeta(
            patient_id=pid,
            study_date=study_date,
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            frame_of_reference_uid=make_uid(task.seed, site.name, pid, "for", series.study),
            series_number=series.number,
            study_time=study_times.setdefault(series.study, drawn_time),
            manufacturer=site.manufacturer,
            kvp=site.kvp,
            convolution_kernel=site.kernel,
            series_description=f"CHEST {series.slice_mm:g}mm {site.kernel}",
        )
        names = series_file_names(
            rng_names,
            site.layout,
            acq.image.shape[0],
            patient_id=pid,
            study_date=study_date,
            series_number=series.number,
            study_token=study_tokens[series.study],
        )
        write_ct_series(acq.image, task.site_dir / "dicom", meta, encoding, file_names=names)
        n_files += len(names)
        if series is chosen:
            _write_mask(acq.lung, task.truth_dir / f"{pid}_lung.nii.gz")
            _write_mask(acq.nodules, task.truth_dir / f"{pid}_nodules.nii.gz")
            voxel_ml = float(np.prod(acq.image.spacing)) / 1000.0
            counts = np.bincount(acq.nodules.array.ravel(), minlength=len(drafts) + 1)
            truth_extra = {
                "chosen_series_uid": series_uid,
                "study_date": study_date,
                "slice_spacing_mm": series.slice_mm,
                "pixel_spacing_mm": plan.pixel_spacing,
                "noise_sd_hu": round(plan.noise_sd_hu, 3),
                "rescale_intercept": encoding.rescale_intercept,
                "lung_volume_ml": round(float(np.count_nonzero(acq.lung.array)) * voxel_ml, 1),
                "_voxels": counts,
            }

    voxels = truth_extra.pop("_voxels")
    clinical = {
        "patient_id": pid,
        "time_days": outcome.time_days,
        "event": outcome.event,
        "cancer": int(cancer),
        "nodules_annotated": int(annotated),
        "baseline_date": entry.isoformat(),
        "age": int(age),
        "sex": sex,
    }
    annotations = (
        [
            {
                "patient_id": pid,
                "x_mm": n.centre[0],
                "y_mm": n.centre[1],
                "z_mm": n.centre[2],
                "diameter_mm": n.diameter_mm,
            }
            for n in nodules
        ]
        if annotated
        else []
    )
    truth = {
        "patient_id": pid,
        "log_hazard": outcome.log_hazard,
        "cancer": int(cancer),
        "event_time_days": outcome.event_time_days,
        "censor_time_days": outcome.censor_time_days,
        "admin_censor_days": outcome.admin_censor_days,
        "loss_censor_days": outcome.loss_censor_days,
        "time_days": outcome.time_days,
        "event": outcome.event,
        "frailty": outcome.frailty,
        "noise": outcome.noise,
        "age": int(age),
        "sex": sex,
        "n_malignant": len(malignant),
        "n_benign": len(nodules) - len(malignant),
        "max_malignant_diameter_mm": d_max,
        "irregularity": irregularity,
        "nodules_annotated": int(annotated),
        "n_studies": len({s.study for s in plans}),
        "follow_up_date": follow_up.date.strftime("%Y%m%d") if follow_up else "",
        "n_series": len(plans),
        **truth_extra,
        "dose": "low" if site.noise_sd_hu[0] >= 25.0 else "standard",
    }
    nodules_truth = [
        {
            "patient_id": pid,
            "index": n.index,
            "kind": n.kind,
            "malignant": int(n.malignant),
            "x_mm": n.centre[0],
            "y_mm": n.centre[1],
            "z_mm": n.centre[2],
            "diameter_mm": n.diameter_mm,
            "irregularity": n.irregularity,
            "hu": n.hu,
            "hu_ggo": n.hu_ggo,
            "annotated": int(annotated),
            "mask_voxels": int(voxels[n.index]) if n.index < voxels.size else 0,
        }
        for n in nodules
    ]
    return PatientResult(
        site=site.name,
        index=task.index,
        clinical=clinical,
        annotations=annotations,
        truth=truth,
        nodules_truth=nodules_truth,
        n_series=len(plans),
        n_files=n_files,
    )
