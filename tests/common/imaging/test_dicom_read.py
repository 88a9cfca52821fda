"""Tests for DICOM header scanning, series validation and volume assembly."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.pixels import apply_rescale
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from scipy.interpolate import interp1d
from scipy.spatial.transform import Rotation

from survfed.common.imaging.dicom_read import (
    DicomReadError,
    SeriesError,
    load_series,
    plan_series,
    read_header,
    read_series,
)
from survfed.common.imaging.dicom_write import (
    PixelEncoding,
    SeriesMeta,
    write_ct_series,
    write_enhanced_ct,
)
from survfed.common.imaging.volume import Volume

CENTER = np.array([14.0, -22.0, -130.0])  # sphere centre, LPS mm
RADIUS = 6.0
SPACING = (2.5, 1.25, 1.0)
SHAPE = (20, 32, 36)
ORIENTATIONS = {
    "axial_head_first": np.eye(3),
    "feet_first": np.diag([-1.0, 1.0, -1.0]),
    "oblique": Rotation.from_euler("xyz", [25.0, -15.0, 40.0], degrees=True).as_matrix(),
}
ENCODINGS = {
    "native_signed": PixelEncoding(1, 1.0, -1024.0, 16, ExplicitVRLittleEndian),
    "native_unsigned_12bit": PixelEncoding(0, 1.0, -1024.0, 12, ExplicitVRLittleEndian),
    "rle_signed_no_intercept": PixelEncoding(1, 1.0, 0.0, 16, RLELossless),
    "jpegls_unsigned": PixelEncoding(0, 1.0, -1024.0, 16, JPEGLSLossless),
    "jpegls_signed_no_intercept": PixelEncoding(1, 1.0, 0.0, 16, JPEGLSLossless),
    "j2k_unsigned_12bit": PixelEncoding(0, 1.0, -1024.0, 12, JPEG2000Lossless),
    "j2k_signed": PixelEncoding(1, 1.0, -1024.0, 16, JPEG2000Lossless),
}


def _meta(tag: str = "s") -> SeriesMeta:
    return SeriesMeta(
        patient_id="P1",
        study_date="20200102",
        study_instance_uid=generate_uid(entropy_srcs=[tag, "st"]),
        series_instance_uid=generate_uid(entropy_srcs=[tag, "se"]),
        frame_of_reference_uid=generate_uid(entropy_srcs=[tag, "fr"]),
    )


def _sphere(direction: np.ndarray, *, textured: bool = True) -> Volume:
    """Integer-HU volume with a sphere at CENTER (off the volume centre) and some texture."""
    extent = np.array(
        [(SHAPE[2] - 1) * SPACING[2], (SHAPE[1] - 1) * SPACING[1], (SHAPE[0] - 1) * SPACING[0]]
    )
    origin = CENTER - direction @ (extent / 2 + np.array([4.0, -3.0, 5.0]))
    skeleton = Volume(np.zeros(SHAPE, np.float32), SPACING, tuple(origin), direction)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), axis=-1)
    inside = np.linalg.norm(skeleton.voxel_to_patient(grid) - CENTER, axis=-1) <= RADIUS
    array = np.where(inside, 200.0, -850.0)
    if textured:
        array = array + np.random.default_rng(3).integers(-60, 60, SHAPE)
    return Volume(array.astype(np.float32), SPACING, tuple(origin), direction)


def _write(
    volume: Volume, folder: Path, encoding: PixelEncoding | None = None, tag: str = "s"
) -> list[Path]:
    rng = np.random.default_rng(len(tag))
    names = [f"f{v:06d}" for v in rng.permutation(999_999)[: volume.shape[0]]]
    return write_ct_series(
        volume, folder, _meta(tag), encoding or PixelEncoding(), file_names=names
    )


def _centroid_mm(volume: Volume, threshold: float = 0.0) -> np.ndarray:
    return volume.voxel_to_patient(np.argwhere(volume.array > threshold).mean(axis=0))


def _voxel_size_mm(volume: Volume) -> float:
    return float(np.linalg.norm(volume.spacing))


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_round_trip(tmp_path: Path, orientation: str, encoding: str):
    volume = _sphere(ORIENTATIONS[orientation])
    paths = _write(volume, tmp_path, ENCODINGS[encoding])
    read = read_series(paths[::-1])  # order of the input must not matter
    np.testing.assert_array_equal(read.array, volume.array)
    np.testing.assert_allclose(read.spacing, volume.spacing, atol=1e-6)
    np.testing.assert_allclose(read.origin, volume.origin, atol=1e-6)
    np.testing.assert_allclose(read.direction, volume.direction, atol=1e-9)
    assert np.linalg.norm(_centroid_mm(read) - CENTER) < min(SPACING)


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_agrees_with_simpleitk(tmp_path: Path, orientation: str):
    volume = _sphere(ORIENTATIONS[orientation])
    _write(volume, tmp_path, ENCODINGS["jpegls_unsigned"])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path)))
    reference = Volume.from_sitk(reader.Execute())
    ours = read_series(sorted(tmp_path.iterdir()))
    np.testing.assert_array_equal(ours.array, reference.array)
    np.testing.assert_allclose(ours.origin, reference.origin, atol=1e-4)
    np.testing.assert_allclose(ours.direction, reference.direction, atol=1e-6)
    np.testing.assert_allclose(ours.spacing, reference.spacing, atol=1e-6)


def test_left_handed_input_comes_back_flipped_but_same_in_patient_space(tmp_path: Path):
    direction = np.diag([1.0, 1.0, -1.0])  # slices written from head to feet
    volume = _sphere(direction)
    read = read_series(_write(volume, tmp_path))
    np.testing.assert_allclose(read.direction[:, 2], [0, 0, 1], atol=1e-12)
    np.testing.assert_array_equal(read.array, volume.array[::-1])
    last = (SHAPE[0] - 1, 0, 0)
    np.testing.assert_allclose(
        read.voxel_to_patient((0, 0, 0)), volume.voxel_to_patient(last), atol=1e-6
    )


def test_per_slice_rescale_and_mixed_transfer_syntaxes(tmp_path: Path):
    volume = _sphere(np.eye(3))
    first = _write(volume, tmp_path / "a", PixelEncoding(1, 1.0, -1024.0, 16))
    second = _write(volume, tmp_path / "b", PixelEncoding(0, 2.0, -2048.0, 16, RLELossless))
    mixed = first[::2] + second[1::2]  # same series UID and geometry, different encodings
    read = read_series(mixed)
    expected = volume.array.copy()
    expected[1::2] = np.rint((expected[1::2] + 2048.0) / 2.0) * 2.0 - 2048.0
    np.testing.assert_array_equal(read.array, expected)
    assert {read_header(p).rescale_slope for p in mixed} == {1.0, 2.0}


def test_real_ct_slice_from_pydicom():
    path = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
    ds = pydicom.dcmread(path)
    header = read_header(path)
    assert header.modality == "CT" and header.rows == 128 and header.columns == 128
    assert header.pixel_problem is None
    volume = read_series([path])
    expected = apply_rescale(ds.pixel_array, ds)
    np.testing.assert_allclose(volume.array[0], expected, atol=1e-3)
    np.testing.assert_allclose(volume.origin, [float(v) for v in ds.ImagePositionPatient])
    row, col = np.asarray(ds.ImageOrientationPatient, dtype=float).reshape(2, 3)
    np.testing.assert_allclose(volume.direction[:, 0], row, atol=1e-6)
    np.testing.assert_allclose(volume.direction[:, 1], col, atol=1e-6)
    assert volume.spacing[1:] == tuple(float(v) for v in ds.PixelSpacing)
    assert volume.spacing[0] == float(ds.SliceThickness)
    # the slice really is in HU: the known range of this phantom slice
    assert volume.array.min() == pytest.approx(
        float(ds.pixel_array.min()) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    )


def test_header_fields(tmp_path: Path):
    volume = _sphere(ORIENTATIONS["oblique"])
    path = _write(volume, tmp_path, ENCODINGS["j2k_signed"])[3]
    header = read_header(path)
    assert header.patient_id == "P1" and header.study_date == "20200102"
    assert header.series_instance_uid == _meta().series_instance_uid
    assert header.transfer_syntax_uid == JPEG2000Lossless
    assert header.instance_number == 4 and header.rows == 32 and header.columns == 36
    assert header.pixel_spacing == (1.25, 1.0)
    np.testing.assert_allclose(header.position, volume.voxel_to_patient((3, 0, 0)), atol=1e-9)
    assert header.pixel_problem is None


# ---------------------------------------------------------------------------- repairs


def test_identical_duplicate_file_is_dropped_with_warning(tmp_path: Path):
    volume = _sphere(np.eye(3))
    paths = _write(volume, tmp_path)
    copy = shutil.copyfile(paths[5], tmp_path / "copy_of_5")
    plan = plan_series([read_header(p) for p in [*paths, copy]])
    assert len(plan.headers) == SHAPE[0] and len(plan.dropped) == 1
    assert any("duplicate file" in w for w in plan.warnings)
    np.testing.assert_array_equal(load_series(plan).array, volume.array)


def test_duplicate_position_with_different_pixels_is_an_error(tmp_path: Path):
    volume = _sphere(np.eye(3))
    paths = _write(volume, tmp_path)
    other = Volume(volume.array + 7, volume.spacing, volume.origin, volume.direction)
    conflicting = _write(other, tmp_path / "other", tag="s")  # same UIDs except the file
    ds = pydicom.dcmread(conflicting[5])
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["conflict"])
    ds.save_as(tmp_path / "conflict")
    with pytest.raises(SeriesError, match="different pixels") as info:
        plan_series([read_header(p) for p in [*paths, tmp_path / "conflict"]])
    assert info.value.path.name in {"conflict", paths[5].name}


def test_uneven_spacing_is_resampled_linearly(tmp_path: Path):
    # a ramp along z, so linear interpolation is exact and checkable with scipy
    z = np.arange(SHAPE[0], dtype=np.float32)[:, None, None]
    volume = Volume(np.broadcast_to(z * 10.0, SHAPE).astype(np.float32), SPACING)
    paths = _write(volume, tmp_path)
    jitter = {4: 0.6, 9: -0.5, 13: 0.4}  # mm along z, below the missing-slice threshold
    positions = np.arange(SHAPE[0]) * SPACING[0]
    for k, dz in jitter.items():
        ds = pydicom.dcmread(paths[k])
        ds.ImagePositionPatient = [0.0, 0.0, positions[k] + dz]
        ds.save_as(paths[k])
        positions[k] += dz
    plan = plan_series([read_header(p) for p in paths])
    assert plan.resample and any("uneven slice spacing" in w for w in plan.warnings)
    read = load_series(plan)
    assert read.shape[0] == SHAPE[0] and read.spacing[0] == pytest.approx(SPACING[0])
    reference = interp1d(positions, volume.array[:, 0, 0])(np.arange(SHAPE[0]) * read.spacing[0])
    np.testing.assert_allclose(read.array[:, 0, 0], reference, atol=1e-3)
    np.testing.assert_allclose(read.array[:, 5, 7], reference, atol=1e-3)


def test_gantry_tilt_is_corrected(tmp_path: Path):
    tilt = np.radians(15.0)
    sk, sj, si = SPACING
    origin = CENTER - np.array([18 * si, 16 * sj, 10 * sk])
    # each slice's in-plane grid is shifted along y by k*sk*tan(tilt): sample the sphere there
    k, j, i = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    x = origin[0] + i * si
    y = origin[1] + j * sj + k * sk * np.tan(tilt)
    zz = origin[2] + k * sk
    inside = (x - CENTER[0]) ** 2 + (y - CENTER[1]) ** 2 + (zz - CENTER[2]) ** 2 <= RADIUS**2
    array = np.where(inside, 200.0, -850.0).astype(np.float32)
    paths = _write(Volume(array, SPACING, tuple(origin)), tmp_path)
    for index, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [
            origin[0],
            origin[1] + index * sk * np.tan(tilt),
            origin[2] + index * sk,
        ]
        ds.GantryDetectorTilt = 15.0
        ds.save_as(path)
    plan = plan_series([read_header(p) for p in paths])
    assert plan.tilt_deg == pytest.approx(15.0, abs=0.01)
    read = load_series(plan)
    np.testing.assert_allclose(read.direction, np.eye(3), atol=1e-9)
    assert np.linalg.norm(_centroid_mm(read) - CENTER) < 0.5 * min(SPACING)
    # without the correction, the sphere would sit ~tan(15°)*10 slices*2.5 mm off in y
    assert np.linalg.norm(_centroid_mm(Volume(array, SPACING, tuple(origin))) - CENTER) > 5


# ---------------------------------------------------------------------------- bad input


def test_missing_slice_is_an_error_naming_the_file(tmp_path: Path):
    paths = _write(_sphere(np.eye(3)), tmp_path)
    headers = [read_header(p) for i, p in enumerate(paths) if i != 7]
    with pytest.raises(SeriesError, match=r"missing slice\(s\): gap of 5.00 mm") as info:
        plan_series(headers)
    assert info.value.path == paths[8]
    assert paths[6].name in info.value.reason


def test_mixed_orientation_is_an_error(tmp_path: Path):
    paths = _write(_sphere(np.eye(3)), tmp_path)
    ds = pydicom.dcmread(paths[3])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.save_as(paths[3])
    with pytest.raises(SeriesError, match="mixed orientations") as info:
        plan_series([read_header(p) for p in paths])
    assert paths[3] in (info.value.path, *[p for p in paths if p.name in info.value.reason])


def test_mixed_image_size_is_an_error(tmp_path: Path):
    paths = _write(_sphere(np.eye(3)), tmp_path)
    small = _sphere(np.eye(3))
    small = Volume(small.array[:, :16, :], small.spacing, small.origin, small.direction)
    other = _write(small, tmp_path / "small")
    with pytest.raises(SeriesError, match="mixed image sizes"):
        plan_series([read_header(p) for p in [*paths[:10], *other[10:]]])


def test_positions_off_a_line_are_an_error(tmp_path: Path):
    paths = _write(_sphere(np.eye(3)), tmp_path)
    ds = pydicom.dcmread(paths[4])
    position = [float(v) for v in ds.ImagePositionPatient]
    ds.ImagePositionPatient = [position[0] + 9.0, *position[1:]]
    ds.save_as(paths[4])
    with pytest.raises(SeriesError, match="do not lie on a line"):
        plan_series([read_header(p) for p in paths])


def test_missing_pixel_data_is_an_error(tmp_path: Path):
    paths = _write(_sphere(np.eye(3)), tmp_path)
    ds = pydicom.dcmread(paths[2])
    del ds.PixelData
    ds.save_as(paths[2])
    header = read_header(paths[2])
    assert header.pixel_problem is not None and "no pixel data" in header.pixel_problem
    with pytest.raises(SeriesError, match="no pixel data") as info:
        plan_series([read_header(p) for p in paths])
    assert info.value.path == paths[2]


@pytest.mark.parametrize("encoding", ["native_signed", "rle_signed_no_intercept"])
def test_truncated_pixel_data_is_detected_from_the_header(tmp_path: Path, encoding: str):
    paths = _write(_sphere(np.eye(3)), tmp_path, ENCODINGS[encoding])
    data = paths[6].read_bytes()
    paths[6].write_bytes(data[: len(data) - 200])
    header = read_header(paths[6])
    assert header.pixel_problem is not None and "truncated" in header.pixel_problem
    with pytest.raises(SeriesError, match="truncated") as info:
        plan_series([read_header(p) for p in paths])
    assert info.value.path == paths[6]


def test_compressed_pixels_followed_by_trailing_padding_are_complete(tmp_path: Path):
    """Some scanners write DataSetTrailingPadding (FFFC,FFFC) after the pixel data: the end of
    the fragments is then not at the end of the file, and the file is not truncated."""
    paths = _write(_sphere(np.eye(3)), tmp_path, ENCODINGS["rle_signed_no_intercept"])
    expected = read_series(paths).array
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.add_new(0xFFFCFFFC, "OB", b"\0" * 256)
        ds.save_as(path)
    assert read_header(paths[3]).pixel_problem is None
    np.testing.assert_array_equal(read_series(paths).array, expected)
    data = paths[3].read_bytes()  # cut inside the last fragment, padding and delimiter gone
    paths[3].write_bytes(data[: len(data) - 300])
    assert "truncated" in read_header(paths[3]).pixel_problem


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
    ],
)
def test_other_encoders_files_give_the_uncompressed_values(name: str):
    """pydicom's MR_small test image as other toolkits encoded it (the compressed ones end with
    trailing padding after the fragments) reads as the uncompressed original."""
    reference = read_series([pydicom.data.get_testdata_file("MR_small.dcm")]).array
    path = Path(pydicom.data.get_testdata_file(name))
    assert read_header(path).pixel_problem is None
    np.testing.assert_array_equal(read_series([path]).array, reference)


@pytest.mark.parametrize("name", ["693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm"])
def test_real_jpeg2000_ct_slices_read_as_pydicom_decodes_them(name: str):
    """Two real 512 × 512 CT slices in JPEG 2000 from pydicom's test data, one whose codestream
    is unsigned while the header says signed (pydicom corrects the sign; so must we)."""
    path = pydicom.data.get_testdata_file(name)
    ds = pydicom.dcmread(path)
    hu = apply_rescale(ds.pixel_array, ds).astype(np.float32)
    assert read_header(path).pixel_problem is None
    volume = read_series([path])
    np.testing.assert_array_equal(volume.array[0], hu)
    assert hu.min() < -900 and hu.max() > 500  # air and bone: HU, not raw stored values


def test_deflated_series_is_read(tmp_path: Path):
    """A deflated file's pixel data cannot be found in its raw bytes, so the header check
    leaves it to decoding (pydicom's own deflated example is no longer called truncated)."""
    assert read_header(pydicom.data.get_testdata_file("image_dfl.dcm")).pixel_problem is None
    paths = _write(_sphere(np.eye(3)), tmp_path)
    expected = read_series(paths).array
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(path)
    assert read_header(paths[0]).pixel_problem is None
    np.testing.assert_array_equal(read_series(paths).array, expected)


def test_corrupt_compressed_pixels_fail_at_decode_naming_the_file(tmp_path: Path):
    paths = _write(_sphere(np.eye(3)), tmp_path, ENCODINGS["jpegls_unsigned"])
    data = bytearray(paths[4].read_bytes())
    start = data.find(b"\xff\xd8\xff\xf7")  # JPEG-LS start of image + start of frame
    assert start > 0
    data[start : start + 16] = b"\x00" * 16
    paths[4].write_bytes(bytes(data))
    plan = plan_series([read_header(p) for p in paths])  # the header is fine
    with pytest.raises(SeriesError) as info:
        load_series(plan)
    assert info.value.path == paths[4]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"patient_id,time\nP1,3\n", "not a DICOM file"),
        (b"", "not a DICOM file"),
        (b"\0" * 128 + b"DICM" + b"\x02\x00", "without SOPClassUID"),
    ],
)
def test_non_dicom_files_are_rejected(tmp_path: Path, content: bytes, reason: str):
    path = tmp_path / "junk.dcm"
    path.write_bytes(content)
    with pytest.raises(DicomReadError, match=reason) as info:
        read_header(path)
    assert info.value.path == path


