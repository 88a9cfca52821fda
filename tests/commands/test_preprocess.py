"""``survfed preprocess``: summary, cache reuse, JSON, NIfTI and QC picture export, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from matplotlib.image import imread

from survfed.cli import main
from survfed.client.catalogue import catalogue_site


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from survfed.common.synth.cohort import make_cohort

    out = tmp_path_factory.mktemp("pp-cmd") / "c"
    make_cohort(out, {"iowa": 2}, seed=2033, progress=False)
    return out / "iowa"


def test_preprocess_exports_and_reuses(site: Path, tmp_path: Path, capsys) -> None:
    cache, export = tmp_path / "cache", tmp_path / "nifti"
    args = ["preprocess", str(site), "--cache", str(cache), "--spacing", "2.5", "--quiet"]
    assert main([*args, "--device", "cpu", "--export", str(export)]) == 0
    out = capsys.readouterr().out
    assert "2 usable patients — 2 preprocessed, 0 from the cache, 0 failed" in out
    assert f"NIfTI files and QC pictures (<id>_qc.png) in {export}" in out
    assert f"all patients on one page: {export / 'index.html'}" in out
    catalogue = catalogue_site(site)
    for patient in catalogue.usable_patients:
        pid = patient.patient_id
        series = catalogue.load_volume(pid).to_sitk()
        pre = sitk.ReadImage(str(export / f"{pid}_preprocessed.nii.gz"))
        assert pre.GetPixelID() == sitk.sitkUInt8 and pre.GetSpacing() == (2.5, 2.5, 2.5)
        for name in ("lung", "mask"):
            image = sitk.ReadImage(str(export / f"{pid}_{name}.nii.gz"))
            assert image.GetSize() == series.GetSize()
            np.testing.assert_allclose(image.GetSpacing(), series.GetSpacing(), atol=1e-4)
            np.testing.assert_allclose(image.GetOrigin(), series.GetOrigin(), atol=1e-3)
            np.testing.assert_allclose(image.GetDirection(), series.GetDirection(), atol=1e-6)
        lung = sitk.GetArrayFromImage(sitk.ReadImage(str(export / f"{pid}_lung.nii.gz")))
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(export / f"{pid}_mask.nii.gz")))
        assert set(np.unique(lung)) == {0, 1, 2} and (mask[lung > 0] == 1).all()
        hu = sitk.GetArrayFromImage(series)
        assert np.median(hu[lung > 0]) < -700  # the lungs land on the scan's lungs
        assert imread(export / f"{pid}_qc.png").shape[:2] == (560, 960)
        assert f'<img src="{pid}_qc.png"' in (export / "index.html").read_text()
    assert len(list(export.iterdir())) == 4 * len(catalogue.usable_patients) + 1  # index.html
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["built"], data["reused"], data["failed"]) == (0, 2, 0)
    assert data["mean_lung_volume_ml"] > 1000 and len(data["outcomes"]) == 2
    again = tmp_path / "again"  # patients read from the cache are exported too
    assert main([*args, "--export", str(again)]) == 0
    assert "0 preprocessed, 2 from the cache" in capsys.readouterr().out
    assert sorted(p.name for p in again.iterdir()) == sorted(p.name for p in export.iterdir())
    assert main([*args, "--clear-cache"]) == 0
    assert "removed 3 file(s)" in capsys.readouterr().out


def test_annotated_masses_outside_the_final_mask_are_warned(
    tiny_cohort: Path, tmp_path: Path, capsys
) -> None:
    """A 52.5 mm mass at a lung's edge (``make-cohort --masses 1``, seed 21) that the paper's
    mask leaves mostly outside is named with its coordinates; the default phantoms' nodules
    (up to 30 mm) give no such warning."""
    from survfed.common.synth.cohort import make_cohort

    def annotation_warnings(site: Path) -> dict[str, list[str]]:
        cache = tmp_path / f"cache-{site.parent.name}"
        args = ["--cache", str(cache), "--spacing", "2.5", "--device", "cpu", "--json"]
        assert main(["preprocess", str(site), *args]) == 0
        data = json.loads(capsys.readouterr().out)
        outcomes = data["outcomes"]
        found = {
            o["patient_id"]: [w for w in o["warnings"] if w.startswith("annotated nodule")]
            for o in outcomes
        }
        assert data["nodules_outside_mask"] == sum(len(notes) for notes in found.values())
        return {pid: notes for pid, notes in found.items() if notes}

    make_cohort(tmp_path / "m", {"iowa": 8}, seed=21, progress=False, masses=1.0)
    assert annotation_warnings(tmp_path / "m" / "iowa") == {
        "IOW-6085": [
            "annotated nodule at (-82.4, 15.0, 47.1) mm, 52.5 mm: its centre lies outside the "
            "final mask, 62% of it inside; the preprocessed scan is grey there, so the detector "
            "and the survival crops do not see that part"
        ]
    }
    assert annotation_warnings(tiny_cohort / "maastro") == {}


def test_exit_codes(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nowhere"
    assert main(["preprocess", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(missing) in err[0]
    empty = tmp_path / "empty"
    (empty / "dicom").mkdir(parents=True)
    assert main(["preprocess", str(empty), "--cache", str(tmp_path / "c"), "--quiet"]) == 1
    assert "no usable patient" in capsys.readouterr().err
    assert main(["preprocess", str(empty), "--workers", "0"]) == 2
    assert main(["preprocess", str(empty), "--spacing", "-1"]) == 2
    if not torch.cuda.is_available():
        assert main(["preprocess", str(empty), "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err


def test_site_problems_are_listed(site: Path, tmp_path: Path, capsys) -> None:
    import shutil

    copy = tmp_path / "iowa"
    shutil.copytree(site, copy)
    (copy / "dicom" / "notes.dcm").write_bytes(b"not a DICOM file")
    args = ["preprocess", str(copy), "--cache", str(tmp_path / "cache"), "--spacing", "2.5"]
    assert main([*args, "--quiet", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "2 usable patients — 2 preprocessed" in out
    assert "site problems: 1 error(s), 0 warning(s)" in out
    line = next(x for x in out.splitlines() if "notes.dcm" in x)
    assert line.split()[:2] == ["error", "-"]  # no patient: the file has no header
    assert main([*args, "--json"]) == 0
    problems = json.loads(capsys.readouterr().out)["site_problems"]
    assert [(p["path"], p["severity"]) for p in problems] == [("dicom/notes.dcm", "error")]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_preprocess_on_cuda_in_worker_processes(site: Path, tmp_path: Path, capsys) -> None:
    """`--device cuda --workers 2`: each spawned worker uses the GPU, and the cache entries agree
    with the CPU path's (lung mask Dice >= 0.99, uint8 within one grey level on 99.9 %)."""
    from survfed.client.preprocess_cache import load_preprocessed
    from survfed.common.imaging.preprocess import PreprocessConfig

    config = PreprocessConfig(spacing_mm=2.5)
    caches = {}
    for device, workers in (("cuda", "2"), ("cpu", "1")):
        cache = caches[device] = tmp_path / f"cache-{device}"
        args = ["preprocess", str(site), "--cache", str(cache), "--spacing", "2.5", "--quiet"]
        assert main([*args, "--device", device, "--workers", workers, "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert (data["built"], data["failed"], data["device"]) == (2, 0, device)
    catalogue = catalogue_site(site)
    for patient in catalogue.usable_patients:
        gpu, cpu = (
            load_preprocessed(catalogue, patient.patient_id, caches[d], config)
            for d in ("cuda", "cpu")
        )
        assert gpu.shape == cpu.shape and gpu.crop_offset == cpu.crop_offset
        a, b = gpu.lung_mask, cpu.lung_mask
        assert 2.0 * (a & b).sum() / (a.sum() + b.sum()) >= 0.99
        assert (np.abs(gpu.image.astype(int) - cpu.image.astype(int)) <= 1).mean() >= 0.999
