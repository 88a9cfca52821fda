"""Tests for the site catalogue: every bad-input case leaves the other patients usable."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid
from site_factory import (
    SHAPE,
    SPHERE_HU,
    copy_to,
    edit,
    make_site,
    series_files,
    series_meta,
    sphere_center,
    sphere_volume,
    write_csv,
    write_series,
)

from survfed.client.catalogue import NotASiteError, SiteDataError, catalogue_site
from survfed.common.imaging.dicom_write import PixelEncoding, write_enhanced_ct

PATIENTS = ("P1", "P2", "P3")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return make_site(tmp_path / "site", PATIENTS)


def _usable(catalogue) -> list[str]:
    return [p.patient_id for p in catalogue.usable_patients]


def _errors(catalogue) -> list:
    return [p for p in catalogue.problems if p.severity == "error"]


def _rel(site: Path, path: Path) -> str:
    return path.relative_to(site).as_posix()


def test_clean_site_all_usable_with_nodules_in_the_right_voxel(site: Path):
    catalogue = catalogue_site(site)
    assert catalogue.problems == []
    assert _usable(catalogue) == list(PATIENTS)
    assert catalogue.n_files == 3 * SHAPE[0]
    for index, patient in enumerate(catalogue.usable_patients):
        assert patient.clinical.time_days == 100 * (index + 1)
        assert patient.annotated and patient.nodules_mm.shape == (1, 4)
        assert len(patient.files) == SHAPE[0]
        volume = catalogue.load_volume(patient.patient_id)
        assert volume.shape == SHAPE
        assert set(np.unique(volume.array)) == {-800.0, SPHERE_HU}
        k, j, i, diameter = catalogue.nodules_voxel(patient.patient_id, volume)[0]
        centroid = np.argwhere(volume.array == SPHERE_HU).mean(axis=0)
        assert np.abs(centroid - (k, j, i)).max() < 1.0
        assert diameter == 12.0
        np.testing.assert_allclose(volume.voxel_to_patient((k, j, i)), sphere_center(index))


@pytest.mark.parametrize("direction", ["feet_first", "oblique"])
def test_nodules_map_to_voxels_for_any_orientation(tmp_path: Path, direction: str):
    from scipy.spatial.transform import Rotation

    matrix = {
        "feet_first": np.diag([-1.0, 1.0, -1.0]),
        "oblique": Rotation.from_euler("zyx", [30, 10, -20], degrees=True).as_matrix(),
    }[direction]
    site = make_site(tmp_path / "s", ("P1",))
    shutil.rmtree(site / "dicom")
    write_series(site / "dicom", "P1", sphere_volume(sphere_center(0), direction=matrix))
    catalogue = catalogue_site(site)
    volume = catalogue.load_volume("P1")
    kji = catalogue.nodules_voxel("P1", volume)[0, :3]
    centroid = np.argwhere(volume.array == SPHERE_HU).mean(axis=0)
    assert np.abs(centroid - kji).max() < 1.0


def test_compressed_series(tmp_path: Path):
    encodings = [
        PixelEncoding(transfer_syntax_uid=RLELossless),
        PixelEncoding(0, 1.0, -1024.0, 12, JPEGLSLossless),
        PixelEncoding(0, 1.0, -1024.0, 16, JPEG2000Lossless),
    ]
    site = make_site(tmp_path / "s", PATIENTS, encodings=encodings)
    catalogue = catalogue_site(site)
    assert catalogue.problems == [] and _usable(catalogue) == list(PATIENTS)
    for index, patient_id in enumerate(PATIENTS):
        volume = catalogue.load_volume(patient_id)
        np.testing.assert_array_equal(volume.array, sphere_volume(sphere_center(index)).array)
    syntaxes = {s.transfer_syntaxes for s in catalogue.series}
    assert syntaxes == {(RLELossless,), (JPEGLSLossless,), (JPEG2000Lossless,)}


def test_junk_non_dicom_file(site: Path):
    junk = site / "dicom" / "P2" / "notes.txt"
    junk.write_text("scanned on Tuesday")
    (site / "dicom" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    catalogue = catalogue_site(site)
    paths = {p.path: p.reason for p in _errors(catalogue)}
    assert paths == {
        "dicom/P2/notes.txt": "not a DICOM file",
        "dicom/.DS_Store": "not a DICOM file",
    }
    assert _usable(catalogue) == list(PATIENTS)


def test_unreadable_file(site: Path):
    (site / "dicom" / "P1" / "broken_link").symlink_to(site / "missing")
    catalogue = catalogue_site(site)
    (problem,) = _errors(catalogue)
    assert problem.path == "dicom/P1/broken_link" and "cannot read file" in problem.reason
    assert _usable(catalogue) == list(PATIENTS)


def test_truncated_file(site: Path):
    victim = series_files(site, "P2")[10]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    catalogue = catalogue_site(site)
    series_problem = next(p for p in _errors(catalogue) if p.path == _rel(site, victim))
    assert "truncated" in series_problem.reason and series_problem.patient_id == "P2"
    assert _usable(catalogue) == ["P1", "P3"]
    assert any(
        p.path == "clinical.csv:3" and "no usable CT series" in p.reason for p in catalogue.problems
    )


def test_header_cut_short_file(site: Path):
    victim = series_files(site, "P3")[10]
    victim.write_bytes(victim.read_bytes()[:400])  # cut inside the header
    catalogue = catalogue_site(site)
    file_problem = next(p for p in _errors(catalogue) if p.path == _rel(site, victim))
    assert "header truncated" in file_problem.reason
    # the series now has a hole where the file was
    assert any(p.patient_id == "P3" and "missing slice(s)" in p.reason for p in _errors(catalogue))
    assert _usable(catalogue) == ["P1", "P2"]


def test_non_ct_modality(site: Path):
    source = series_files(site, "P1")[0]
    mr = copy_to(source, site / "dicom" / "P1" / "mr" / "mr1")
    edit(
        mr,
        Modality="MR",
        SOPClassUID="1.2.840.10008.5.1.4.1.1.4",
        SeriesInstanceUID=generate_uid(entropy_srcs=["mr"]),
        SOPInstanceUID=generate_uid(entropy_srcs=["mr1"]),
    )
    shutil.copyfile(pydicom.data.get_testdata_file("rtplan.dcm"), site / "dicom" / "plan.dcm")
    catalogue = catalogue_site(site)
    reasons = {p.path: p for p in _errors(catalogue)}
    assert "modality MR, not CT" in reasons["dicom/P1/mr"].reason
    assert reasons["dicom/P1/mr"].patient_id == "P1"
    assert "modality RTPLAN, not CT" in reasons["dicom"].reason
    assert _usable(catalogue) == list(PATIENTS)


def test_missing_slice(site: Path):
    files = series_files(site, "P2")
    files[12].unlink()
    catalogue = catalogue_site(site)
    (problem,) = [p for p in _errors(catalogue) if p.patient_id == "P2" and "gap" in p.reason]
    assert problem.path == _rel(site, files[13]) and "missing slice(s)" in problem.reason
    assert files[11].name in problem.reason
    assert _usable(catalogue) == ["P1", "P3"]


def test_duplicate_slice_same_image_is_a_warning(site: Path):
    files = series_files(site, "P2")
    copy_to(files[5], site / "dicom" / "elsewhere" / "dup.dcm")
    catalogue = catalogue_site(site)
    assert _errors(catalogue) == []
    (warning,) = catalogue.problems
    assert warning.severity == "warning" and warning.patient_id == "P2"
    assert "duplicate file" in warning.reason and "dup.dcm" in warning.reason
    assert _usable(catalogue) == list(PATIENTS)
    assert catalogue.load_volume("P2").shape == SHAPE


def test_duplicate_slice_with_different_pixels_is_an_error(site: Path):
    files = series_files(site, "P2")
    clash = copy_to(files[5], site / "dicom" / "P2" / "ct" / "clash")
    ds = pydicom.dcmread(clash)
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["clash"])
    pixels = ds.pixel_array.copy()
    pixels[0, 0] += 5
    ds.PixelData = pixels.tobytes()
    ds.save_as(clash)
    catalogue = catalogue_site(site)
    (problem,) = [p for p in _errors(catalogue) if "different pixels" in p.reason]
    assert problem.patient_id == "P2" and problem.path in {_rel(site, clash), _rel(site, files[5])}
    assert _usable(catalogue) == ["P1", "P3"]


def test_uneven_spacing_is_resampled_with_a_warning(site: Path):
    files = series_files(site, "P3")
    for index in (6, 15):
        ds = pydicom.dcmread(files[index])
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        edit(files[index], ImagePositionPatient=[x, y, z + 0.7])
    catalogue = catalogue_site(site)
    (warning,) = catalogue.problems
    assert warning.severity == "warning" and warning.patient_id == "P3"
    assert "uneven slice spacing" in warning.reason and "resampled" in warning.reason
    assert _usable(catalogue) == list(PATIENTS)
    assert catalogue.load_volume("P3").shape == SHAPE


def test_mixed_orientation(site: Path):
    files = series_files(site, "P1")
    edit(files[8], ImageOrientationPatient=[0, 1, 0, 0, 0, -1])
    catalogue = catalogue_site(site)
    (problem,) = [p for p in _errors(catalogue) if "mixed orientations" in p.reason]
    assert problem.patient_id == "P1" and problem.path in {_rel(site, f) for f in files}
    assert _usable(catalogue) == ["P2", "P3"]


def test_missing_pixel_data(site: Path):
    files = series_files(site, "P1")
    edit(files[3], PixelData=None)
    catalogue = catalogue_site(site)
    (problem,) = [p for p in _errors(catalogue) if "no pixel data" in p.reason]
    assert problem.path == _rel(site, files[3]) and problem.patient_id == "P1"
    assert _usable(catalogue) == ["P2", "P3"]


def test_series_without_clinical_row(site: Path):
    write_series(site / "dicom", "P9", sphere_volume(sphere_center(9)))
    catalogue = catalogue_site(site)
    (problem,) = _errors(catalogue)
    assert problem.patient_id == "P9" and problem.path == "dicom/P9/ct"
    assert "no row in clinical.csv" in problem.reason
    assert _usable(catalogue) == list(PATIENTS)


def test_clinical_row_without_images(site: Path):
    with open(site / "clinical.csv", "a") as handle:
        handle.write("P7,40,1,0,70\n")
    catalogue = catalogue_site(site)
    (problem,) = _errors(catalogue)
    assert problem.patient_id == "P7" and problem.path == "clinical.csv:5"
    assert "no CT images found" in problem.reason
    assert _usable(catalogue) == list(PATIENTS)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("P2,-5,1,0,60", "negative"),
        ("P2,,1,0,60", "time_days is empty"),
        ("P2,NaN,1,0,60", "NaN"),
        ("P2,soon,1,0,60", "not a number"),
        ("P2,50,3,0,60", "event '3' is not 0 or 1"),
        ("P2,50,1,x,60", "cancer 'x'"),
    ],
)
def test_clinical_defects_exclude_only_that_patient(site: Path, row: str, reason: str):
    lines = (site / "clinical.csv").read_text().splitlines()
    lines[2] = row  # P2's row, line 3
    (site / "clinical.csv").write_text("\n".join(lines) + "\n")
    catalogue = catalogue_site(site)
    row_problem = next(p for p in _errors(catalogue) if p.path == "clinical.csv:3")
    assert reason in row_problem.reason
    images_problem = next(p for p in _errors(catalogue) if p.path == "dicom/P2/ct")
    assert "clinical.csv row was rejected" in images_problem.reason
    assert _usable(catalogue) == ["P1", "P3"]


def test_duplicate_patient_ids_in_clinical(site: Path):
    with open(site / "clinical.csv", "a") as handle:
        handle.write("P3,999,0,0,50\n")
    catalogue = catalogue_site(site)
    paths = sorted(p.path for p in _errors(catalogue) if "duplicate patient_id" in p.reason)
    assert paths == ["clinical.csv:4", "clinical.csv:5"]
    assert _usable(catalogue) == ["P1", "P2"]


def test_clinical_missing_columns_makes_no_patient_usable(site: Path):
    write_csv(site / "clinical.csv", ["patient_id", "days"], [["P1", 3]])
    catalogue = catalogue_site(site)
    assert "missing required column(s): time_days, event" in catalogue.problems[0].reason
    assert _usable(catalogue) == []


def test_newest_study_then_thinnest_series_is_chosen(site: Path):
    dicom = site / "dicom"
    center = sphere_center(0)
    # P1: an older thin series (not chosen) and, in a newer study, a thick and a thin one
    write_series(
        dicom,
        "P1",
        sphere_volume(center, spacing=(1.0, 1.25, 1.25)),
        tag="old",
        study_date="20190101",
    )
    write_series(
        dicom,
        "P1",
        sphere_volume(center, spacing=(5.0, 1.25, 1.25)),
        tag="new_thick",
        study_date="20230101",
    )
    write_series(
        dicom,
        "P1",
        sphere_volume(center, spacing=(2.0, 1.25, 1.25)),
        tag="new_thin",
        study_date="20230101",
    )
    catalogue = catalogue_site(site)
    # clinical.csv does not say which scan is at time zero: the choice is warned about
    (warning,) = catalogue.problems
    assert (warning.patient_id, warning.path, warning.severity) == (
        "P1",
        "dicom/P1/new_thin",
        "warning",
    )
    assert "CT studies of several days (2019-01-01, 2020-01-01, 2023-01-01)" in warning.reason
    assert "the newest, 2023-01-01, is used, which may be a follow-up" in warning.reason
    assert "give baseline_date or series_uid in clinical.csv" in warning.reason
    p1 = catalogue.patients["P1"]
    assert p1.plan.spacing[0] == pytest.approx(2.0)
    reasons = sorted(reason for _, reason in p1.other_series)
    assert reasons[0].startswith("not chosen: older study")
    assert sum("thicker slices" in r for r in reasons) == 1
    assert len(p1.other_series) == 3


def _add_column(site: Path, name: str, values: dict[str, str]) -> None:
    """Append a column to the site's clinical.csv (empty for patients not in ``values``)."""
    path = site / "clinical.csv"
    header, *rows = path.read_text().splitlines()
    rows = [f"{row},{values.get(row.split(',')[0], '')}" for row in rows]
    path.write_text("\n".join([f"{header},{name}", *rows]) + "\n")


