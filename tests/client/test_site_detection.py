"""``survfed detect``'s engine: a detector on every patient of a real generator site, the CSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from survfed.client.detection_data import load_scans
from survfed.client.site_detection import (
    PROPOSAL_COLUMNS,
    detect_site,
    read_proposals_csv,
    resolve_detector_file,
    write_proposals_csv,
)
from survfed.common.config import DetectorTrainConfig
from survfed.common.detection.config import cpu_preset
from survfed.common.detection.metrics import detection_metrics
from survfed.common.detection.nnet import build_nnet
from survfed.common.detection.train import save_detector
from survfed.common.imaging.preprocess import PreprocessedScan
from survfed.server.detector_eval import HeldOutScans, evaluate_detector

DETECTOR = cpu_preset(patch_size=48, score_threshold=0.0, max_proposals=40)


@pytest.fixture(scope="module")
def detected(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("detect")
    torch.manual_seed(3)
    path = save_detector(root / "run" / "detector" / "detector.pt", build_nnet(DETECTOR), DETECTOR)
    cache = root / "cache"
    result = detect_site(
        tiny_cohort / "stanford", root / "run", cache, device="cpu", top=7, progress=False
    )
    return path, cache, result


def test_detector_file_or_run_folder(tmp_path: Path, detected) -> None:
    path, _, result = detected
    assert result.detector == path  # found inside the run folder (detector/detector.pt)
    assert resolve_detector_file(path) == path
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        resolve_detector_file(tmp_path)


def test_every_usable_patient_gets_its_top_proposals_in_patient_mm(detected) -> None:
    _, _, result = detected
    usable = [o for o in result.preprocessing.outcomes if o.status != "failed"]
    assert sorted(result.proposals) == sorted(o.patient_id for o in usable) and usable
    for outcome in usable:
        props = result.proposals[outcome.patient_id]
        assert props.shape == (7, 5)  # --top 7 of the 40 the detector keeps
        assert np.all(np.diff(props[:, 4]) <= 0)  # most confident first
        assert np.all((props[:, 4] > 0) & (props[:, 4] < 1))  # probabilities
        scan = PreprocessedScan.load(outcome.path)
        lo = np.asarray(scan.origin_mm)
        hi = lo + (np.asarray(scan.image.shape[::-1]) - 1) * np.asarray(scan.spacing_mm[::-1])
        # proposal centres lie in the preprocessed crop (stride-4 grid + regression, 1 voxel slack)
        slack = scan.spacing_mm[0]
        assert np.all(props[:, :3] >= lo - slack) and np.all(props[:, :3] <= hi + slack)
        back = scan.patient_to_voxel(props[:, :3])
        np.testing.assert_allclose(scan.voxel_to_patient(back), props[:, :3], atol=1e-6)


def test_metrics_in_mm_equal_the_coordinators_in_voxels(detected, tiny_cohort: Path) -> None:
    """The site scores proposals in patient mm; the coordinator scores them in voxels of the
    preprocessed grid. The same detector on the same scans must give the same numbers."""
    path, cache, result = detected
    assert result.evaluation is not None and result.n_annotated > 0
    config = DetectorTrainConfig(detector=DETECTOR, device="cpu")
    records = _records(result, cache)
    cohort = HeldOutScans("stanford", tiny_cohort / "stanford", records, load_scans(records))
    model = build_nnet(DETECTOR)
    model.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    central = evaluate_detector(model, [cohort], config, device="cpu")["stanford"]
    for mine, theirs in (
        (result.evaluation.metrics, central.metrics),
        (result.evaluation.metrics_all, central.metrics_all),
    ):
        assert mine.n_nodules == theirs.n_nodules > 0
        assert mine.n_proposals == theirs.n_proposals == 40 * result.n_annotated  # not cut to 7
        assert mine.n_excluded == theirs.n_excluded
        assert mine.max_sensitivity == pytest.approx(theirs.max_sensitivity)
        assert mine.cpm == pytest.approx(theirs.cpm)
        assert mine.recall_top_k == pytest.approx(theirs.recall_top_k)
    assert result.evaluation.by_size == central.by_size  # the same bins in mm, each unit
    assert sum(b.n for b in central.by_size) == central.metrics_all.n_nodules
    # and the hit rule in mm finds annotations used as proposals
    nodules = [r.nodules_mm for r in records if r.annotated]
    perfect = [np.c_[n, np.linspace(0.9, 0.5, len(n))] for n in nodules]
    assert detection_metrics(perfect, nodules).max_sensitivity == 1.0


def _records(result, cache: Path):
    from survfed.client.detection_data import read_scan_manifest

    config = DetectorTrainConfig(detector=DETECTOR, device="cpu")
    return read_scan_manifest(cache, config.preprocess_config(), "stanford", result.site_dir)


def test_proposals_csv_round_trip_and_errors(tmp_path: Path) -> None:
    props = {
        "P-2": np.array([[1.0, 2.0, 3.0, 8.5, 0.9], [4.0, 5.0, 6.0, 12.0, 0.4]]),
        "P-1": np.array([[-10.25, 0.0, -300.5, 6.0, 0.75]]),
    }
    path = write_proposals_csv(props, tmp_path / "out" / "p.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(PROPOSAL_COLUMNS)
    assert lines[1].startswith("P-1,1,-10.25,0.00,-300.50,6.00,0.7500")  # patients sorted
    back = read_proposals_csv(path)
    assert sorted(back) == ["P-1", "P-2"]
    for pid, arr in props.items():
        np.testing.assert_allclose(back[pid], arr, atol=1e-4)
    assert not list(path.parent.glob(".p.csv.*"))  # no temporary file left
    bad = tmp_path / "bad.csv"
    bad.write_text(",".join(PROPOSAL_COLUMNS) + "\nP-1,1,1.0,2.0,oops,4.0,0.5\n")
    with pytest.raises(ValueError, match=r"bad\.csv line 2"):
        read_proposals_csv(bad)
    (tmp_path / "nodules.csv").write_text("patient_id,x_mm,y_mm,z_mm,diameter_mm\n")
    with pytest.raises(ValueError, match="expected columns"):
        read_proposals_csv(tmp_path / "nodules.csv")


def test_top_must_be_positive(tmp_path: Path, detected) -> None:
    path, cache, result = detected
    with pytest.raises(ValueError, match="top must be at least 1"):
        detect_site(result.site_dir, path, cache, device="cpu", top=0, progress=False)


def test_mirror_tta_override_reaches_site_and_coordinator(detected, tiny_cohort: Path) -> None:
    """``--mirror-tta`` of ``survfed detect`` and of ``survfed-server evaluate``: both override
    the detector's own setting, and the two still score the same proposals alike."""
    from survfed.server.evaluate import evaluate_detector_run

    path, cache, plain = detected
    run = path.parent.parent
    site = detect_site(
        tiny_cohort / "stanford", run, cache, device="cpu", progress=False, mirror_tta=True
    )
    central = evaluate_detector_run(
        run, tiny_cohort / "stanford", cache_dir=cache.parent / "eval-cache", device="cpu",
        progress=False, mirror_tta=True,
    ).evaluation  # fmt: skip
    assert site.evaluation is not None and plain.evaluation is not None
    assert site.evaluation.metrics.cpm == pytest.approx(central.metrics.cpm)
    assert site.evaluation.by_size == central.by_size
    some = next(iter(plain.proposals))
    assert not np.allclose(site.proposals[some][:7], plain.proposals[some])  # averaged views