def test_blanked_sop_uids_come_from_the_file_meta(tmp_path: Path):
    """A de-identifier that blanks SOPClassUID / SOPInstanceUID (the element kept, empty) leaves
    them in the file meta (PS3.10); a file without the element is cut short or no image."""
    path = _write(_sphere(np.eye(3)), tmp_path, ENCODINGS["native_signed"])[0]
    ds = pydicom.dcmread(path)
    ds.SOPClassUID, ds.SOPInstanceUID = "", ""
    ds.save_as(path)
    header = read_header(path)
    assert header.sop_class_uid == ds.file_meta.MediaStorageSOPClassUID != ""
    assert header.sop_instance_uid == ds.file_meta.MediaStorageSOPInstanceUID != ""
    ds.file_meta.MediaStorageSOPClassUID = ""
    ds.save_as(path)
    with pytest.raises(DicomReadError, match="SOPClassUID is empty, in the data set and in"):
        read_header(path)
    del ds.SOPClassUID
    ds.save_as(path)
    with pytest.raises(DicomReadError, match="without SOPClassUID"):
        read_header(path)


def test_unreadable_file_is_rejected(tmp_path: Path):
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(DicomReadError, match="cannot read file"):
        read_header(link)


def test_files_from_two_series_are_refused(tmp_path: Path):
    first = _write(_sphere(np.eye(3)), tmp_path / "a", tag="a")
    second = _write(_sphere(np.eye(3)), tmp_path / "b", tag="bb")
    with pytest.raises(SeriesError, match="2 different series"):
        read_series([*first, *second])