def _three_studies(site: Path) -> dict[str, str]:
    """P1 scanned before (2019), at (2020, make_site's series) and after (2021) time zero;
    the follow-up is the thinnest. Returns the series UIDs by study year."""
    dicom, center = site / "dicom", sphere_center(0)
    for tag, day, slices in (("prior", "20190101", 2.0), ("follow_up", "20210601", 1.0)):
        write_series(
            dicom,
            "P1",
            sphere_volume(center, spacing=(slices, 1.25, 1.25)),
            tag=tag,
            study_date=day,
        )
    return {
        year: series_meta("P1", tag).series_instance_uid
        for year, tag in (("2019", "prior"), ("2020", "ct"), ("2021", "follow_up"))
    }


def test_baseline_date_takes_the_newest_study_up_to_time_zero(site: Path):
    """A follow-up scan after time zero (newest and thinnest) is not the baseline scan."""
    uids = _three_studies(site)
    _add_column(site, "baseline_date", {"P1": "2020-03-15", "P2": "20191231", "P3": "2020-01-01"})
    catalogue = catalogue_site(site)
    p1 = catalogue.patients["P1"]
    assert p1.series_instance_uid == uids["2020"]
    assert dict(p1.other_series) == {
        uids["2019"]: "not chosen: older study",
        uids["2021"]: "not chosen: study of 2021-06-01 is after baseline_date 2020-03-15",
    }
    # P2's only CT is from the day after its baseline: not used, and why is said on its row
    (error,) = catalogue.problems
    assert (error.patient_id, error.path, error.severity) == ("P2", "clinical.csv:3", "error")
    assert error.reason.startswith(
        "no CT study on or before baseline_date 2019-12-31 (studies found: 2020-01-01)"
    )
    assert _usable(catalogue) == ["P1", "P3"]  # P3: a study on the baseline day qualifies
    summary = {s.series_instance_uid: s.status for s in catalogue.series}
    assert summary[uids["2020"]] == "chosen"


