"""Flower's simulation engine runs the same survfed apps with 20 virtual sites of one cohort."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from survfed.app.config import FederationConfig, simulation_sites
from survfed.common.synth.cohort import make_cohort
from survfed.server.checkpoint import load_round_arrays

N_SITES = 20


def _patients_with_crops(site_dir: Path) -> int:
    """Patients a site trains on: annotated rows of clinical.csv (every tiny patient is usable)."""
    with (site_dir / "clinical.csv").open(newline="") as fh:
        return sum(1 for row in csv.DictReader(fh) if row["nodules_annotated"] == "1")


def test_partitions_are_the_training_site_folders(tmp_path: Path) -> None:
    for name in ("b", "a", "held", "_truth"):
        (tmp_path / name).mkdir()
    fed = FederationConfig.from_run_config(
        {"sim-cohort": str(tmp_path), "eval-cohorts": str(tmp_path / "held")}
    )
    assert [p.name for p in simulation_sites(fed)] == ["a", "b"]  # held-out and _truth left out
    fed = fed.replace(**{"sim-sites": "b,held"})
    assert [p.name for p in simulation_sites(fed)] == ["b", "held"]  # as named
    with pytest.raises(ValueError, match="missing"):
        simulation_sites(fed.replace(**{"sim-sites": "nope"}))


@pytest.mark.slow  # ~1.5 min on 2 shared cores: a 63-patient cohort, Ray start, 2 rounds
def test_twenty_virtual_sites_train_and_evaluate(tmp_path: Path) -> None:
    sites = {f"s{i:02d}": 3 for i in range(N_SITES)}
    cohort = tmp_path / "cohort"
    make_cohort(cohort, {**sites, "heldout": 6}, seed=4, progress=False)
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "survfed.cli", "simulate", "--cohort", str(cohort),
        "--heldout", "heldout", "--out", str(out), "--rounds", "2", "--json",
        "--set", "batch-size=2", "--set", "min-patients-for-metrics=2",
        "--set", "bootstrap-per-round=0", "--set", "bootstrap-final=10",
        "--set", "crop-size=16", "--set", "k=2",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)

    training = {s: _patients_with_crops(cohort / s) for s in sites}
    expected_sites = sum(1 for n in training.values() if n > 0)
    history = summary["history"]
    assert [r["round"] for r in history] == [0, 1, 2]
    for row in history[1:]:
        assert row["sites"] == expected_sites  # every virtual site with a patient answered
        assert row["n_patients"] == sum(training.values())  # FedAvg weights = patients
        assert row["failed_sites"] == N_SITES - expected_sites
        assert row["bytes_up_per_site"] < 1.05 * row["model_bytes"]
    assert summary["evaluations"]["heldout"]["n"] == _patients_with_crops(cohort / "heldout")
    assert (out / "model.pt").is_file() and (out / "checkpoint").is_dir()
    audit = [json.loads(line) for line in (out / "replies.jsonl").read_text().splitlines()]
    assert len({e["node_id"] for e in audit if "content" in e}) == expected_sites


def _without_annotations(site_dir: Path) -> None:
    """Make a site that annotated no nodule at all (its nodules.csv empty)."""
    rows = list(csv.DictReader((site_dir / "clinical.csv").open(newline="")))
    with (site_dir / "clinical.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([{**r, "nodules_annotated": "0"} for r in rows])
    header = (site_dir / "nodules.csv").read_text().splitlines()[0]
    (site_dir / "nodules.csv").write_text(header + "\n")


@pytest.mark.slow  # ~2-3 min on 2 shared cores: preprocessing, a detector round, proposals
def test_detector_rounds_then_survival_on_proposals(tiny_cohort: Path, tmp_path: Path) -> None:
    """A site without a single annotation trains no detector, yet takes part in survival
    training on the crops the global detector proposes for its patients."""
    import shutil

    cohort = tmp_path / "cohort"
    for name in ("iowa", "maastro", "stanford"):
        shutil.copytree(tiny_cohort / name, cohort / name)
    shutil.copytree(tiny_cohort / "_truth", cohort / "_truth")
    _without_annotations(cohort / "maastro")
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "survfed.cli", "simulate", "--cohort", str(cohort),
        "--heldout", "stanford", "--out", str(out), "--rounds", "1", "--json",
        "--set", "detector-rounds=1", "--set", "detector-preset='cpu'",
        "--set", "detector-patch-size=48", "--set", "detector-samples-per-epoch=4",
        "--set", "batch-size=2", "--set", "min-patients-for-metrics=2",
        "--set", "bootstrap-per-round=0", "--set", "bootstrap-final=10",
        "--set", "crop-size=16", "--set", "k=2", "--set", "device='cpu'",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout)

    det_rows = list(csv.DictReader((out / "detector" / "metrics.csv").open(newline="")))
    assert [r["round"] for r in det_rows] == ["0", "1"]
    iowa_annotated = _patients_with_crops(cohort / "iowa")
    assert int(det_rows[1]["n_patients"]) == iowa_annotated  # maastro weighs 0
    assert det_rows[1]["sites"] == "2" and det_rows[1]["skipped"] == "False"
    assert 0.0 <= float(det_rows[1]["cpm"]) <= 1.0
    audit = [json.loads(x) for x in (out / "detector" / "replies.jsonl").read_text().splitlines()]
    empty = [e for e in audit if e.get("no_examples")]
    assert len(empty) == 1 and set(empty[0]["content"]) == {"metrics"}  # no weights sent
    assert (out / "detector" / "detector.pt").is_file()
    assert (out / "detector" / "eval-stanford" / "froc.png").is_file()

    detector_id = summary["detector"]["detector_id"]
    assert summary["crop_source"] == f"detector-{detector_id}"
    surv = summary["history"][1]
    assert surv["sites"] == 2 and surv["n_patients"] == 12  # every patient, annotated or not
    assert summary["evaluations"]["stanford"]["n"] == 6  # held-out crops from proposals too
    # the ServerApp's log outlives the simulation's in-memory SuperLink, in the run folder
    (kept,) = out.glob("serverapp-*.log")
    text = kept.read_text()
    assert "proposal crops ready at 2 of 2 sites (12 patients) in " in text
    assert "survival round 1/1" in text and "\x1b[" not in text
    # the virtual sites' own lines land there too (real sites keep theirs in their log)
    assert "survfed site maastro: detector round 1/1 answered" in text
    assert "reply: no arrays, num-examples 0" in text  # maastro has no annotation

    # a second federation reuses that detector as it is (detector-init, no detector rounds)
    again = tmp_path / "again"
    init = out / "detector" / "detector.pt"
    cmd2 = [*cmd[: cmd.index("--out") + 1], str(again), *cmd[cmd.index("--out") + 2 :]]
    cmd2[cmd2.index("detector-rounds=1")] = "detector-rounds=0"
    cmd2 += [
        "--set",
        f"detector-init='{out}'",
        "--set",
        f"eval-cache-dir='{tmp_path / '.run-cache'}'",
    ]
    proc = subprocess.run(cmd2, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    reused = json.loads(proc.stdout)
    assert reused["detector"]["init"] == str(init)
    assert reused["detector"]["detector_id"] == detector_id  # the same weights
    assert reused["detector"]["averaged_rounds"] is None  # no detector round ran
    assert not (again / "detector" / "metrics.csv").exists()
    assert (again / "detector" / "detector.pt").is_file()  # the run folder keeps its detector
    first_det = summary["detector"]["evaluations"]["stanford"]
    assert reused["detector"]["evaluations"]["stanford"]["cpm"] == first_det["cpm"]
    assert reused["crop_source"] == summary["crop_source"]
    assert reused["history"][1]["n_patients"] == 12
    # the same detector, seed and sites: the survival rounds are the same, bit for bit
    # (replies are averaged in a fixed order, not in order of arrival)
    for key in ("train_loss", "c_index"):
        assert reused["history"][1][key] == summary["history"][1][key], key
    assert f"detector-init: the run's detector is {init}" in proc.stderr

    # a third federation fine-tunes that detector: detector-init and one more detector round
    tuned = tmp_path / "tuned"
    cmd3 = [*cmd2[: cmd2.index("--out") + 1], str(tuned), *cmd2[cmd2.index("--out") + 2 :]]
    cmd3[cmd3.index("detector-rounds=0")] = "detector-rounds=1"
    proc = subprocess.run(cmd3, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    fine = json.loads(proc.stdout)
    assert fine["detector"]["init"] == str(init)
    assert f"detector rounds start from {init}" in proc.stderr
    assert fine["detector"]["averaged_rounds"] == [1]
    assert fine["detector"]["detector_id"] not in (detector_id, None)
    rows = list(csv.DictReader((tuned / "detector" / "metrics.csv").open(newline="")))
    assert [r["round"] for r in rows] == ["0", "1"]
    assert int(rows[1]["n_patients"]) == iowa_annotated
    # the same seed, sites and schedule from a fresh N-Net gave the first run's round 1 bit
    # for bit; starting from the trained detector gives other weights
    first_r1 = load_round_arrays(out / "detector", 1)
    tuned_r1 = load_round_arrays(tuned / "detector", 1)
    assert first_r1 is not None and tuned_r1 is not None and first_r1.keys() == tuned_r1.keys()
    assert any(not np.array_equal(first_r1[k], tuned_r1[k]) for k in first_r1)


def test_a_run_past_its_timeout_is_stopped_with_a_clear_message(
    tiny_cohort: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    base = [
        sys.executable, "-m", "survfed.cli", "simulate", "--cohort", str(tiny_cohort),
        "--heldout", "stanford", "--out", str(out), "--rounds", "50",
    ]  # fmt: skip
    bad = subprocess.run([*base, "--run-timeout-s", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--run-timeout-s" in bad.stderr
    proc = subprocess.run(
        [*base, "--run-timeout-s", "3"], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "not finished after 3 s (--run-timeout-s)" in last and str(out) in last
    assert "Traceback" not in proc.stderr
    assert not (out / "model.pt").exists()
    assert len(list(out.glob("serverapp-*.log"))) == 1  # kept for the post-mortem


def test_a_wrong_detector_init_stops_before_the_superlink(
    tiny_cohort: Path, tmp_path: Path
) -> None:
    cmd = [
        sys.executable, "-m", "survfed.cli", "simulate", "--cohort", str(tiny_cohort),
        "--heldout", "stanford", "--out", str(tmp_path / "run"),
        "--set", "detector-init='runs/nowhere'", "--set", "detector-preset='cpu'",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"detector-init: {tmp_path / 'runs' / 'nowhere'} is neither" in proc.stderr
    assert "Traceback" not in proc.stderr and "simulation:" not in proc.stdout
    assert not (tmp_path / "run" / "config.json").exists()
