"""The console scripts as a user runs them: real processes, real files."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _script(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"console script {name} is not installed (pip install -e .)")
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)


def test_make_cohort_then_inspect_json(tmp_path: Path) -> None:
    out = tmp_path / "c"
    made = _run(
        _script("survfed"), "make-cohort", str(out), "--sites", "a:3,b:3", "--seed", "3", "--json"
    )
    assert made.returncode == 0, made.stderr
    summary = json.loads(made.stdout)
    assert summary  # the generator's summary is JSON
    for site in ("a", "b"):
        assert (out / site / "clinical.csv").is_file()
        res = _run(_script("survfed"), "inspect", str(out / site), "--json")
        assert res.returncode == 0, res.stderr
        report = json.loads(res.stdout)
        assert report["site"] == site
        assert report["patients"] == 3
        assert 1 <= report["usable"] <= 3
        assert isinstance(report["events"], int)
        for problem in report["problems"]:
            assert {"patient_id", "path", "reason"} <= set(problem)
    assert (out / "_truth" / "a" / "truth.csv").is_file()


def test_make_cohort_refuses_bad_sites(tmp_path: Path) -> None:
    res = _run(_script("survfed"), "make-cohort", str(tmp_path / "x"), "--sites", "iowa:zero")
    assert res.returncode == 2
    assert "iowa:zero" in res.stderr or "zero" in res.stderr
    res = _run(_script("survfed"), "make-cohort", str(tmp_path / "x"), "--masses", "2")
    assert res.returncode == 2
    assert "masses must be a share between 0 and 1, got 2.0" in res.stderr
    res = _run(_script("survfed"), "make-cohort", str(tmp_path / "x"), "--follow-up-scans", "-1")
    assert res.returncode == 2
    assert "follow_up_scans must be a share between 0 and 1, got -1.0" in res.stderr


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_follow_up_scans_and_the_baseline_scan(tmp_path: Path) -> None:
    """Phantoms with follow-up CT: ``inspect`` takes the scan at clinical.csv's baseline_date
    (the truth's series) and lists every series in ``--series``; without baseline_date it
    takes the newest study and warns each patient with studies of several days."""
    out = tmp_path / "c"
    made = _run(
        _script("survfed"), "make-cohort", str(out), "--sites", "iowa:6", "--seed", "11",
        "--follow-up-scans", "1", "--quiet",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    site = out / "iowa"
    truth = {r["patient_id"]: r for r in _csv_rows(out / "_truth" / "iowa" / "truth.csv")}
    listing, cache = tmp_path / "series.csv", tmp_path / "cache"
    inspect = [_script("survfed"), "inspect", str(site), "--json", "--series", str(listing)]
    res = _run(*inspect, "--cache", str(cache), "--workers", "2")
    assert res.returncode == 0, res.stderr
    assert (cache / "dicom-headers.sqlite").is_file()
    report = json.loads(res.stdout)
    assert report["usable"] == 6 and report["problems"] == []
    assert report["baseline_scan"] == {"baseline_date": 6}
    rows = _csv_rows(listing)
    assert list(rows[0]) == [
        "patient_id", "study_date", "study_time", "series_uid", "description", "files",
        "slice_spacing_mm", "status", "folder",
    ]  # fmt: skip
    assert len(rows) == sum(int(t["n_series"]) for t in truth.values())  # follow-ups included
    chosen = {r["patient_id"]: r["series_uid"] for r in rows if r["status"] == "chosen"}
    assert chosen == {pid: t["chosen_series_uid"] for pid, t in truth.items()}
    later = [
        r
        for r in rows
        if r["study_date"].replace("-", "") == truth[r["patient_id"]]["follow_up_date"]
    ]
    assert len(later) == 5
    for row in later:
        baseline = truth[row["patient_id"]]["study_date"]
        assert row["status"] == (
            f"not chosen: study of {row['study_date']} is after baseline_date "
            f"{baseline[:4]}-{baseline[4:6]}-{baseline[6:]}"
        )
    assert f"series list: {listing} ({len(rows)} series)" in res.stderr

    clinical = site / "clinical.csv"  # the same site without baseline_date
    header, *lines = clinical.read_text().splitlines()
    column = header.split(",").index("baseline_date")
    clinical.write_text(
        "\n".join(",".join(v for i, v in enumerate(line.split(",")) if i != column)
                  for line in [header, *lines]) + "\n"
    )  # fmt: skip
    res = _run(*inspect, "--cache", str(cache))  # the headers from the cache
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["baseline_scan"] == {"newest study": 6}
    warned = {p["patient_id"] for p in report["problems"]}
    several = {pid for pid, t in truth.items() if int(t["n_studies"]) > 1}
    assert warned == several and len(warned) == 5  # the 5 followed patients
    chosen_dates = {
        r["patient_id"]: r["study_date"].replace("-", "")
        for r in _csv_rows(listing)
        if r["status"] == "chosen"
    }
    assert all(chosen_dates[pid] == truth[pid]["follow_up_date"] for pid in several)


def test_inspect_refuses_bad_workers(tmp_path: Path) -> None:
    res = _run(_script("survfed"), "inspect", str(tmp_path), "--workers", "0")
    assert res.returncode == 2
    assert res.stderr.strip() == "survfed inspect: --workers must be at least 1, got 0"


def test_inspect_not_a_site(tmp_path: Path) -> None:
    (tmp_path / "random.txt").write_text("hello")
    res = _run(_script("survfed"), "inspect", str(tmp_path))
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0  # one clear line
    assert str(tmp_path) in res.stderr or "site" in res.stderr


def test_inspect_no_usable_patient(tmp_path: Path) -> None:
    site = tmp_path / "empty"
    (site / "dicom").mkdir(parents=True)
    (site / "clinical.csv").write_text("patient_id,time_days,event\nP1,100,1\n")
    res = _run(_script("survfed"), "inspect", str(site), "--json")
    assert res.returncode == 1
    report = json.loads(res.stdout)
    assert report["usable"] == 0
    assert any(p["patient_id"] == "P1" for p in report["problems"])
    assert "no usable patient" in res.stderr


def test_client_check_refuses_unusable_site(tmp_path: Path) -> None:
    site = tmp_path / "empty"
    (site / "dicom").mkdir(parents=True)
    (site / "clinical.csv").write_text("patient_id,time_days,event\nP1,100,1\n")
    res = _run(
        _script("survfed-client"), "--site", "empty", "--data", str(site), "--check",
        "--cache", str(tmp_path / "cache"),
    )  # fmt: skip
    assert res.returncode == 1
    assert "refusing to start" in res.stderr