def test_series_uid_names_the_scan(site: Path):
    uids = _three_studies(site)
    p3_uid = series_meta("P3", "ct").series_instance_uid
    _add_column(site, "series_uid", {"P1": uids["2019"], "P2": uids["2021"], "P3": "1.2.3.4"})
    catalogue = catalogue_site(site)
    p1 = catalogue.patients["P1"]
    assert p1.series_instance_uid == uids["2019"]
    assert p1.plan.spacing[0] == pytest.approx(2.0)
    assert {reason for _, reason in p1.other_series} == {
        f"not chosen: clinical.csv names series {uids['2019']}"
    }
    errors = {p.patient_id: p for p in catalogue.problems}
    assert set(errors) == {"P2", "P3"} and all(p.severity == "error" for p in errors.values())
    assert errors["P2"].path == "clinical.csv:3"
    assert errors["P2"].reason == (
        f"series_uid {uids['2021']} is not one of this patient's CT series (it is a CT series "
        f"of PatientID P1); its CT series: {series_meta('P2', 'ct').series_instance_uid} "
        "(2020-01-01)"
    )
    assert errors["P3"].reason == (
        "series_uid 1.2.3.4 is not one of this patient's CT series (no series with that UID "
        f"was found under dicom/); its CT series: {p3_uid} (2020-01-01)"
    )
    assert _usable(catalogue) == ["P1"]


