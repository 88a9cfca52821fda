"""A site's detector round and its proposal crops, on real generator DICOM (no Flower)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from survfed.client.crop_cache import detector_source
from survfed.client.detection_data import SiteScans, load_scans, prepare_scans
from survfed.client.local_detection import (
    DETECTOR_TRAIN_METRICS,
    detector_id,
    prepare_proposal_crops,
    train_detector_locally,
)
from survfed.client.site_snapshot import read_manifest
from survfed.common.config import DetectorTrainConfig
from survfed.common.detection.config import cpu_preset
from survfed.common.detection.nnet import build_nnet
from survfed.common.survival.model import ModelConfig

CONFIG = DetectorTrainConfig(
    epochs=1, samples_per_epoch=4, device="cpu", detector=cpu_preset(patch_size=48)
)
MODEL = ModelConfig(encoder="small", k=3, crop_size=16)


@pytest.fixture(scope="module")
def site(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("det") / "stanford"
    records, _ = prepare_scans(
        "stanford", tiny_cohort / "stanford", cache, CONFIG.preprocess_config(), progress=False
    )
    return tiny_cohort / "stanford", cache, records


def _initial() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_nnet(CONFIG.detector).state_dict()


def test_a_site_without_annotations_sends_nothing_but_a_zero() -> None:
    update = train_detector_locally(
        _initial(), SiteScans(scans=[], n_unannotated=5), CONFIG, site="x", server_round=1,
        total_rounds=3,
    )  # fmt: skip
    assert update.num_examples == 0 and update.state_dict == {}
    assert update.metrics == {"num-examples": 0}


def test_a_detector_round_trains_on_the_annotated_patients(site) -> None:
    (
        _,
        _,
        records,
    ) = site
    data = load_scans(records)
    w0 = _initial()
    update = train_detector_locally(
        w0, data, CONFIG, site="stanford", server_round=1, total_rounds=2,
        min_patients_for_metrics=1, proximal_mu=0.1,
    )  # fmt: skip
    assert update.num_examples == len(data.scans) > 0  # patients, not patches
    assert set(update.metrics) <= set(DETECTOR_TRAIN_METRICS)
    assert update.metrics["det-patches"] == 4.0  # samples_per_epoch x 1 local epoch
    assert update.metrics["det-prox"] > 0.0
    changed = [k for k in w0 if not torch.equal(w0[k], update.state_dict[k])]
    assert len(changed) > len(w0) // 2
    assert update.optimizer_state  # kept at the site for the next round
    again = train_detector_locally(
        w0, data, CONFIG, site="stanford", server_round=1, total_rounds=2,
        min_patients_for_metrics=1, proximal_mu=0.1,
    )  # fmt: skip
    for key in w0:  # seeded by (seed, round, site): the same round gives the same weights
        torch.testing.assert_close(again.state_dict[key], update.state_dict[key])
    few = train_detector_locally(
        w0, data, CONFIG, site="stanford", server_round=1, total_rounds=2,
        min_patients_for_metrics=100,
    )  # fmt: skip
    assert few.metrics == {"num-examples": len(data.scans)}  # too few patients for metrics


def test_proposal_crops_cover_every_usable_patient_and_are_reused(site) -> None:
    site_dir, cache, records = site
    state = _initial()
    ds = prepare_proposal_crops("stanford", site_dir, cache, MODEL, state, CONFIG, records)
    source = detector_source(detector_id(state))
    assert ds.source == source
    assert sorted(ds.patient_ids) == sorted(r.patient_id for r in records)  # annotated or not
    with np.load(ds.records[0].path) as npz:
        centres = npz["centers_mm"]
    assert centres.shape == (MODEL.k, 3) and np.isfinite(centres[0]).all()
    # a second ask (a resumed run) reads the manifest instead of running the detector again
    stamp = ds.records[0].path.stat().st_mtime_ns
    again = prepare_proposal_crops("stanford", site_dir, cache, MODEL, state, CONFIG, records)
    assert again.records[0].path.stat().st_mtime_ns == stamp
    assert read_manifest(cache, MODEL, "stanford", site_dir, source) is not None
    other = {k: v + 0.01 for k, v in state.items()}
    assert detector_id(other) != detector_id(state)  # another detector: other crops
