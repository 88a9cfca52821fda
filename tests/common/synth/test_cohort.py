"""End to end: a small 3-site cohort written as DICOM + truth, read back with pydicom/SimpleITK."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import hashlib
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, RLELossless

from survfed.common.synth import make_cohort, parse_sites
from survfed.common.synth.sites import site_profile

SITES = "iowa:3,maastro:3,stanford:3"


def _tree_hash(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort") / "out"
    summary = make_cohort(out, parse_sites(SITES), seed=11, workers=2, progress=False)
    return out, summary


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _headers(site_dir: Path) -> list[tuple[Path, pydicom.Dataset]]:
    return [
        (p, pydicom.dcmread(p, stop_before_pixels=True))
        for p in sorted((site_dir / "dicom").rglob("*"))
        if p.is_file()
    ]


def test_layout_and_summary(cohort):
    out, summary = cohort
    for site in ("iowa", "maastro", "stanford"):
        clinical = _read_csv(out / site / "clinical.csv")
        assert (
            (out / site / "clinical.csv")
            .read_text()
            .startswith(
                "patient_id,time_days,event,cancer,nodules_annotated,baseline_date,age,sex\n"
            )
        )
        assert len(clinical) == 3
        for row in clinical:
            assert re.fullmatch(r"[A-Z]{3}-\d{4}", row["patient_id"])
            assert int(row["time_days"]) >= 1 and row["event"] in ("0", "1")
        assert (
            (out / site / "nodules.csv")
            .read_text()
            .startswith("patient_id,x_mm,y_mm,z_mm,diameter_mm\n")
        )
        truth = _read_csv(out / "_truth" / site / "truth.csv")
        assert [r["patient_id"] for r in truth] == [r["patient_id"] for r in clinical]
        for t, c in zip(truth, clinical, strict=True):
            assert (t["time_days"], t["event"], t["cancer"]) == (
                c["time_days"],
                c["event"],
                c["cancer"],
            )
            assert 680.0 <= float(t["lung_volume_ml"]) <= 7500.0
            assert (out / "_truth" / site / f"{t['patient_id']}_lung.nii.gz").is_file()
        s = summary.sites[site]
        assert s.n_patients == 3 and s.n_files == len(_headers(out / site))
    meta = json.loads((out / "_truth" / "cohort.json").read_text())
    assert meta["seed"] == 11 and meta["preset"] == "tiny"
    assert set(meta["sites"]) == {"iowa", "maastro", "stanford"}
    assert meta["outcome_params"]["sigma_eps"] == pytest.approx(0.9)
    assert summary.n_patients == 9 and summary.bytes > 0


def test_sites_differ_in_encoding_and_geometry(cohort):
    out, _ = cohort
    expected = {
        "iowa": (ExplicitVRLittleEndian, 1),
        "maastro": (RLELossless, 0),
        "stanford": (JPEGLSLossless, 1),
    }
    slice_spacings = {}
    for site, (syntax, signed) in expected.items():
        headers = _headers(out / site)
        assert {h.file_meta.TransferSyntaxUID for _, h in headers} == {syntax}
        assert {int(h.PixelRepresentation) for _, h in headers} == {signed}
        assert {h.Modality for _, h in headers} == {"CT"}
        slice_spacings[site] = {float(h.SliceThickness) for _, h in headers}
        iop = {tuple(float(v) for v in h.ImageOrientationPatient) for _, h in headers}
        if site == "stanford":
            assert iop == {(-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)}  # feet first
        else:
            assert iop == {(1.0, 0.0, 0.0, 0.0, 1.0, 0.0)}
    assert min(slice_spacings["maastro"]) > max(slice_spacings["stanford"])
    flat = [p for p, _ in _headers(out / "maastro")]
    assert {p.parent for p in flat} == {out / "maastro" / "dicom"}
    nested = [p for p, _ in _headers(out / "stanford")]
    assert all(len(p.relative_to(out / "stanford" / "dicom").parts) == 4 for p in nested)


def _chosen_series_files(site_dir: Path, series_uid: str) -> list[str]:
    headers = [(p, h) for p, h in _headers(site_dir) if h.SeriesInstanceUID == series_uid]
    folder = headers[0][0].parent
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid))


def test_truth_masks_match_the_chosen_series_and_annotations(cohort):
    out, _ = cohort
    n_checked = 0
    for site in ("iowa", "maastro", "stanford"):
        truth = {r["patient_id"]: r for r in _read_csv(out / "_truth" / site / "truth.csv")}
        annotations = defaultdict(list)
        for row in _read_csv(out / site / "nodules.csv"):
            annotations[row["patient_id"]].append(row)
        nodules_truth = defaultdict(list)
        for row in _read_csv(out / "_truth" / site / "nodules_truth.csv"):
            nodules_truth[row["patient_id"]].append(row)
        for pid, row in truth.items():
            files = _chosen_series_files(out / site, row["chosen_series_uid"])
            image = sitk.ReadImage(files)
            lung = sitk.ReadImage(str(out / "_truth" / site / f"{pid}_lung.nii.gz"))
            nod = sitk.ReadImage(str(out / "_truth" / site / f"{pid}_nodules.nii.gz"))
            for mask in (lung, nod):
                assert mask.GetSize() == image.GetSize()
                np.testing.assert_allclose(mask.GetSpacing(), image.GetSpacing(), atol=1e-3)
                np.testing.assert_allclose(mask.GetOrigin(), image.GetOrigin(), atol=1e-3)
                np.testing.assert_allclose(mask.GetDirection(), image.GetDirection(), atol=1e-6)
            assert lung.GetPixelID() == sitk.sitkUInt8 and nod.GetPixelID() == sitk.sitkUInt16
            hu = sitk.GetArrayFromImage(image)
            lung_a = sitk.GetArrayFromImage(lung)
            nod_a = sitk.GetArrayFromImage(nod)
            assert set(np.unique(lung_a)) == {0, 1, 2}
            # DICOM pixels -> HU round trip: lungs are lungs, the body is not
            assert -900.0 <= hu[lung_a > 0].mean() <= -720.0
            assert (hu[lung_a > 0] < -500).mean() > 0.85
            assert (hu[lung_a == 0] > -500).mean() > 0.15  # body soft tissue and bone
            by_centre = {
                (round(float(n["x_mm"]), 2), round(float(n["y_mm"]), 2)): n
                for n in nodules_truth[pid]
            }
            if row["nodules_annotated"] == "1":
                assert len(annotations[pid]) == len(nodules_truth[pid])
            else:
                assert annotations[pid] == []
            for n in nodules_truth[pid]:
                xyz = tuple(float(n[c]) for c in ("x_mm", "y_mm", "z_mm"))
                index = lung.TransformPhysicalPointToIndex(xyz)
                assert nod_a[index[::-1]] == int(n["index"])  # centre lies in its own label
                if n["kind"] == "calcified":
                    assert hu[index[::-1]] > -500.0  # bright even when partial-volumed
            for a in annotations[pid]:
                key = (round(float(a["x_mm"]), 2), round(float(a["y_mm"]), 2))
                assert key in by_centre
                assert float(a["diameter_mm"]) == pytest.approx(
                    float(by_centre[key]["diameter_mm"]), abs=1e-3
                )
            n_checked += 1
    assert n_checked == 9


def test_same_seed_same_bytes_other_seed_differs(cohort, tmp_path):
    out, _ = cohort
    again = tmp_path / "again"
    make_cohort(again, parse_sites(SITES), seed=11, workers=1, progress=False)
    first, second = _tree_hash(out), _tree_hash(again)
    assert first.keys() == second.keys()
    assert first == second
    for name in first:
        if name.endswith(".nii.gz"):
            header = (out / name).read_bytes()[:10]
            assert header[:2] == b"\x1f\x8b" and header[4:8] == b"\x00\x00\x00\x00"  # mtime 0
            with gzip.open(out / name) as handle:
                assert len(handle.read(348)) == 348
    other = tmp_path / "other"
    make_cohort(other, parse_sites("iowa:2"), seed=12, workers=1, progress=False)
    other_hashes = _tree_hash(other)
    dicom_hashes = {h for name, h in other_hashes.items() if "/dicom/" in f"/{name}"}
    assert len(dicom_hashes) > 50
    assert not dicom_hashes & set(first.values())  # no DICOM file in common
    a = (out / "iowa" / "clinical.csv").read_text().splitlines()[1:3]
    b = (other / "iowa" / "clinical.csv").read_text().splitlines()[1:]
    assert a != b


def test_refuses_non_empty_out_unless_overwrite(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        make_cohort(tmp_path, {"iowa": 1}, progress=False)
    make_cohort(tmp_path, {"iowa": 1, "zz": 1}, progress=False, overwrite=True, workers=1)
    assert (tmp_path / "zz" / "clinical.csv").is_file()
    summary = make_cohort(tmp_path, {"iowa": 1}, progress=False, overwrite=True, workers=1)
    assert summary.sites["iowa"].n_patients == 1
    assert (tmp_path / "keep.txt").exists()  # not ours: kept
    assert not (tmp_path / "zz").exists()  # the previous cohort's site: removed
    assert sorted(p.name for p in (tmp_path / "_truth").iterdir()) == ["cohort.json", "iowa"]
    with pytest.raises(ValueError, match="preset"):
        make_cohort(tmp_path / "new", {"iowa": 1}, preset="huge")
    with pytest.raises(ValueError, match="patient count of site 'iowa'"):
        make_cohort(tmp_path / "new", {"iowa": 0})
    with pytest.raises(ValueError, match="masses must be a share between 0 and 1"):
        make_cohort(tmp_path / "new", {"iowa": 1}, masses=1.5)
    with pytest.raises(ValueError, match="follow_up_scans must be a share between 0 and 1"):
        make_cohort(tmp_path / "new", {"iowa": 1}, follow_up_scans=-0.5)
    assert not (tmp_path / "new").exists()


def test_masses_option(cohort, tmp_path):
    """``masses=1``: every malignant lesion annotated at 30-60 mm, the share recorded; the same
    seed without the option writes the cohort of the module fixture, byte for byte."""
    out = tmp_path / "masses"
    summary = make_cohort(out, {"iowa": 6}, seed=11, progress=False, workers=1, masses=1.0)
    truth = _read_csv(out / "_truth" / "iowa" / "nodules_truth.csv")
    malignant = [float(r["diameter_mm"]) for r in truth if r["malignant"] in ("1", "True")]
    assert summary.sites["iowa"].n_cancer >= 1 and malignant
    assert all(30.0 <= d <= 60.0 for d in malignant)
    annotated = {float(r["diameter_mm"]) for r in _read_csv(out / "iowa" / "nodules.csv")}
    assert any(d >= 30.0 for d in annotated)
    assert json.loads((out / "_truth" / "cohort.json").read_text())["masses"] == 1.0
    assert summary.to_dict()["masses"] == 1.0
    assert summary.format_text().endswith("drawn as 30-60 mm masses: 100%")
    plain = tmp_path / "plain"
    make_cohort(plain, {"iowa": 3}, seed=11, progress=False, workers=1, masses=0.0)
    fixture_iowa = _tree_hash(cohort[0] / "iowa")
    assert _tree_hash(plain / "iowa") == fixture_iowa


def test_follow_up_scans_option(cohort, tmp_path):
    """``follow_up_scans=1``: every patient still followed 60 days after ``baseline_date`` gets
    a later study with the site's thinnest slices and grown malignant nodules; everything of
    the study at time zero (the truth's series) is as without the option."""
    out = tmp_path / "follow_up"
    summary = make_cohort(out, {"iowa": 6}, seed=11, progress=False, workers=1, follow_up_scans=1.0)
    clinical = {r["patient_id"]: r for r in _read_csv(out / "iowa" / "clinical.csv")}
    truth = {r["patient_id"]: r for r in _read_csv(out / "_truth" / "iowa" / "truth.csv")}
    followed = [pid for pid, row in truth.items() if row["follow_up_date"]]
    assert len(followed) == 5  # IOW-4293 left follow-up after 48 days: no follow-up scan
    thinnest = min(site_profile("iowa").slice_choices("tiny"))
    by_study = defaultdict(set)
    for _, header in _headers(out / "iowa"):
        by_study[(header.PatientID, header.StudyDate)].add(float(header.SliceThickness))
    for pid, row in truth.items():
        baseline = dt.date.fromisoformat(clinical[pid]["baseline_date"])
        assert row["study_date"] == baseline.strftime("%Y%m%d")  # the truth's scan
        days = int(clinical[pid]["time_days"])
        if pid not in followed:
            assert days <= 60 and row["n_studies"] in ("1", "2")
            continue
        follow_up = dt.datetime.strptime(row["follow_up_date"], "%Y%m%d").date()
        assert 60 <= (follow_up - baseline).days < min(400, days)
        assert by_study[(pid, row["follow_up_date"])] == {thinnest}
    # the scans at time zero and the clinical rows are those written without the option
    plain = tmp_path / "plain"
    make_cohort(plain, {"iowa": 6}, seed=11, progress=False, workers=1)
    assert (plain / "iowa" / "clinical.csv").read_bytes() == (
        out / "iowa" / "clinical.csv"
    ).read_bytes()
    for pid in truth:
        lung = f"_truth/iowa/{pid}_lung.nii.gz"
        assert (plain / lung).read_bytes() == (out / lung).read_bytes()
    assert json.loads((out / "_truth" / "cohort.json").read_text())["follow_up_scans"] == 1.0
    assert "follow-up CT after baseline_date: up to 100%" in summary.format_text()


def test_survfed_reader_reads_what_the_generator_wrote(cohort):
    """Round trip through survfed's own DICOM reader: same grid as the truth masks, same HU."""
    read_series = pytest.importorskip("survfed.common.imaging.dicom_read").read_series
    out, _ = cohort
    for site in ("iowa", "maastro", "stanford"):
        headers = _headers(out / site)
        for row in _read_csv(out / "_truth" / site / "truth.csv"):
            paths = [p for p, h in headers if h.SeriesInstanceUID == row["chosen_series_uid"]]
            volume = read_series(paths)
            lung = sitk.ReadImage(str(out / "_truth" / site / f"{row['patient_id']}_lung.nii.gz"))
            assert volume.shape == sitk.GetArrayFromImage(lung).shape
            np.testing.assert_allclose(volume.origin, lung.GetOrigin(), atol=1e-3)
            np.testing.assert_allclose(volume.direction.ravel(), lung.GetDirection(), atol=1e-6)
            np.testing.assert_allclose(volume.spacing[::-1], lung.GetSpacing(), atol=1e-3)
            itk = sitk.GetArrayFromImage(
                sitk.ReadImage(_chosen_series_files(out / site, row["chosen_series_uid"]))
            )
            np.testing.assert_array_equal(volume.array, itk.astype(np.float32))