def test_a_named_series_that_is_unusable_is_not_replaced(site: Path):
    """The user said which scan; a broken one is reported, not swapped for another."""
    uids = _three_studies(site)
    series_files(site, "P1", "prior")[5].unlink()
    _add_column(site, "series_uid", {"P1": uids["2019"]})
    catalogue = catalogue_site(site)
    errors = _errors(catalogue)
    assert [p.patient_id for p in errors] == ["P1", "P1"]
    assert "missing slice(s)" in errors[0].reason
    assert errors[0].reason.endswith(
        "clinical.csv's series_uid names this series, so no other is used"
    )
    assert errors[1].path == "clinical.csv:2"
    assert _usable(catalogue) == ["P2", "P3"]


def _retype(paths: list[Path], image_type: list[str]) -> None:
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.ImageType = image_type
        ds.save_as(path)


CORONAL = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # slices along y


def test_original_axial_images_beat_thinner_projections_and_reformats(site: Path):
    """A study as PACS exports it: the acquisition (2.5 mm), a sliding MIP and a coronal
    reformat with thinner spacing. The MIP is not anatomy slice by slice and the reformat is
    derived from the acquisition: the acquisition is used, whatever the spacing."""
    dicom, center = site / "dicom", sphere_center(0)
    for patient in ("P1", "P2"):
        shutil.rmtree(dicom / patient)
    write_series(dicom, "P1", sphere_volume(center, spacing=(2.5, 1.25, 1.25)), tag="axial")
    mip = write_series(dicom, "P1", sphere_volume(center, spacing=(1.0, 1.25, 1.25)), tag="mip")
    _retype(mip, ["DERIVED", "SECONDARY", "AXIAL", "MIP"])
    coronal = sphere_volume(center, spacing=(1.0, 1.25, 1.25), direction=CORONAL)
    _retype(write_series(dicom, "P1", coronal, tag="coronal"), ["DERIVED", "SECONDARY", "MPR"])
    # P2 has only a MIP series: it is used, with a warning
    only = write_series(dicom, "P2", sphere_volume(sphere_center(1)), tag="mip")
    _retype(only, ["DERIVED", "SECONDARY", "AXIAL", "MIP"])
    catalogue = catalogue_site(site)
    p1 = catalogue.patients["P1"]
    assert p1.plan.spacing[0] == pytest.approx(2.5)
    assert sorted(reason for _, reason in p1.other_series) == [
        "not chosen: not axial (a reformat)",
        "not chosen: projection images (MIP/MinIP)",
    ]
    assert catalogue.patients["P2"].usable
    (warning,) = [p for p in catalogue.problems if p.severity == "warning"]
    assert warning.patient_id == "P2" and "projection images" in warning.reason
    assert not _errors(catalogue)


