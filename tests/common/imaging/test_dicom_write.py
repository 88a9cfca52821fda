"""Tests for the DICOM CT series writer."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from scipy.spatial.transform import Rotation

from survfed.common.imaging.dicom_write import (
    CT_IMAGE_STORAGE,
    ENHANCED_CT_IMAGE_STORAGE,
    PixelEncoding,
    SeriesMeta,
    hu_to_stored,
    write_ct_series,
    write_enhanced_ct,
)
from survfed.common.imaging.volume import Volume

OBLIQUE = Rotation.from_euler("xyz", [20.0, -10.0, 35.0], degrees=True).as_matrix()


def _meta(tag: str = "a", **kwargs) -> SeriesMeta:
    return SeriesMeta(
        patient_id="PAT-1",
        study_date="20210304",
        study_instance_uid=generate_uid(entropy_srcs=[tag, "study"]),
        series_instance_uid=generate_uid(entropy_srcs=[tag, "series"]),
        frame_of_reference_uid=generate_uid(entropy_srcs=[tag, "for"]),
        **kwargs,
    )


def _volume(direction: np.ndarray | None = None, shape=(5, 32, 36)) -> Volume:
    direction = np.eye(3) if direction is None else direction
    rng = np.random.default_rng(7)
    array = rng.integers(-1024, 2500, size=shape).astype(np.float32)
    return Volume(array, (2.0, 0.75, 0.8), (-12.5, 30.25, -200.0), direction)


@pytest.mark.parametrize(
    "transfer_syntax", [ExplicitVRLittleEndian, RLELossless, JPEGLSLossless, JPEG2000Lossless]
)
@pytest.mark.parametrize(
    ("representation", "intercept", "bits"), [(1, -1024.0, 16), (0, -1024.0, 12), (1, 0.0, 12)]
)
def test_pydicom_reads_exact_values_without_warnings(
    tmp_path: Path, transfer_syntax, representation, intercept, bits
):
    volume = _volume()
    encoding = PixelEncoding(representation, 1.0, intercept, bits, transfer_syntax)
    paths = write_ct_series(volume, tmp_path, _meta(), encoding)
    low, high = encoding.stored_range
    expected = np.clip(volume.array, low + intercept, high + intercept)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for k, path in enumerate(paths):
            ds = pydicom.dcmread(path)
            assert ds.file_meta.TransferSyntaxUID == transfer_syntax
            assert ds.SOPClassUID == CT_IMAGE_STORAGE
            assert ds.BitsStored == bits
            assert ds.PixelRepresentation == representation
            hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(
                ds.RescaleIntercept
            )
            np.testing.assert_array_equal(hu, expected[k])


def test_positions_that_round_up_a_digit_stay_16_characters(tmp_path: Path):
    """A real scan's geometry (PyRadiomics' lung2) puts slice 52 at z = -99.99999999999989 mm,
    which pydicom's formatter writes as 17 characters (``-100.000000000000``)."""
    origin = (-170.5, -324.5, -359.9999999999999)
    volume = Volume(np.zeros((54, 4, 4), np.float32), (5.0, 0.6269531, 0.6269531), origin)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = write_ct_series(volume, tmp_path, _meta(), PixelEncoding())
        ds = pydicom.dcmread(paths[52])
    assert [str(v) for v in ds.ImagePositionPatient] == ["-170.5", "-324.5", "-100.0"]


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, 1.0, -1.0]), OBLIQUE])
def test_geometry_attributes(tmp_path: Path, direction: np.ndarray):
    volume = _volume(direction)
    paths = write_ct_series(volume, tmp_path, _meta(slice_thickness_mm=3.0), PixelEncoding())
    normal = np.cross(direction[:, 0], direction[:, 1])
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        np.testing.assert_allclose(
            ds.ImageOrientationPatient, direction[:, :2].T.reshape(-1), atol=1e-12
        )
        position = np.asarray(volume.origin) + k * 2.0 * direction[:, 2]
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], position, atol=1e-9)
        assert [float(v) for v in ds.PixelSpacing] == [0.75, 0.8]  # row (sj) \ column (si)
        assert float(ds.SliceThickness) == 3.0
        assert float(ds.SliceLocation) == pytest.approx(position @ normal)
        assert ds.InstanceNumber == k + 1
        assert (ds.Rows, ds.Columns) == (32, 36)
        assert ds.Modality == "CT"
        assert ds.PatientID == "PAT-1" and str(ds.PatientName) == "PAT-1"
        assert ds.StudyDate == "20210304"
    uids = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths}
    assert len(uids) == len(paths)


