"""The console scripts as a user runs them: real processes, real files."""

from __future__ import annotations

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