def test_an_enhanced_ct_file_is_a_series(site: Path, tmp_path: Path):
    """P1's series as one Enhanced CT (multi-frame) file: usable, the same volume as its
    slices in separate files, also when the headers come from the header cache."""
    volume = sphere_volume(sphere_center(0), spacing=(2.5, 1.25, 1.25))
    shutil.rmtree(site / "dicom" / "P1")
    write_series(site / "dicom", "P1", volume, tag="files", study_date="20190101")
    write_enhanced_ct(
        volume,
        site / "dicom" / "P1" / "enhanced" / "IM0001",
        series_meta("P1", "enhanced", study_date="20230101"),
        PixelEncoding(transfer_syntax_uid=RLELossless),
    )
    cache = tmp_path / "headers.sqlite"
    for _ in range(2):  # the second run reads the header cache
        catalogue = catalogue_site(site, header_cache=cache)
        p1 = catalogue.patients["P1"]
        assert p1.usable and not _errors(catalogue)
        assert [f.name for f in p1.files] == ["IM0001"]  # the newer study: one file
        assert p1.plan.n_slices == volume.shape[0]
        np.testing.assert_array_equal(catalogue.load_volume("P1").array, volume.array)


def test_falls_back_when_the_preferred_series_is_unusable(site: Path):
    dicom = site / "dicom"
    newer = write_series(
        dicom,
        "P1",
        sphere_volume(sphere_center(0)),
        tag="newer",
        study_date="20240101",
        shuffle_seed=None,
    )
    newer[7].unlink()
    catalogue = catalogue_site(site)
    (problem,) = _errors(catalogue)
    assert problem.patient_id == "P1" and "missing slice(s)" in problem.reason
    assert "using series" in problem.reason
    assert _usable(catalogue) == list(PATIENTS)
    assert catalogue.patients["P1"].plan.headers[0].study_date == "20200101"