def test_implicit_vr_and_no_preamble_files_are_read(tmp_path: Path):
    volume = _sphere(np.eye(3))
    paths = _write(volume, tmp_path)
    for index, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        if index % 2:
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
            ds.save_as(path, implicit_vr=True, little_endian=True)
        else:  # a bare data set: no preamble, no file meta (old ACR-NEMA style)
            del ds.file_meta
            ds.preamble = None
            ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=False)
    assert not paths[0].read_bytes()[128:132] == b"DICM"
    assert all(read_header(p).pixel_problem is None for p in paths)
    np.testing.assert_array_equal(read_series(paths).array, volume.array)


def test_dicomdir_is_not_an_image(tmp_path: Path):
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.FileSetID = "SITE"
    ds.save_as(tmp_path / "DICOMDIR", enforce_file_format=True)
    with pytest.raises(DicomReadError, match="DICOMDIR"):
        read_header(tmp_path / "DICOMDIR")


@pytest.mark.parametrize("error", [DicomReadError, SeriesError])
def test_read_errors_survive_pickling_with_their_file_and_reason(error):
    # worker processes (``survfed preprocess --workers``) send them back pickled
    import pickle

    back = pickle.loads(pickle.dumps(error("/site/dicom/P1/IM0001", "not a DICOM file")))
    assert type(back) is error
    assert back.path == Path("/site/dicom/P1/IM0001") and back.reason == "not a DICOM file"
    assert str(back) == "/site/dicom/P1/IM0001: not a DICOM file"