@pytest.mark.parametrize(
    ("direction", "transfer_syntax"),
    [
        (np.eye(3), RLELossless),
        (np.diag([-1.0, 1.0, -1.0]), JPEGLSLossless),
        (OBLIQUE, JPEG2000Lossless),
        (OBLIQUE, ExplicitVRLittleEndian),
    ],
)
def test_simpleitk_series_reader_agrees(tmp_path: Path, capfd, direction, transfer_syntax):
    volume = _volume(direction)
    write_ct_series(volume, tmp_path, _meta(), PixelEncoding(0, 1.0, -1024.0, 16, transfer_syntax))
    sitk.ProcessObject.SetGlobalWarningDisplay(True)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path)))
    image = reader.Execute()
    read = Volume.from_sitk(image)
    captured = capfd.readouterr()
    assert "WARNING" not in captured.err.upper() and "WARNING" not in captured.out.upper()
    # ITK orders slices along row x column; a right-handed direction is kept as written
    np.testing.assert_array_equal(read.array, volume.array)
    np.testing.assert_allclose(read.direction, direction, atol=1e-6)
    np.testing.assert_allclose(read.origin, volume.origin, atol=1e-4)
    np.testing.assert_allclose(read.spacing, volume.spacing, atol=1e-6)


def test_deterministic_bytes(tmp_path: Path):
    volume = _volume(OBLIQUE)
    encoding = PixelEncoding(transfer_syntax_uid=RLELossless)
    first = write_ct_series(volume, tmp_path / "a", _meta(), encoding)
    second = write_ct_series(volume, tmp_path / "b", _meta(), encoding)
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()
    other = write_ct_series(volume, tmp_path / "c", _meta("other"), encoding)
    assert pydicom.dcmread(other[0]).SOPInstanceUID != pydicom.dcmread(first[0]).SOPInstanceUID


def test_file_names_and_nesting(tmp_path: Path):
    volume = _volume(shape=(3, 32, 32))
    names = ["z/b.dcm", "a", "y/x/c"]
    paths = write_ct_series(volume, tmp_path, _meta(), PixelEncoding(), file_names=names)
    assert paths == [tmp_path / n for n in names]
    assert all(p.is_file() for p in paths)


def test_hu_to_stored_rounds_and_clips():
    encoding = PixelEncoding(0, 0.5, -1024.0, 12)
    hu = np.array([-3000.0, -1024.0, -1023.76, 0.0, 1000.2, 5000.0])
    stored = hu_to_stored(hu, encoding)
    assert stored.dtype == np.uint16
    np.testing.assert_array_equal(stored, [0, 0, 0, 2048, 4048, 4095])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bits_stored": 10}, "bits_stored"),
        ({"pixel_representation": 2}, "pixel_representation"),
        ({"rescale_slope": 0.0}, "rescale_slope"),
        ({"transfer_syntax_uid": "1.2.840.10008.1.2.4.50"}, "transfer_syntax_uid"),
    ],
)
def test_bad_encoding_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PixelEncoding(**kwargs)


def test_bad_meta_rejected():
    with pytest.raises(ValueError, match="study_date"):
        SeriesMeta("P", "2021-03-04", "1.2.3", "1.2.4", "1.2.5")
    with pytest.raises(ValueError, match="series_instance_uid"):
        SeriesMeta("P", "20210304", "1.2.3", "1.2.x", "1.2.5")


def test_bad_write_arguments(tmp_path: Path):
    volume = _volume(shape=(2, 16, 16))
    with pytest.raises(ValueError, match="JPEG 2000 needs"):
        write_ct_series(
            volume, tmp_path, _meta(), PixelEncoding(transfer_syntax_uid=JPEG2000Lossless)
        )
    with pytest.raises(ValueError, match="file_names"):
        write_ct_series(volume, tmp_path, _meta(), PixelEncoding(), file_names=["a"])
    bad = Volume(np.full((1, 4, 4), np.nan, np.float32), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="NaN"):
        write_ct_series(bad, tmp_path, _meta(), PixelEncoding())


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, 1.0, -1.0]), OBLIQUE])
@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, RLELossless])
def test_enhanced_ct_is_read_by_simpleitk_with_its_geometry(
    tmp_path: Path, direction: np.ndarray, transfer_syntax
):
    """GDCM (through SimpleITK) reads the multi-frame file's functional groups independently
    of survfed's reader: same voxels, spacing, origin and direction."""
    volume = _volume(direction)
    encoding = PixelEncoding(transfer_syntax_uid=transfer_syntax)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = write_enhanced_ct(volume, tmp_path / "e.dcm", _meta(), encoding)
        ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == ENHANCED_CT_IMAGE_STORAGE and ds.NumberOfFrames == 5
    image = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), volume.array)
    np.testing.assert_allclose(image.GetSpacing(), volume.spacing[::-1], atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), volume.origin, atol=1e-4)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), direction, atol=1e-6)