def test_a_broken_older_series_is_reported_but_not_fatal(site: Path):
    dicom = site / "dicom"
    older = write_series(
        dicom,
        "P1",
        sphere_volume(sphere_center(0)),
        tag="older",
        study_date="20150101",
        shuffle_seed=None,
    )
    older[3].write_bytes(older[3].read_bytes()[:1500])  # truncated file in the unused series
    catalogue = catalogue_site(site)
    assert _errors(catalogue) == []
    (warning,) = [p for p in catalogue.problems if p.severity == "warning"]
    assert warning.patient_id == "P1" and "truncated" in warning.reason
    assert "not needed" in warning.reason and warning.path.endswith(older[3].name)
    assert _usable(catalogue) == list(PATIENTS)
    assert catalogue.patients["P1"].plan.headers[0].study_date == "20200101"


def test_decode_failure_becomes_a_problem(tmp_path: Path):
    site = make_site(
        tmp_path / "s", PATIENTS, encodings=[PixelEncoding(transfer_syntax_uid=JPEGLSLossless)]
    )
    victim = series_files(site, "P2")[4]
    data = bytearray(victim.read_bytes())
    start = data.find(b"\xff\xd8\xff\xf7")
    data[start : start + 16] = b"\0" * 16
    victim.write_bytes(bytes(data))
    catalogue = catalogue_site(site)
    assert _usable(catalogue) == list(PATIENTS)
    with pytest.raises(SiteDataError, match=r"patient 'P2': dicom/P2/ct/"):
        catalogue.load_volume("P2")
    assert _usable(catalogue) == ["P1", "P3"]
    assert catalogue.problems[-1].path == _rel(site, victim)
    assert catalogue.load_volume("P1").shape == SHAPE