@pytest.mark.parametrize("encoding", ["native_signed", "rle_signed_no_intercept"])
def test_threaded_and_serial_decoding_give_the_same_volume(tmp_path, monkeypatch, encoding):
    import survfed.common.imaging.dicom_read as dr

    volume = _sphere(np.eye(3))
    plan = plan_series([read_header(p) for p in _write(volume, tmp_path, ENCODINGS[encoding])])
    assert SHAPE[1] * SHAPE[2] < dr._THREADED_DECODE_MIN_PIXELS  # small slices: one thread
    serial = load_series(plan)
    monkeypatch.setattr(dr, "_THREADED_DECODE_MIN_PIXELS", 0)
    monkeypatch.setattr(dr.os, "cpu_count", lambda: 4)
    threaded = load_series(plan)
    np.testing.assert_array_equal(threaded.array, serial.array)
    np.testing.assert_allclose(serial.array, volume.array, atol=0.5)


@pytest.mark.parametrize("encoding", ["jpegls_unsigned", "jpegls_signed_no_intercept"])
def test_jpeg_ls_is_decoded_by_charls_giving_what_every_decoder_gives(
    tmp_path, monkeypatch, encoding
):
    from pydicom.pixels import pixel_array

    import survfed.common.imaging.dicom_read as dr

    volume = _sphere(np.eye(3))
    paths = _write(volume, tmp_path, ENCODINGS[encoding])
    plan = plan_series([read_header(p) for p in paths])
    assert dr._has_decoder(JPEGLSLossless, "pyjpegls")  # a declared dependency
    fast = load_series(plan)
    np.testing.assert_allclose(fast.array, volume.array, atol=0.5)
    for header, hu in zip(plan.headers, fast.array, strict=True):
        stored = pixel_array(str(header.path), decoding_plugin="pylibjpeg")
        np.testing.assert_array_equal(hu, stored * header.rescale_slope + header.rescale_intercept)
    monkeypatch.setattr(dr, "_PREFERRED_DECODER", {JPEGLSLossless: "no-such-decoder"})
    np.testing.assert_array_equal(load_series(plan).array, fast.array)  # pydicom's own choice


