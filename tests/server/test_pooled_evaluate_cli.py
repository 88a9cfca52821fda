"""`survfed train-pooled` and `survfed-server evaluate` as a user runs them, on real DICOM."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sksurv.metrics import concordance_index_censored

from survfed.common.run_folder import RunFolder
from survfed.common.survival.model import load_model

BIN = Path(sys.executable).parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=900, check=False)


@pytest.fixture(scope="module")
def pooled_run(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "pooled"
    res = _run(
        str(BIN / "survfed"),
        "train-pooled",
        "--data",
        str(tiny_cohort),
        "--sites",
        "iowa,maastro",
        "--out",
        str(out),
        "--epochs",
        "3",
        "--batch-size",
        "4",
        "--quiet",
    )
    assert res.returncode == 0, res.stderr
    return out


def test_run_folder_holds_config_model_baseline_metrics(pooled_run: Path) -> None:
    run = RunFolder(pooled_run)
    config = run.read_json("config.json")
    assert config["kind"] == "pooled"
    assert set(config["sites"]) == {"iowa", "maastro"}
    assert config["train"]["epochs"] == 3
    _model, model_config = load_model(run.model_path)
    assert model_config.encoder == "small"
    rows = run.read_metrics()
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert all(float(r["loss"]) > 0 for r in rows)
    baseline = run.read_baseline()
    assert baseline is not None
    cumhaz = baseline.cumulative_hazard([0.0, 365.0, 3650.0])
    assert cumhaz[0] == 0.0 and cumhaz[1] <= cumhaz[2]
    data = json.loads((pooled_run / "baseline.json").read_text())
    # the baseline is built from sums only: events per bin add up to the training events
    summary = run.read_json("summary.json")
    assert sum(data["events"]) == summary["n_events"]


def test_refuses_to_overwrite_a_finished_run(pooled_run: Path, tiny_cohort: Path) -> None:
    res = _run(
        str(BIN / "survfed"),
        "train-pooled",
        "--data",
        str(tiny_cohort),
        "--sites",
        "iowa",
        "--out",
        str(pooled_run),
        "--epochs",
        "1",
        "--quiet",
    )
    assert res.returncode == 2
    assert "already holds a finished run" in res.stderr


def test_unknown_site_is_a_clear_error(tiny_cohort: Path, tmp_path: Path) -> None:
    res = _run(
        str(BIN / "survfed"),
        "train-pooled",
        "--data",
        str(tiny_cohort),
        "--sites",
        "iowa,nowhere",
        "--out",
        str(tmp_path / "r"),
        "--epochs",
        "1",
        "--quiet",
    )
    assert res.returncode == 2
    assert "nowhere" in res.stderr


def test_evaluate_json_and_report(pooled_run: Path, tiny_cohort: Path, tmp_path: Path) -> None:
    report = tmp_path / "report"
    res = _run(
        str(BIN / "survfed-server"),
        "evaluate",
        "--model",
        str(pooled_run),
        "--cohort",
        str(tiny_cohort / "stanford"),
        "--out",
        str(report),
        "--bootstrap",
        "30",
        "--json",
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    for key in ("c_index", "c_index_ci", "auc", "n", "events", "oracle_c_index", "uno_c_index"):
        assert key in data, key
    with (tiny_cohort / "stanford" / "clinical.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    annotated = [r for r in rows if r.get("nodules_annotated", "1") == "1"]
    assert data["n"] == len(annotated)
    assert data["events"] == sum(int(r["event"]) for r in annotated)
    assert 0.0 <= data["c_index"] <= 1.0
    assert data["oracle_c_index"] is not None  # _truth/ is next to the cohort
    assert (report / "report.json").is_file() and (report / "report.md").is_file()
    assert (report / "km_risk_groups.png").stat().st_size > 5000
    assert json.loads((report / "report.json").read_text())["n"] == data["n"]
    _check_predictions(report / "predictions.csv", data, annotated, tiny_cohort, pooled_run)


def _check_predictions(
    path: Path, data: dict, clinical: list[dict], cohort: Path, run: Path
) -> None:
    """predictions.csv: one row per scored patient, consistent with the report's metrics."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    horizons = [name for name in rows[0] if name.startswith("survival_")]
    assert list(rows[0]) == [
        "patient_id", "time_days", "event", "cancer", "log_hazard", "risk_group",
        "cancer_probability", *horizons, "oracle_log_hazard",
    ]  # fmt: skip
    # horizons up to the last rise of the training sites' baseline hazard (their last event)
    baseline = json.loads((run / "baseline.json").read_text())
    edges, cumhaz = np.array(baseline["edges"]), np.array(baseline["cumhaz"])
    last_rise = edges[1:][np.diff(cumhaz) > 0][-1]
    assert horizons == [f"survival_{d}d" for d in (365, 730, 1095, 1826) if d <= last_rise]
    assert horizons[0] == "survival_365d"
    by_id = {r["patient_id"]: r for r in clinical}
    assert sorted(r["patient_id"] for r in rows) == sorted(by_id)
    for row in rows:  # outcomes as in clinical.csv
        assert (row["time_days"], row["event"]) == (
            f"{float(by_id[row['patient_id']]['time_days']):g}",
            by_id[row["patient_id"]]["event"],
        )
    g = np.array([float(r["log_hazard"]) for r in rows])
    time = np.array([float(r["time_days"]) for r in rows])
    event = np.array([r["event"] == "1" for r in rows])
    # Harrell's C of the listed predictions is the report's (scikit-survival)
    c = concordance_index_censored(event, time, g)[0]
    assert c == pytest.approx(data["c_index"], abs=1e-9)
    # two-task head: the cancer probability is the sigmoid of the log-hazard
    p = np.array([float(r["cancer_probability"]) for r in rows])
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-g)), rtol=1e-5)
    # tertile groups: the highest risks are "high"; survival falls with risk and with time
    groups = {
        name: g[[r["risk_group"] == name for r in rows]] for name in ("low", "intermediate", "high")
    }
    assert groups["low"].max() <= groups["intermediate"].min()
    assert groups["intermediate"].max() <= groups["high"].min()
    assert max(len(v) for v in groups.values()) - min(len(v) for v in groups.values()) <= 1
    survival = np.array([[float(r[h]) for h in horizons] for r in rows])
    assert ((survival > 0) & (survival <= 1)).all()
    assert (np.diff(survival, axis=1) <= 0).all()
    order = np.argsort(g)
    assert (np.diff(survival[order, 0]) <= 1e-12).all()
    truth = {
        r["patient_id"]: float(r["log_hazard"])
        for r in csv.DictReader((cohort / "_truth" / "stanford" / "truth.csv").open())
    }
    for row in rows:
        assert float(row["oracle_log_hazard"]) == pytest.approx(truth[row["patient_id"]], rel=1e-5)


def test_evaluate_missing_model_is_a_clear_error(tiny_cohort: Path, tmp_path: Path) -> None:
    res = _run(
        str(BIN / "survfed-server"),
        "evaluate",
        "--model",
        str(tmp_path),
        "--cohort",
        str(tiny_cohort / "stanford"),
    )
    assert res.returncode == 2
    assert "model" in res.stderr