def test_annotations(site: Path):
    lines = (site / "clinical.csv").read_text().splitlines()
    lines[0] += ",nodules_annotated"
    lines[1:] = [line + flag for line, flag in zip(lines[1:], [",1", ",0", ",1"], strict=True)]
    (site / "clinical.csv").write_text("\n".join(lines) + "\n")
    nodules = (site / "nodules.csv").read_text().splitlines()
    (site / "nodules.csv").write_text("\n".join(nodules[:3]) + "\nP8,1,2,3,4\n")  # no P3 row
    catalogue = catalogue_site(site)
    patients = catalogue.patients
    assert patients["P1"].annotated and len(patients["P1"].nodules_mm) == 1
    assert not patients["P2"].annotated and len(patients["P2"].nodules_mm) == 0
    assert patients["P3"].annotated and len(patients["P3"].nodules_mm) == 0  # annotated, none
    (warning,) = catalogue.problems
    assert warning.patient_id == "P8" and warning.severity == "warning"


def test_not_a_site(tmp_path: Path):
    with pytest.raises(NotASiteError, match=r"neither clinical\.csv nor a dicom/ folder"):
        catalogue_site(tmp_path)
    with pytest.raises(NotASiteError, match="no such folder"):
        catalogue_site(tmp_path / "absent")


def test_site_without_dicom_folder(tmp_path: Path):
    site = make_site(tmp_path / "s", ("P1",))
    shutil.rmtree(site / "dicom")
    catalogue = catalogue_site(site)
    assert _usable(catalogue) == []
    reasons = [p.reason for p in _errors(catalogue)]
    assert "dicom/ folder not found; no images" in reasons
    assert "no CT images found for this patient" in reasons


def test_series_exported_twice_gives_one_warning(site: Path):
    shutil.copytree(site / "dicom" / "P2", site / "dicom" / "export2" / "P2")
    catalogue = catalogue_site(site, progress=True)
    (warning,) = catalogue.problems
    assert warning.severity == "warning" and warning.patient_id == "P2"
    assert warning.reason.startswith(f"{SHAPE[0]} duplicate files of the same images")
    assert _usable(catalogue) == list(PATIENTS)


def test_scan_choice_notes(site: Path):
    """P1 names a follow-up series and a baseline_date before it: the series named is used,
    with a warning. P2's only series has no StudyDate: used, since nothing dated qualifies,
    with a warning that it could not be checked."""
    uids = _three_studies(site)
    for path in series_files(site, "P2"):
        edit(path, StudyDate="")
    _add_column(site, "baseline_date", {"P1": "2020-03-15", "P2": "2020-03-15"})
    _add_column(site, "series_uid", {"P1": uids["2021"]})
    catalogue = catalogue_site(site)
    assert _usable(catalogue) == list(PATIENTS)
    assert catalogue.patients["P1"].series_instance_uid == uids["2021"]
    notes = {p.patient_id: p for p in catalogue.problems}
    assert set(notes) == {"P1", "P2"} and {p.severity for p in notes.values()} == {"warning"}
    assert notes["P1"].reason.startswith(
        "the series named by series_uid is from a study of 2021-06-01, after baseline_date "
        "2020-03-15"
    )
    assert notes["P2"].reason.startswith(
        "StudyDate is missing, so the series cannot be checked against baseline_date 2020-03-15"
    )


def test_an_unusable_baseline_scan_is_not_replaced_by_a_follow_up(site: Path):
    """P1's only study up to its baseline_date is broken: the follow-up is not used instead."""
    uids = _three_studies(site)
    shutil.rmtree(site / "dicom" / "P1" / "prior")
    series_files(site, "P1")[4].unlink()  # make_site's 2020 series
    _add_column(site, "baseline_date", {"P1": "2020-01-01"})
    catalogue = catalogue_site(site)
    errors = _errors(catalogue)
    assert [(p.patient_id, p.path) for p in errors][1] == ("P1", "clinical.csv:2")
    assert errors[0].reason.startswith(f"CT series {uids['2020']} unusable: missing slice(s)")
    assert errors[0].reason.endswith(
        "; no other CT series qualifies (study of 2021-06-01 is after baseline_date 2020-01-01)"
    )
    assert len(errors) == 2 and _usable(catalogue) == ["P2", "P3"]
