"""Tests for clinical.csv / nodules.csv validation."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from survfed.client.clinical import Problem, parse_date, read_clinical, read_nodules

GOOD = "P1,100,1,0\nP2,250.5,0,1\n"


def _clinical(tmp_path: Path, text: str, header: str = "patient_id,time_days,event,cancer"):
    path = tmp_path / "clinical.csv"
    path.write_text(header + "\n" + text)
    return read_clinical(path)


def _only_error(table, line: int) -> Problem:
    errors = [p for p in table.problems if p.severity == "error"]
    assert len(errors) == 1, table.problems
    assert errors[0].path == f"clinical.csv:{line}"
    return errors[0]


def test_good_file(tmp_path: Path):
    table = _clinical(tmp_path, GOOD + "P3,7,1,\n", header="patient_id,time_days,event,cancer")
    assert table.problems == ()
    assert set(table.rows) == {"P1", "P2", "P3"}
    p2 = table.rows["P2"]
    assert (p2.time_days, p2.event, p2.cancer, p2.line) == (250.5, 0, 1, 3)
    assert table.rows["P3"].cancer is None
    assert all(r.nodules_annotated for r in table.rows.values())


def test_covariates_and_annotation_flag(tmp_path: Path):
    table = _clinical(
        tmp_path,
        "P1,100,1,1,63,M\nP2,20,0,0,,F\n",
        header="patient_id,time_days,event,nodules_annotated,age,sex",
    )
    assert table.covariate_names == ("age", "sex")
    assert table.rows["P1"].covariates == {"age": 63.0, "sex": "M"}
    assert table.rows["P2"].covariates == {"age": None, "sex": "F"}
    assert table.rows["P1"].nodules_annotated and not table.rows["P2"].nodules_annotated
    assert table.rows["P1"].cancer is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("abc", "time_days 'abc' is not a number"),
        ("-3", "time_days -3 is negative"),
        ("nan", "time_days is NaN"),
        ("", "time_days is empty"),
        ("inf", "time_days is infinite"),
    ],
)
def test_bad_time(tmp_path: Path, value: str, reason: str):
    table = _clinical(tmp_path, GOOD + f"P3,{value},1,0\n")
    problem = _only_error(table, 4)
    assert reason in problem.reason and problem.patient_id == "P3"
    assert set(table.rows) == {"P1", "P2"}


@pytest.mark.parametrize("value", ["2", "yes", "", "0.5", "-1"])
def test_bad_event(tmp_path: Path, value: str):
    table = _clinical(tmp_path, f"P3,10,{value},0\n" + GOOD)
    problem = _only_error(table, 2)
    assert f"event {value!r} is not 0 or 1" in problem.reason
    assert set(table.rows) == {"P1", "P2"}


def test_event_as_float_text_is_accepted(tmp_path: Path):
    table = _clinical(tmp_path, "P1,10,1.0,0.0\n")
    assert table.problems == () and table.rows["P1"].event == 1 and table.rows["P1"].cancer == 0


def test_bad_cancer(tmp_path: Path):
    table = _clinical(tmp_path, GOOD + "P3,10,1,maybe\n")
    assert "cancer 'maybe' is not 0, 1 or empty" in _only_error(table, 4).reason


def test_duplicate_ids_reject_every_row(tmp_path: Path):
    table = _clinical(tmp_path, "P1,100,1,0\nP2,5,0,0\nP1,100,1,0\n")
    assert set(table.rows) == {"P2"}
    duplicates = [p for p in table.problems if "duplicate patient_id" in p.reason]
    assert [p.path for p in duplicates] == ["clinical.csv:2", "clinical.csv:4"]
    assert all("lines 2, 4" in p.reason for p in duplicates)


def test_missing_columns_make_the_file_unusable(tmp_path: Path):
    table = _clinical(tmp_path, "P1,100\n", header="patient_id,time_days")
    assert not table.usable and table.rows == {}
    (problem,) = table.problems
    assert problem.path == "clinical.csv" and "missing required column(s): event" in problem.reason


def test_missing_file(tmp_path: Path):
    table = read_clinical(tmp_path / "clinical.csv")
    assert not table.usable and "not found" in table.problems[0].reason


def test_blank_lines_and_line_numbers(tmp_path: Path):
    table = _clinical(tmp_path, "P1,100,1,0\n\n\nP2,x,0,0\n")
    assert _only_error(table, 5).patient_id == "P2"
    assert table.rows["P1"].line == 2


def test_empty_patient_id_and_extra_values(tmp_path: Path):
    table = _clinical(tmp_path, ",100,1,0\nP2,5,0,0,77\nP3,5,0,0\n")
    reasons = {p.path: p.reason for p in table.problems}
    assert "empty patient_id" in reasons["clinical.csv:2"]
    assert "1 more value(s) than columns" in reasons["clinical.csv:3"]
    assert set(table.rows) == {"P3"}


def test_bad_annotation_flag_is_a_warning(tmp_path: Path):
    table = _clinical(
        tmp_path, "P1,100,1,2\n", header="patient_id,time_days,event,nodules_annotated"
    )
    (problem,) = table.problems
    assert problem.severity == "warning" and problem.path == "clinical.csv:2"
    assert not table.rows["P1"].nodules_annotated


def test_nodules(tmp_path: Path):
    path = tmp_path / "nodules.csv"
    path.write_text(
        "patient_id,x_mm,y_mm,z_mm,diameter_mm\n"
        "P1,1.5,-2,30,6\nP1,0,0,0,4\nP2,1,2,abc,5\nP3,1,2,3,0\nP4,1,2,3,nan\n"
    )
    table = read_nodules(path)
    assert [(n.x_mm, n.diameter_mm) for n in table.nodules["P1"]] == [(1.5, 6.0), (0.0, 4.0)]
    assert table.unreliable == {"P2", "P3", "P4"}
    reasons = {p.path: p.reason for p in table.problems}
    assert "z_mm 'abc' is not a finite number" in reasons["nodules.csv:4"]
    assert "diameter_mm 0 is not positive" in reasons["nodules.csv:5"]
    assert "diameter_mm 'nan'" in reasons["nodules.csv:6"]


def test_nodules_missing_column_or_file(tmp_path: Path):
    assert read_nodules(tmp_path / "nodules.csv").nodules == {}
    path = tmp_path / "nodules.csv"
    path.write_text("patient_id,x_mm,y_mm,z_mm\nP1,1,2,3\n")
    table = read_nodules(path)
    assert not table.usable and "diameter_mm" in table.problems[0].reason


def test_baseline_scan_columns(tmp_path: Path):
    """``baseline_date`` (ISO or DICOM form) and ``series_uid`` say which CT is at time zero;
    they are not covariates, and empty means not given."""
    table = _clinical(
        tmp_path,
        "P1,100,1,2021-03-04,,70\nP2,20,0,20190101,1.2.840.1,\nP3,5,0,,,\n",
        header="patient_id,time_days,event,baseline_date,series_uid,age",
    )
    assert table.problems == () and table.covariate_names == ("age",)
    rows = table.rows
    assert (rows["P1"].baseline_date, rows["P1"].series_uid) == (dt.date(2021, 3, 4), "")
    assert (rows["P2"].baseline_date, rows["P2"].series_uid) == (dt.date(2019, 1, 1), "1.2.840.1")
    assert (rows["P3"].baseline_date, rows["P3"].series_uid) == (None, "")


@pytest.mark.parametrize("value", ["2021-13-01", "2021-02-30", "04/03/2021", "2021-0304", "soon"])
def test_bad_baseline_date(tmp_path: Path, value: str):
    """A scan choice that cannot be made safely rejects the row (a later scan could be used)."""
    table = _clinical(
        tmp_path,
        f"P1,100,1,2020-01-01\nP2,5,0,{value}\n",
        header="patient_id,time_days,event,baseline_date",
    )
    problem = _only_error(table, 3)
    assert f"baseline_date {value!r} is not a date (YYYY-MM-DD)" in problem.reason
    assert set(table.rows) == {"P1"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2021-03-04", dt.date(2021, 3, 4)), ("20210304", dt.date(2021, 3, 4)), ("2021-3-4", None)],
)
def test_parse_date(text: str, expected: dt.date | None):
    assert parse_date(text) == expected
