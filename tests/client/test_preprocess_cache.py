"""The site's preprocessing cache: build, reuse, settings change, damage, failures, workers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from survfed.client import preprocess_cache
from survfed.client.catalogue import catalogue_site
from survfed.client.preprocess_cache import (
    cache_folder,
    clear_cache,
    entry_path,
    load_preprocessed,
    preprocess_site,
)
from survfed.common.imaging.preprocess import PreprocessConfig, PreprocessError

CONFIG = PreprocessConfig(spacing_mm=2.5)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from survfed.common.synth.cohort import make_cohort

    out = tmp_path_factory.mktemp("pp-site") / "c"
    make_cohort(out, {"stanford": 2}, seed=2031, progress=False)
    return out / "stanford"


def test_build_then_reuse_then_rebuild_on_new_settings(site: Path, tmp_path: Path) -> None:
    catalogue = catalogue_site(site)
    first = preprocess_site(catalogue, tmp_path, CONFIG, device="cpu", progress=False)
    assert (first.n_built, first.n_reused, first.n_failed) == (2, 0, 0)
    assert first.folder == tmp_path / "preprocessed" / CONFIG.fingerprint()
    assert (first.folder / "settings.json").exists()
    for outcome in first.outcomes:
        assert outcome.path == entry_path(tmp_path, CONFIG, catalogue.patients[outcome.patient_id])
        assert outcome.path.exists() and outcome.lung_volume_ml > 1000
        assert set(outcome.timings) >= {"resample", "binarize", "separate"}
    second = preprocess_site(catalogue, tmp_path, CONFIG, device="cpu", progress=False)
    assert (second.n_built, second.n_reused) == (0, 2)
    scan = load_preprocessed(catalogue, first.outcomes[0].patient_id, tmp_path, CONFIG)
    assert scan.fingerprint == CONFIG.fingerprint() and scan.image.dtype == np.uint8
    other = PreprocessConfig(spacing_mm=2.5, threshold_hu=-601.0)
    third = preprocess_site(catalogue, tmp_path, other, device="cpu", progress=False)
    assert third.n_built == 2 and third.folder != first.folder
    text = first.format_text()
    assert "2 preprocessed, 0 from the cache, 0 failed" in text and "lung volume" in text


def test_damaged_entry_is_rebuilt_with_a_warning(site: Path, tmp_path: Path) -> None:
    catalogue = catalogue_site(site)
    first = preprocess_site(catalogue, tmp_path, CONFIG, device="cpu", progress=False)
    victim = first.outcomes[0]
    victim.path.write_bytes(victim.path.read_bytes()[:1000])
    again = preprocess_site(catalogue, tmp_path, CONFIG, device="cpu", progress=False)
    redone = {o.patient_id: o for o in again.outcomes}[victim.patient_id]
    assert redone.status == "built" and "damaged" in redone.warnings[0]
    assert again.n_reused == 1
    assert load_preprocessed(catalogue, victim.patient_id, tmp_path, CONFIG).shape == victim.shape


def test_failing_patients_are_reported_and_the_rest_go_on(
    site: Path, tmp_path: Path, monkeypatch
) -> None:
    site = Path(shutil.copytree(site, tmp_path / "site"))  # this test damages a file
    catalogue = catalogue_site(site)
    bad, good = sorted(catalogue.patients)
    real = preprocess_cache.preprocess_volume

    def flaky(volume, config, device):
        if volume.shape[0] == catalogue.patients[bad].plan.shape[0]:
            raise PreprocessError("no lung found: (test)")
        return real(volume, config, device=device)

    monkeypatch.setattr(preprocess_cache, "preprocess_volume", flaky)
    result = preprocess_site(catalogue, tmp_path, CONFIG, device="cpu", progress=False)
    failed = {o.patient_id: o for o in result.outcomes if o.status == "failed"}
    if catalogue.patients[good].plan.shape[0] == catalogue.patients[bad].plan.shape[0]:
        pytest.skip("both series have the same number of slices")
    assert set(failed) == {bad} and result.n_built == 1
    assert failed[bad].reason == "no lung found: (test)" and failed[bad].where.startswith("dicom")
    assert f"{bad}  dicom" in result.format_text()
    monkeypatch.undo()
    # a file that no longer decodes: reported with its name, not a crash
    plan = catalogue.patients[bad].plan
    victim = plan.headers[len(plan.headers) // 2].path
    victim.write_bytes(victim.read_bytes()[:-4000])
    again = preprocess_site(catalogue, tmp_path, CONFIG, device="cpu", progress=False)
    outcome = {o.patient_id: o for o in again.outcomes}[bad]
    assert outcome.status == "failed" and victim.name in outcome.reason
    assert {o.patient_id: o for o in again.outcomes}[good].status == "reused"


def test_workers_and_clear(site: Path, tmp_path: Path) -> None:
    catalogue = catalogue_site(site)
    result = preprocess_site(catalogue, tmp_path, CONFIG, device="cpu", workers=2, progress=False)
    assert result.workers == 2 and result.n_failed == 0 and result.n_ok == 2
    assert clear_cache(tmp_path) == 3  # two scans and settings.json
    assert not cache_folder(tmp_path, CONFIG).exists()
    with pytest.raises(FileNotFoundError, match="survfed preprocess"):
        load_preprocessed(catalogue, result.outcomes[0].patient_id, tmp_path, CONFIG)
    with pytest.raises(ValueError, match="workers"):
        preprocess_site(catalogue, tmp_path, CONFIG, device="cpu", workers=0)
