"""A real scanner's CT series: 20 files straight from a Siemens Biograph mCT PET/CT.

The files are TotalSegmentator's DICOM example, fetched from PyPI by ``make real-ct``
(``benchmarks/fetch_real_ct.py``, folder ``siemens_abdomen``): upper abdomen, 512 × 512,
0.98 mm pixels, 2 mm apart, 12 bits stored unsigned with intercept -1024, JPEG 2000 lossless,
Siemens private groups (CSA headers). Their de-identification blanked PatientID and every
UID in the data set (SOPClassUID, SOPInstanceUID, StudyInstanceUID, SeriesInstanceUID); the
file meta still carries the SOP class and instance UIDs, as PS3.10 requires.

* As shipped, every file is named with the reason it cannot be used (no series to group it
  in), and the SOP class and instance come from the file meta instead of failing the file as
  "not an image".
* With the identifiers put back (the header rewritten, the scanner's JPEG 2000 codestream
  untouched), survfed reads the series exactly as SimpleITK (GDCM) reads the original files:
  same HU and geometry.
* The slab holds no lung (stomach and bowel gas only), so preprocessing refuses it with that
  reason instead of taking gas for lung.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import CTImageStorage, JPEG2000Lossless, generate_uid

from survfed.cli import main
from survfed.client.catalogue import catalogue_site
from survfed.common.imaging.dicom_read import read_header

FOLDER = "siemens_abdomen"
CLINICAL = "patient_id,time_days,event\nSIEMENS-1,400,1\n"


@pytest.fixture(scope="module")
def scanner_files(real_ct_dir: Path) -> list[Path]:
    return sorted((real_ct_dir / FOLDER).iterdir())


def _site(root: Path, files: list[Path], restore: bool) -> Path:
    """``root`` as a site holding the files, with their identifiers put back if ``restore``."""
    (root / "dicom" / "scan").mkdir(parents=True)
    (root / "clinical.csv").write_text(CLINICAL)
    uids = {key: generate_uid(entropy_srcs=["siemens", key]) for key in ("study", "series")}
    for path in files:
        target = root / "dicom" / "scan" / path.name
        if not restore:
            shutil.copyfile(path, target)
            continue
        ds = pydicom.dcmread(path)
        ds.PatientID = "SIEMENS-1"
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
        ds.save_as(target, enforce_file_format=True)
    return root


def test_blanked_identifiers_are_reported_per_file(scanner_files, tmp_path: Path) -> None:
    assert len(scanner_files) == 20
    for path in scanner_files:
        header = read_header(path)
        meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        assert header.sop_class_uid == CTImageStorage  # from the file meta
        assert header.sop_instance_uid == meta.MediaStorageSOPInstanceUID != ""
        assert (header.patient_id, header.series_instance_uid) == ("", "")
        assert header.transfer_syntax_uid == JPEG2000Lossless and header.pixel_problem is None
    site = _site(tmp_path / "site", scanner_files, restore=False)
    catalogue = catalogue_site(site)
    assert not catalogue.usable_patients
    skipped = [p for p in catalogue.problems if "SeriesInstanceUID is empty" in p.reason]
    assert sorted(p.path for p in skipped) == [f"dicom/scan/{f.name}" for f in scanner_files]
    assert all("replace them instead" in p.reason for p in skipped)


def test_scanner_series_reads_as_gdcm_reads_it(scanner_files, tmp_path: Path) -> None:
    site = _site(tmp_path / "site", scanner_files, restore=True)
    catalogue = catalogue_site(site)
    assert [p.patient_id for p in catalogue.usable_patients] == ["SIEMENS-1"]
    volume = catalogue.load_volume("SIEMENS-1")
    reader = sitk.ImageSeriesReader()  # the original files, in GDCM's order
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(scanner_files[0].parent)))
    reference = reader.Execute()
    expected = sitk.GetArrayFromImage(reference)
    assert volume.shape == expected.shape == (20, 512, 512)
    np.testing.assert_array_equal(volume.array, expected.astype(volume.array.dtype))
    assert (expected.min(), expected.max()) == (-1024, 1839)
    np.testing.assert_allclose(volume.spacing, reference.GetSpacing()[::-1], atol=1e-6)
    np.testing.assert_allclose(volume.origin, reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(
        volume.direction, np.reshape(reference.GetDirection(), (3, 3)), atol=1e-6
    )


def test_a_slab_without_lungs_is_refused(scanner_files, tmp_path: Path, capsys) -> None:
    site = _site(tmp_path / "site", scanner_files, restore=True)
    args = ["preprocess", str(site), "--cache", str(tmp_path / "cache"), "--quiet"]
    assert main([*args, "--device", "cpu"]) != 0
    text = capsys.readouterr()
    assert "1 usable patients — 0 preprocessed, 0 from the cache, 1 failed" in text.out
    assert "SIEMENS-1  dicom/scan: no lung found" in text.out
