"""A site's detector data: preprocessed scans of real generator DICOM, nodules in voxels, the
scan manifest, and proposals mapped back to patient millimetres."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from survfed.client.detection_data import (
    detection_scan,
    load_scans,
    open_scan_records,
    prepare_scans,
    proposals_mm,
    read_scan_manifest,
    scan_manifest_path,
)
from survfed.common.detection.config import cpu_preset
from survfed.common.imaging.preprocess import PreprocessConfig, PreprocessedScan

CONFIG = PreprocessConfig(spacing_mm=cpu_preset().spacing_mm)


@pytest.fixture(scope="module")
def iowa(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("scans") / "iowa"
    records, result = prepare_scans(
        "iowa", tiny_cohort / "iowa", cache, CONFIG, device="cpu", progress=False
    )
    return tiny_cohort / "iowa", cache, records, result


def test_every_usable_patient_is_preprocessed_and_listed(iowa) -> None:
    site_dir, cache, records, result = iowa
    assert result.n_failed == 0 and len(records) == result.n_ok == 6
    assert scan_manifest_path(cache, CONFIG).is_file()
    ids = {r.patient_id for r in records}
    import csv

    with (site_dir / "clinical.csv").open(newline="") as fh:
        rows = {r["patient_id"]: r for r in csv.DictReader(fh)}
    assert ids == set(rows)
    for r in records:
        assert r.annotated == (rows[r.patient_id]["nodules_annotated"] == "1")
        if not r.annotated:
            assert r.nodules_mm.shape == (0, 4)


def test_nodules_land_on_bright_voxels_and_map_back(iowa) -> None:
    _, _, records, _ = iowa
    checked = 0
    for record in records:
        pre = PreprocessedScan.load(record.path)
        scan = detection_scan(pre, record.nodules_mm, record.patient_id)
        assert len(scan.nodules) == len(record.nodules_mm)
        np.testing.assert_allclose(
            pre.voxel_to_patient(scan.nodules[:, :3]), record.nodules_mm[:, :3], atol=1e-9
        )
        np.testing.assert_allclose(scan.nodules[:, 3] * 2.5, record.nodules_mm[:, 3])
        for z, y, x, d in scan.nodules:
            if d * 2.5 >= 10:  # a 10 mm nodule holds its centre voxel on a 2.5 mm grid
                value = int(pre.image[round(z), round(y), round(x)])
                assert value > 120, (record.patient_id, value)  # tissue, not lung (~40)
                checked += 1
        assert scan.lung_box is not None and (scan.lung_box[:, 0] <= scan.lung_box[:, 1]).all()
    assert checked >= 1


def test_proposals_map_to_patient_mm_and_back(iowa) -> None:
    pre = PreprocessedScan.load(iowa[2][0].path)
    props = np.array([[10.0, 20.0, 30.0, 4.0, 0.9], [1.5, 2.5, 3.5, 2.0, 0.1]])
    mm = proposals_mm(pre, props)
    np.testing.assert_allclose(pre.patient_to_voxel(mm[:, :3]), props[:, :3], atol=1e-9)
    np.testing.assert_allclose(mm[:, 3], props[:, 3] * 2.5)
    np.testing.assert_allclose(mm[:, 4], props[:, 4])
    assert proposals_mm(pre, np.zeros((0, 5))).shape == (0, 5)


def test_manifest_reopens_without_preprocessing_and_refuses_other_sites(iowa) -> None:
    site_dir, cache, records, _ = iowa
    stamps = {r.path: r.path.stat().st_mtime_ns for r in records}
    again = open_scan_records("iowa", site_dir, cache, CONFIG)
    assert [r.patient_id for r in again] == [r.patient_id for r in records]
    assert {r.path: r.path.stat().st_mtime_ns for r in again} == stamps  # nothing rebuilt
    assert read_scan_manifest(cache, CONFIG, "other", site_dir) is None
    assert read_scan_manifest(cache, PreprocessConfig(spacing_mm=3.0), "iowa", site_dir) is None


def test_load_scans_keeps_annotated_patients_only(iowa) -> None:
    _, _, records, _ = iowa
    site = load_scans(records)
    assert len(site.scans) == sum(r.annotated for r in records)
    assert site.n_unannotated == sum(not r.annotated for r in records)
    assert site.n_nodules == sum(len(r.nodules_mm) for r in records if r.annotated)
    assert not site.failed
