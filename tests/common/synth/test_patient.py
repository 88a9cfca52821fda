"""One patient with an older study and two series in the recent study."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import numpy as np
import pydicom
import SimpleITK as sitk

from survfed.common.synth.outcomes import OutcomeParams
from survfed.common.synth.patient import PatientTask, make_patient
from survfed.common.synth.presets import get_preset
from survfed.common.synth.sites import site_profile


def test_older_study_and_two_series_choose_the_recent_thinnest(tmp_path):
    site = replace(site_profile("iowa"), p_older_study=1.0, p_two_series=1.0, p_unannotated=0.0)
    task = PatientTask(
        seed=3,
        site=site,
        preset=get_preset("tiny"),
        index=0,
        patient_id="IOW-0001",
        site_dir=tmp_path / "iowa",
        truth_dir=tmp_path / "truth",
        params=OutcomeParams(),
    )
    task.truth_dir.mkdir()
    result = make_patient(task)
    assert result.n_series == 3 and result.truth["n_studies"] == 2
    series = defaultdict(list)
    for path in (tmp_path / "iowa" / "dicom").rglob("*"):
        if path.is_file():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            series[ds.SeriesInstanceUID].append((path, ds))
    assert len(series) == 3
    info = {
        uid: (
            items[0][1].StudyDate,
            items[0][1].StudyInstanceUID,
            items[0][1].FrameOfReferenceUID,
            float(items[0][1].SliceThickness),
            len(items),
        )
        for uid, items in series.items()
    }
    assert len({v[1] for v in info.values()}) == 2  # two studies
    assert len({v[2] for v in info.values()}) == 2  # each with its own frame of reference
    recent_date = max(v[0] for v in info.values())
    recent = {uid: v for uid, v in info.items() if v[0] == recent_date}
    assert len(recent) == 2
    chosen = min(recent, key=lambda uid: recent[uid][3])
    assert result.truth["chosen_series_uid"] == chosen
    assert result.truth["study_date"] == recent_date
    # the truth mask has the chosen series' grid
    mask = sitk.ReadImage(str(task.truth_dir / "IOW-0001_lung.nii.gz"))
    assert mask.GetSize()[2] == info[chosen][4]
    assert mask.GetSpacing()[2] == info[chosen][3]
    # InstanceNumber does not follow the shuffled file names
    items = sorted(series[chosen], key=lambda t: t[0].name)
    numbers = [int(ds.InstanceNumber) for _, ds in items]
    assert numbers != sorted(numbers)
    # the two series of the recent study carry one StudyTime, so the catalogue's rule (most
    # recent study, then thinnest) picks the series the truth was made on
    times = {items[0][1].StudyTime for uid, items in series.items() if uid in recent}
    assert len(times) == 1
    from survfed.client.catalogue import catalogue_site

    catalogue = catalogue_site(tmp_path / "iowa", progress=False)
    assert catalogue.patients["IOW-0001"].series_instance_uid == chosen
    # the same task again gives the same rows
    again = make_patient(replace(task, site_dir=tmp_path / "again"))
    assert again.truth == result.truth and again.clinical == result.clinical
    assert np.isfinite(float(result.truth["log_hazard"]))
