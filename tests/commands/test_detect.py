"""``survfed detect``: proposals CSV, scored annotations, report, JSON, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from survfed.cli import main
from survfed.client.site_detection import read_proposals_csv
from survfed.common.detection.config import cpu_preset
from survfed.common.detection.nnet import build_nnet
from survfed.common.detection.train import save_detector


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from survfed.common.synth.cohort import make_cohort

    root = tmp_path_factory.mktemp("detect-cmd")
    make_cohort(root / "c", {"iowa": 2}, seed=2034, progress=False)
    config = cpu_preset(score_threshold=0.0, max_proposals=12)
    torch.manual_seed(0)
    return root / "c" / "iowa", save_detector(root / "detector.pt", build_nnet(config), config)


def test_detect_writes_proposals_and_scores_annotations(setup, tmp_path: Path, capsys) -> None:
    site, detector = setup
    out, report = tmp_path / "props.csv", tmp_path / "report"
    args = ["detect", str(site), "--detector", str(detector), "--cache", str(tmp_path / "cache")]
    assert main([*args, "--out", str(out), "--top", "3", "--report", str(report), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert f"2 patients, 6 proposals (detector {detector}, cpu) -> {out}" in text
    assert "on 2 annotated patients: CPM" in text and f"report in {report}" in text
    props = read_proposals_csv(out)
    assert len(props) == 2 and all(p.shape == (3, 5) for p in props.values())
    assert {"metrics.json", "report.md", "froc.png"} <= {p.name for p in report.iterdir()}
    assert (
        "top-5 hits by size: 0-6 mm " in text
        and "| diameter mm | nodules |" in (report / "report.md").read_text()
    )
    # the second run reads the preprocessing cache; --json prints one document
    assert main([*args, "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["patients"] == 2 and summary["proposals"] == 24  # all 12 per patient
    assert summary["evaluation"]["n_scans"] == 2 and summary["failed"] == {}
    assert summary["evaluation"]["n_proposals"] == 24
    by_size = summary["evaluation"]["by_size_mm"]
    assert [b["low"] for b in by_size] == [0, 6, 8, 12, 20, 30] and by_size[-1]["high"] is None
    assert sum(b["n"] for b in by_size) == summary["evaluation"]["all_nodules"]["n_nodules"]
    # --mirror-tta / --no-mirror-tta override the detector's setting: an untrained network is
    # not mirror-symmetric, so averaging the mirrored views changes its confidences
    views = {}
    for flag in ("--mirror-tta", "--no-mirror-tta"):
        csv = tmp_path / f"{flag}.csv"
        assert main([*args, "--out", str(csv), flag, "--quiet"]) == 0
        views[flag] = read_proposals_csv(csv)
    capsys.readouterr()
    plain, mirrored = views["--no-mirror-tta"], views["--mirror-tta"]
    assert plain.keys() == mirrored.keys() and all(len(p) == 12 for p in mirrored.values())
    assert all(abs(plain[k][0, 4] - mirrored[k][0, 4]) > 1e-4 for k in plain)


def test_detect_exit_codes(setup, tmp_path: Path, capsys) -> None:
    site, detector = setup
    missing = tmp_path / "nothing-here"
    assert main(["detect", str(site), "--detector", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    assert main(["detect", str(missing), "--detector", str(detector)]) == 2
    assert "is not a site" in capsys.readouterr().err
    assert main(["detect", str(site), "--detector", str(detector), "--top", "0"]) == 2
    assert "--top must be at least 1" in capsys.readouterr().err