@pytest.mark.parametrize("orientation", ["axial_head_first", "feet_first", "oblique"])
@pytest.mark.parametrize("encoding", ["native_signed", "jpegls_unsigned"])
def test_enhanced_ct_reads_as_the_same_series_of_single_files(
    tmp_path: Path, orientation: str, encoding: str
):
    """One Enhanced CT file (geometry and rescale in the functional groups) gives the volume
    the same slices give as separate files."""
    volume = _sphere(ORIENTATIONS[orientation])
    expected = read_series(_write(volume, tmp_path / "files", ENCODINGS[encoding]))
    path = write_enhanced_ct(volume, tmp_path / "enhanced.dcm", _meta(), ENCODINGS[encoding])
    header = read_header(path)
    assert header.number_of_frames == SHAPE[0] and len(header.frame_positions) == SHAPE[0]
    assert header.pixel_problem is None
    got = read_series([path])
    np.testing.assert_array_equal(got.array, expected.array)
    assert got.spacing == pytest.approx(expected.spacing)
    np.testing.assert_allclose(got.origin, expected.origin, atol=1e-6)
    np.testing.assert_allclose(got.direction, expected.direction, atol=1e-9)


def test_enhanced_ct_frames_that_differ_or_lack_positions_are_explained(tmp_path: Path):
    path = write_enhanced_ct(_sphere(np.eye(3)), tmp_path / "e.dcm", _meta(), PixelEncoding())
    ds = pydicom.dcmread(path)
    frame = ds.PerFrameFunctionalGroupsSequence[3]
    frame.PixelValueTransformationSequence = [pydicom.Dataset()]
    frame.PixelValueTransformationSequence[0].RescaleIntercept = "0"
    frame.PixelValueTransformationSequence[0].RescaleSlope = "1"
    ds.save_as(tmp_path / "rescale.dcm")
    with pytest.raises(SeriesError, match="frames differ in RescaleIntercept"):
        read_series([tmp_path / "rescale.dcm"])
    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence
    ds.save_as(tmp_path / "legacy.dcm")
    with pytest.raises(SeriesError, match="without per-frame positions"):
        read_series([tmp_path / "legacy.dcm"])
