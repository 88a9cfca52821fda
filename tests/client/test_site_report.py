"""Tests for the ``survfed inspect`` site report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom.uid import JPEGLSLossless
from site_factory import (
    SHAPE,
    make_site,
    series_files,
    series_meta,
    sphere_center,
    sphere_volume,
    write_series,
)

from survfed.client.catalogue import NotASiteError
from survfed.client.site_report import inspect_site
from survfed.common.imaging.dicom_write import PixelEncoding


def test_clean_site_summary(tmp_path: Path):
    site = make_site(tmp_path / "iowa", ("A", "B", "C", "D"))
    report = inspect_site(site)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["site"] == "iowa"
    assert (data["patients"], data["usable"], data["series"], data["files"]) == (4, 4, 4, 96)
    # make_site: event = index % 2, cancer = 1 for even indices
    assert (data["events"], data["censored"], data["cancer"]) == (2, 2, 2)
    assert data["slice_spacing_mm"] == [2.5, 2.5] and data["pixel_spacing_mm"] == [1.25, 1.25]
    assert data["annotated"] == 4 and data["nodules"] == 4
    assert data["problems"] == []
    text = report.format_text()
    assert "usable patients      4" in text and "no problems found" in text
    assert data["baseline_scan"] == {"newest study": 4}
    assert "scan chosen by       newest study 4" in text


def test_problems_are_listed_with_site_relative_paths(tmp_path: Path):
    site = make_site(tmp_path / "messy", ("A", "B", "C"))
    (site / "dicom" / "readme.txt").write_text("hello")
    series_files(site, "B")[9].unlink()
    write_series(site / "dicom", "Z", sphere_volume(sphere_center(5)))
    with open(site / "clinical.csv", "a") as handle:
        handle.write("Q,10,1,0,50\nR,-1,1,0,50\n")
    report = inspect_site(site)
    data = report.to_dict()
    assert (data["patients"], data["usable"]) == (5, 2)
    assert (data["events"], data["censored"]) == (0, 2)  # A (index 0) and C (index 2): event 0
    problems = {(p["patient_id"], p["path"]): p for p in data["problems"]}
    assert set(problems) >= {
        (None, "dicom/readme.txt"),
        ("Z", "dicom/Z/ct"),
        ("Q", "clinical.csv:5"),
        ("R", "clinical.csv:6"),
        ("B", "clinical.csv:3"),
    }
    assert all(set(p) == {"patient_id", "path", "reason", "severity"} for p in data["problems"])
    text = report.format_text()
    for problem in data["problems"]:
        assert f"{problem['path']}: {problem['reason']}" in text
    assert f"problems: {report.n_errors} error(s)" in text


def test_deep_inspection_catches_corrupt_pixels(tmp_path: Path):
    site = make_site(
        tmp_path / "s", ("A", "B"), encodings=[PixelEncoding(transfer_syntax_uid=JPEGLSLossless)]
    )
    victim = series_files(site, "B")[3]
    data = bytearray(victim.read_bytes())
    start = data.find(b"\xff\xd8\xff\xf7")
    data[start : start + 16] = b"\0" * 16
    victim.write_bytes(bytes(data))
    assert inspect_site(site).usable == 2  # headers alone look fine
    report = inspect_site(site, deep=True)
    assert report.usable == 1 and report.deep
    (problem,) = report.problems
    assert problem.patient_id == "B" and problem.path == victim.relative_to(site).as_posix()
    assert "cannot decode" in problem.reason


def test_no_usable_patient(tmp_path: Path):
    site = make_site(tmp_path / "s", ("A",))
    for path in series_files(site, "A")[: SHAPE[0] // 2]:
        path.unlink()
    series_files(site, "A")[3].unlink()
    report = inspect_site(site)
    assert report.usable == 0 and report.slice_spacing_mm is None
    assert report.n_errors >= 1


def test_not_a_site(tmp_path: Path):
    with pytest.raises(NotASiteError):
        inspect_site(tmp_path)


def test_the_report_counts_how_each_scan_was_chosen(tmp_path: Path):
    site = make_site(tmp_path / "s", ("A", "B", "C", "D"))
    uid_b = series_meta("B", "ct").series_instance_uid
    path = site / "clinical.csv"
    header, *rows = path.read_text().splitlines()
    extra = {"A": "2020-01-01,", "B": f",{uid_b}", "C": "2020-06-01,", "D": ","}
    rows = [f"{row},{extra[row.split(',')[0]]}" for row in rows]
    path.write_text("\n".join([f"{header},baseline_date,series_uid", *rows]) + "\n")
    report = inspect_site(site)
    assert report.problems == ()
    assert report.baseline_scan == {"series_uid": 1, "baseline_date": 2, "newest study": 1}
    assert "scan chosen by       series_uid 1, baseline_date 2, newest study 1" in (
        report.format_text()
    )
