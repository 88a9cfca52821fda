"""Read DICOM CT series: fast header scanning, geometry validation, and assembly into a Volume.

Three steps, so that a site with thousands of files can be checked without decoding pixels:

1. :func:`read_header` reads one file's header (never its pixels) into a :class:`DicomHeader`,
   and checks that the pixel data element is there and not cut short.
2. :func:`plan_series` validates the geometry of one series from headers alone and returns a
   :class:`SeriesPlan` (sorted slices, output grid, warnings) or raises :class:`SeriesError`.
3. :func:`load_series` decodes the pixels of a plan into a :class:`Volume` in Hounsfield units.

Decisions (documented here because they change what a site trains on):

* **Slice order** is the projection of ImagePositionPatient on the slice normal
  ``row × column`` (from ImageOrientationPatient), ascending; never the file name or
  InstanceNumber. ``Volume.direction[:, 2]`` is that normal, so it points from the first to the
  last slice and the direction matrix is right-handed (as in ITK's series reader).
* **Duplicates** (two files at the same position): the same SOPInstanceUID means the same
  image stored twice: one is kept and a warning is given. Different SOPInstanceUIDs: the pixels
  are compared; identical HU → one is kept with a warning, different → the series is unusable.
* **Spacing.** The nominal spacing is the median gap between sorted positions. A gap larger
  than ``max_gap_ratio`` (1.5) times the nominal spacing means missing slices: the series is
  unusable (interpolating over a hole would invent anatomy). Smaller unevenness (gaps differing
  by more than 1 % / 0.01 mm) is resampled onto a uniform grid spanning the same extent by
  linear interpolation along the normal, with a warning.
* **Gantry tilt** (slice positions drift in-plane, along a straight line, from slice to slice)
  is corrected by shifting each slice in-plane (linear interpolation, outside filled with the
  series minimum) so that the result is an orthogonal grid; a warning gives the tilt angle.
  Tilts above ``max_tilt_deg`` (45°) and positions that are not on one line are unusable.
* **Multi-frame** files (Enhanced CT: one file holding the series) are read frame by frame:
  each frame's position, and the orientation, pixel spacing and rescale, come from the
  functional groups (per frame, else shared), and every frame becomes one slice of the plan.
  Multi-frame files without per-frame positions are unusable.
* **Mixed** orientations, image sizes or pixel spacings, missing geometry attributes, colour
  images, and missing or truncated pixel data make the series unusable.
* **Rescale**: HU = stored × RescaleSlope + RescaleIntercept per slice (missing → 1 and 0).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    JPEGLSNearLossless,
)

from survfed.common.imaging.volume import Volume

__all__ = [
    "DicomHeader",
    "DicomReadError",
    "SeriesError",
    "SeriesPlan",
    "expand_frames",
    "load_series",
    "plan_series",
    "read_header",
    "read_series",
    "transfer_syntax_name",
]

_PIXEL_DATA_TAG = (0x7FE0, 0x0010)
# ImageType values that mark projection images (vendors' terms and the Enhanced CT ones)
_PROJECTION_TYPES = frozenset({"MIP", "MINIP", "MIN IP", "MAX IP", "PROJECTION IMAGE"})
_ITEM_TAG = (0xFFFE, 0xE000)
_SEQUENCE_DELIMITER_TAG = (0xFFFE, 0xE0DD)
_MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"
_ORIENTATION_ATOL = 1e-3  # direction cosines: equal / orthonormal within this
_DUPLICATE_ATOL_MM = 0.01  # two slices closer than this along the normal are duplicates
_UNEVEN_RTOL = 0.01  # gaps within 1 % (or 0.01 mm) of the nominal spacing count as even
_UNEVEN_ATOL_MM = 0.01


class DicomReadError(Exception):
    """A file could not be read as a DICOM image header; ``reason`` says why."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[Path, str]]:  # pickles (to worker processes)
        return type(self), (self.path, self.reason)


class SeriesError(Exception):
    """A series cannot be made into a volume; ``path`` names the offending file (or the first)."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[Path, str]]:  # pickles (to worker processes)
        return type(self), (self.path, self.reason)


@dataclass(frozen=True)
class DicomHeader:
    """What the catalogue needs from one DICOM file, read without decoding pixels.

    Lengths are mm, positions are patient LPS coordinates. Attributes missing from the file are
    ``None`` (geometry) or ``""`` (identifiers).
    """

    path: Path
    patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str
    study_date: str
    study_time: str
    series_number: int | None
    series_description: str
    image_type: tuple[str, ...]
    frame_of_reference_uid: str
    orientation: tuple[float, float, float, float, float, float] | None
    position: tuple[float, float, float] | None
    pixel_spacing: tuple[float, float] | None  # (row spacing = sj, column spacing = si)
    slice_thickness: float | None
    rows: int | None
    columns: int | None
    transfer_syntax_uid: str
    rescale_slope: float
    rescale_intercept: float
    instance_number: int | None
    number_of_frames: int
    samples_per_pixel: int
    pixel_problem: str | None  # None when pixel data is present and complete
    # multi-frame (Enhanced CT) files: each frame's ImagePositionPatient, from the functional
    # groups; :func:`expand_frames` turns the file into one header per frame (``frame`` set)
    frame_positions: tuple[tuple[float, float, float], ...] | None = None
    frame: int | None = None  # which frame of the file this header stands for

    @property
    def is_localizer(self) -> bool:
        """True for scout/localizer images (ImageType contains LOCALIZER)."""
        return "LOCALIZER" in self.image_type

    @property
    def is_projection(self) -> bool:
        """True for projection images (MIP, MinIP: a value of ImageType)."""
        return any(value in _PROJECTION_TYPES for value in self.image_type)

    @property
    def is_derived(self) -> bool:
        """True when ImageType's first value is DERIVED (reformats, projections, ...)."""
        return bool(self.image_type) and self.image_type[0] == "DERIVED"

    @property
    def is_axial(self) -> bool | None:
        """Whether the slice normal lies within 30° of the patient's z axis (None: no geometry)."""
        if self.orientation is None:
            return None
        row, col = np.asarray(self.orientation[:3]), np.asarray(self.orientation[3:])
        normal = np.cross(row, col)
        norm = float(np.linalg.norm(normal))
        return bool(norm > 0 and abs(float(normal[2])) / norm >= np.cos(np.radians(30.0)))

    @property
    def study_datetime(self) -> str:
        """``StudyDate + StudyTime`` as a sortable string (empty parts sort first)."""
        return f"{self.study_date:0<8}{self.study_time.split('.')[0]:0<6}"


@dataclass(frozen=True)
class SeriesPlan:
    """A validated series: slices sorted along the normal and the uniform output grid.

    Attributes:
        headers: the slices used, sorted by position along the normal (duplicates removed).
        offsets_mm: ``(n,)`` position of each slice along the normal, relative to the first.
        inplane_mm: ``(n, 2)`` in-plane drift of each slice relative to the first, along the
            row cosines (``i``) and column cosines (``j``); non-zero only with gantry tilt.
        direction: 3×3 output direction (columns: row cosines, column cosines, normal).
        origin: ``(x, y, z)`` of voxel ``[0, 0, 0]`` of the output volume.
        spacing: ``(sk, sj, si)`` of the output volume, mm.
        n_slices: number of output slices (differs from ``len(headers)`` when resampling).
        resample: True when the slices are unevenly spaced and are interpolated.
        tilt_deg: gantry tilt angle corrected by in-plane shifts (0 when none).
        warnings: human-readable notes on what was repaired (duplicates, resampling, tilt).
        dropped: duplicate files that were left out.
    """

    headers: tuple[DicomHeader, ...]
    offsets_mm: np.ndarray
    inplane_mm: np.ndarray
    direction: np.ndarray
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    n_slices: int
    resample: bool
    tilt_deg: float
    warnings: tuple[str, ...] = ()
    dropped: tuple[Path, ...] = field(default_factory=tuple)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Output ``(K, J, I)``."""
        first = self.headers[0]
        return (self.n_slices, int(first.rows or 0), int(first.columns or 0))


# ----------------------------------------------------------------------------- headers


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword, "")
    except Exception:  # malformed value: treat as absent
        return ""
    return "" if value is None else str(value).strip()


def _int(ds: pydicom.Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword, None)
        return None if value is None or value == "" else int(value)
    except Exception:
        return None


def _floats(ds: pydicom.Dataset, keyword: str, count: int) -> tuple[float, ...] | None:
    try:
        value = ds.get(keyword, None)
        if value is None or value == "":
            return None
        values = [float(v) for v in (value if isinstance(value, Sequence) else [value])]
    except Exception:
        return None
    if len(values) != count or not all(np.isfinite(values)):
        return None
    return tuple(values)


def _fragments_problem(fp, start: int, file_size: int, endian: str) -> str | None:
    """Walk the items of encapsulated pixel data from ``start`` to the sequence delimiter.

    Each item header (8 bytes: tag, length) is read and its value skipped, so the check costs a
    few reads per file however large the fragments, and elements that may follow the pixel data
    (such as DataSetTrailingPadding, which some scanners write) do not hide the delimiter.
    """
    position = start
    while True:
        fp.seek(position)
        head = fp.read(8)
        if len(head) < 8:
            return "compressed pixel data truncated (no end-of-sequence delimiter)"
        group, element = np.frombuffer(head[:4], dtype=f"{endian}u2")
        tag = (int(group), int(element))
        if tag == _SEQUENCE_DELIMITER_TAG:
            return None
        if tag != _ITEM_TAG:
            return (
                f"compressed pixel data damaged: tag ({tag[0]:04X},{tag[1]:04X}) where a "
                "fragment or the end of the fragments should be"
            )
        length = int(np.frombuffer(head[4:8], dtype=f"{endian}u4")[0])
        position += 8 + length
        if length == 0xFFFFFFFF or position > file_size:
            return "compressed pixel data truncated (a fragment runs past the end of the file)"


def _pixel_problem(fp, ds: pydicom.Dataset, file_size: int) -> str | None:
    """Check the element after the header (``fp`` sits on it) is complete pixel data.

    Deflated files are compressed as a whole after their meta header, so their pixel data
    cannot be found in the raw bytes: they are not checked here (decoding still is).
    """
    transfer_syntax = _text(getattr(ds, "file_meta", pydicom.Dataset()), "TransferSyntaxUID")
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        return None
    start = fp.tell()
    head = fp.read(12)
    if len(head) < 8:
        return "no pixel data (the file ends after the header; truncated?)"
    implicit, little = ds.original_encoding
    endian = "<" if little is not False else ">"
    group, element = np.frombuffer(head[:4], dtype=f"{endian}u2")
    if (int(group), int(element)) != _PIXEL_DATA_TAG:
        return "no pixel data (PixelData element missing)"
    if implicit:
        length = int(np.frombuffer(head[4:8], dtype=f"{endian}u4")[0])
        value_start = start + 8
    else:
        if len(head) < 12:
            return "pixel data truncated"
        length = int(np.frombuffer(head[8:12], dtype=f"{endian}u4")[0])
        value_start = start + 12
    if length == 0xFFFFFFFF:  # encapsulated
        return _fragments_problem(fp, value_start, file_size, endian)
    if length == 0:
        return "no pixel data (PixelData is empty)"
    if value_start + length > file_size:
        return f"pixel data truncated: {file_size - value_start} of {length} bytes present"
    rows, cols = _int(ds, "Rows") or 0, _int(ds, "Columns") or 0
    bits = _int(ds, "BitsAllocated") or 16
    frames = _int(ds, "NumberOfFrames") or 1
    samples = _int(ds, "SamplesPerPixel") or 1
    expected = (rows * cols * frames * samples * bits + 7) // 8
    if length < expected:
        return f"pixel data too short: {length} bytes for {rows}x{cols} pixels ({expected} needed)"
    return None


def read_header(path: Path | str) -> DicomHeader:
    """Read the header of one DICOM file without decoding its pixels.

    Args:
        path: file path.

    Returns:
        The header record; ``pixel_problem`` is set when pixel data is missing or truncated.

    Raises:
        DicomReadError: the file is not DICOM, cannot be opened, or its header is corrupt.
    """
    path = Path(path)
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as fp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(fp, stop_before_pixels=True)
            except InvalidDicomError:
                # no preamble/"DICM": accept only if it parses as a plausible raw data set
                fp.seek(0)
                try:
                    ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
                except Exception as exc:
                    raise DicomReadError(path, "not a DICOM file") from exc
                if "SOPClassUID" not in ds or "SeriesInstanceUID" not in ds:
                    raise DicomReadError(path, "not a DICOM file") from None
            media_class = _text(
                getattr(ds, "file_meta", pydicom.Dataset()), "MediaStorageSOPClassUID"
            )
            if media_class == _MEDIA_DIRECTORY:
                raise DicomReadError(path, "DICOMDIR (media directory), not an image")
            # a data set without the element is cut short or not an image; one with the
            # element blanked (some de-identifiers do) has the class in the file meta
            if "SOPClassUID" not in ds:
                raise DicomReadError(
                    path, "DICOM file without SOPClassUID (not an image, or header truncated)"
                )
            if not (_text(ds, "SOPClassUID") or media_class):
                raise DicomReadError(
                    path, "SOPClassUID is empty, in the data set and in the file meta"
                )
            pixel_problem = _pixel_problem(fp, ds, file_size)
    except DicomReadError:
        raise
    except OSError as exc:
        raise DicomReadError(path, f"cannot read file: {exc.strerror or exc}") from exc
    except Exception as exc:  # pydicom raises many types on corrupt headers
        raise DicomReadError(path, f"corrupt or truncated DICOM header ({exc})") from exc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _header_from(path, ds, pixel_problem)


def _header_from(path: Path, ds: pydicom.Dataset, pixel_problem: str | None) -> DicomHeader:
    """The header record of a parsed data set (values validated leniently)."""
    meta = getattr(ds, "file_meta", None) or pydicom.Dataset()
    transfer_syntax = _text(meta, "TransferSyntaxUID")
    try:
        image_type = ds.get("ImageType", ()) or ()
        image_type = (image_type,) if isinstance(image_type, str) else tuple(image_type)
    except Exception:  # malformed value: treat as absent
        image_type = ()
    groups = _functional_groups(ds)

    def value(name: str, keyword: str, count: int, default: object = None) -> object:
        """From the functional groups (multi-frame files), else the top-level attribute."""
        if name in groups:
            return groups[name]
        found = _floats(ds, keyword, count)
        return default if found is None else found if count > 1 else found[0]

    spacing = value("pixel_spacing", "PixelSpacing", 2)
    if groups.get("problem") and not pixel_problem:
        pixel_problem = groups["problem"]  # type: ignore[assignment]
    return DicomHeader(
        path=path,
        patient_id=_text(ds, "PatientID"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        # PS3.10: the file meta repeats these two; some de-identifiers blank the data set's
        sop_instance_uid=_text(ds, "SOPInstanceUID") or _text(meta, "MediaStorageSOPInstanceUID"),
        sop_class_uid=_text(ds, "SOPClassUID") or _text(meta, "MediaStorageSOPClassUID"),
        modality=_text(ds, "Modality").upper(),
        study_date=_text(ds, "StudyDate"),
        study_time=_text(ds, "StudyTime"),
        series_number=_int(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription"),
        image_type=tuple(str(v).upper() for v in image_type),
        frame_of_reference_uid=_text(ds, "FrameOfReferenceUID"),
        orientation=value("orientation", "ImageOrientationPatient", 6),  # type: ignore[arg-type]
        position=_floats(ds, "ImagePositionPatient", 3),  # type: ignore[arg-type]
        pixel_spacing=spacing if spacing and min(spacing) > 0 else None,  # type: ignore[arg-type]
        slice_thickness=value("slice_thickness", "SliceThickness", 1),  # type: ignore[arg-type]
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        transfer_syntax_uid=transfer_syntax,
        rescale_slope=value("rescale_slope", "RescaleSlope", 1, 1.0),  # type: ignore[arg-type]
        rescale_intercept=value(  # type: ignore[arg-type]
            "rescale_intercept", "RescaleIntercept", 1, 0.0
        ),
        instance_number=_int(ds, "InstanceNumber"),
        number_of_frames=_int(ds, "NumberOfFrames") or 1,
        samples_per_pixel=_int(ds, "SamplesPerPixel") or 1,
        pixel_problem=pixel_problem,
        frame_positions=groups.get("positions"),  # type: ignore[arg-type]
    )


def _group_value(item: pydicom.Dataset, sequence: str, keyword: str, count: int):
    """``item.<sequence>[0].<keyword>`` as ``count`` floats, or None."""
    try:
        inner = item.get(sequence)
        return _floats(inner[0], keyword, count) if inner else None
    except Exception:
        return None


def _functional_groups(ds: pydicom.Dataset) -> dict[str, object]:
    """Geometry and rescale of a multi-frame (Enhanced CT) file from its functional groups.

    Each value is looked up in the frame's own group first, then in the shared group. Returns
    ``{}`` for a file without per-frame groups; otherwise ``positions`` (one per frame),
    ``orientation``, ``pixel_spacing``, ``slice_thickness``, ``rescale_slope`` and
    ``rescale_intercept`` where found, and ``problem`` when frames differ in orientation,
    spacing or rescale (not supported: a series needs one of each) or a frame has no position.
    """
    try:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        if not per_frame:
            return {}
        shared_seq = ds.get("SharedFunctionalGroupsSequence")
        shared = shared_seq[0] if shared_seq else pydicom.Dataset()
    except Exception:
        return {"problem": "unreadable functional groups (multi-frame header)"}
    lookups = {
        "orientation": ("PlaneOrientationSequence", "ImageOrientationPatient", 6),
        "pixel_spacing": ("PixelMeasuresSequence", "PixelSpacing", 2),
        "slice_thickness": ("PixelMeasuresSequence", "SliceThickness", 1),
        "rescale_slope": ("PixelValueTransformationSequence", "RescaleSlope", 1),
        "rescale_intercept": ("PixelValueTransformationSequence", "RescaleIntercept", 1),
    }
    found: dict[str, set] = {name: set() for name in lookups}
    positions = []
    for index, frame in enumerate(per_frame):
        position = _group_value(frame, "PlanePositionSequence", "ImagePositionPatient", 3)
        if position is None:
            return {"problem": f"frame {index + 1} has no ImagePositionPatient"}
        positions.append(position)
        for name, (sequence, keyword, count) in lookups.items():
            value = _group_value(frame, sequence, keyword, count)
            found[name].add(value or _group_value(shared, sequence, keyword, count))
    out: dict[str, object] = {"positions": tuple(positions)}
    for name, values in found.items():
        if len(values) > 1:
            return {"problem": f"frames differ in {lookups[name][1]} (not supported)"}
        (value,) = values
        if value is not None:
            out[name] = value if len(value) > 1 else value[0]
    return out


def expand_frames(headers: Sequence[DicomHeader]) -> list[DicomHeader]:
    """One header per frame for multi-frame files with frame positions; others as they are."""
    out: list[DicomHeader] = []
    for header in headers:
        if header.frame_positions is None or header.frame is not None:
            out.append(header)
            continue
        out.extend(
            dataclasses.replace(header, position=position, frame=index, frame_positions=None)
            for index, position in enumerate(header.frame_positions)
        )
    return out


# ----------------------------------------------------------------------------- planning


def _require_geometry(header: DicomHeader) -> None:
    if header.pixel_problem:
        raise SeriesError(header.path, header.pixel_problem)
    if header.number_of_frames != 1 and header.frame is None:
        raise SeriesError(
            header.path,
            f"multi-frame image ({header.number_of_frames} frames) without per-frame positions "
            "(PerFrameFunctionalGroupsSequence) not supported",
        )
    for attribute, keyword in (
        ("orientation", "ImageOrientationPatient"),
        ("position", "ImagePositionPatient"),
        ("pixel_spacing", "PixelSpacing"),
        ("rows", "Rows"),
        ("columns", "Columns"),
    ):
        if getattr(header, attribute) is None:
            raise SeriesError(header.path, f"missing or invalid {keyword}")
    if header.samples_per_pixel != 1:
        raise SeriesError(
            header.path, f"not a grayscale image (SamplesPerPixel={header.samples_per_pixel})"
        )
    if header.rescale_slope == 0:
        raise SeriesError(header.path, "RescaleSlope is 0")


def _check_consistent(headers: Sequence[DicomHeader]) -> np.ndarray:
    """Same orientation, size and pixel spacing in every slice; return the 3×3 direction."""
    first = headers[0]
    ref_orientation = np.asarray(first.orientation)
    for header in headers[1:]:
        if np.max(np.abs(np.asarray(header.orientation) - ref_orientation)) > _ORIENTATION_ATOL:
            raise SeriesError(
                header.path,
                "mixed orientations in one series: ImageOrientationPatient "
                f"{list(header.orientation or ())} differs from {list(ref_orientation)} "
                f"in {first.path.name}",
            )
        if (header.rows, header.columns) != (first.rows, first.columns):
            raise SeriesError(
                header.path,
                f"mixed image sizes in one series: {header.rows}x{header.columns} vs "
                f"{first.rows}x{first.columns} in {first.path.name}",
            )
        if not np.allclose(header.pixel_spacing, first.pixel_spacing, rtol=1e-3, atol=1e-4):
            raise SeriesError(
                header.path,
                f"mixed pixel spacings in one series: {list(header.pixel_spacing or ())} vs "
                f"{list(first.pixel_spacing or ())} in {first.path.name}",
            )
    row, col = ref_orientation[:3], ref_orientation[3:]
    if (
        abs(np.linalg.norm(row) - 1) > _ORIENTATION_ATOL
        or abs(np.linalg.norm(col) - 1) > _ORIENTATION_ATOL
        or abs(row @ col) > _ORIENTATION_ATOL
    ):
        raise SeriesError(
            first.path,
            f"ImageOrientationPatient {list(ref_orientation)} is not two orthogonal unit vectors",
        )
    row = row / np.linalg.norm(row)
    col = col - (col @ row) * row
    col = col / np.linalg.norm(col)
    return np.stack([row, col, np.cross(row, col)], axis=1)


def _read_full(path: Path) -> pydicom.Dataset:
    """Read a whole file, also a bare data set without preamble or file meta."""
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        ds = pydicom.dcmread(path, force=True)
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        if little is False:
            ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
        else:
            ds.file_meta.TransferSyntaxUID = (
                ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
            )
    return ds


_PREFERRED_DECODER = {JPEGLSLossless: "pyjpegls", JPEGLSNearLossless: "pyjpegls"}
"""pydicom decoding plugin tried first per transfer syntax, where pydicom's own first choice is
slower: for JPEG-LS it tries pylibjpeg (libjpeg) before pyjpegls (CharLS), which decodes a
512 × 512 CT slice in 6 ms instead of 24 (the same pixels: both are exact). Any other decoder
pydicom has is still tried when the preferred one is missing or fails."""


@functools.cache
def _has_decoder(transfer_syntax: str, plugin: str) -> bool:
    from pydicom.pixels import get_decoder

    try:
        return plugin in get_decoder(UID(transfer_syntax)).available_plugins
    except (NotImplementedError, ValueError):
        return False


def _stored_pixels(ds: pydicom.Dataset) -> np.ndarray:
    """The stored values of a slice, decoded by the preferred decoder where there is one."""
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    plugin = _PREFERRED_DECODER.get(syntax)
    if plugin is not None and _has_decoder(syntax, plugin):
        try:
            ds.pixel_array_options(decoding_plugin=plugin)
            return ds.pixel_array
        except Exception:  # let pydicom's other decoders try (and name the failure)
            ds.pixel_array_options(decoding_plugin="")
    return ds.pixel_array


def _decode_frames(header: DicomHeader) -> np.ndarray:
    """Decode every frame of ``header``'s file into float32 HU, ``(frames, rows, columns)``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stored = _stored_pixels(_read_full(header.path))
    except Exception as exc:
        raise SeriesError(header.path, f"cannot decode pixel data ({exc})") from exc
    if stored.ndim == 2:  # one frame
        stored = stored[None]
    expected = (header.number_of_frames, header.rows, header.columns)
    if stored.shape != expected:
        raise SeriesError(
            header.path, f"decoded pixel array has shape {stored.shape}, expected {expected}"
        )
    hu = stored.astype(np.float32)
    hu *= np.float32(header.rescale_slope)
    hu += np.float32(header.rescale_intercept)
    return hu


def _decode_hu(header: DicomHeader) -> np.ndarray:
    """Decode one slice (or one frame: the whole file is decoded, so :func:`load_series`
    decodes a multi-frame file once) into float32 HU, ``(rows, columns)``."""
    return _decode_frames(header)[header.frame or 0]


def _short(path: Path) -> str:
    """``folder/name``: enough to find a file next to its series."""
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def _remove_duplicates(
    headers: list[DicomHeader], offsets: np.ndarray, compare_pixels: bool
) -> tuple[list[int], list[str], list[Path]]:
    """Indices to keep (in sorted order), warnings, and dropped paths."""
    keep: list[int] = []
    notes: list[str] = []
    same_image: list[str] = []
    dropped: list[Path] = []
    index = 0
    while index < len(headers):
        group = [index]
        while (
            group[-1] + 1 < len(headers)
            and offsets[group[-1] + 1] - offsets[group[0]] < _DUPLICATE_ATOL_MM
        ):
            group.append(group[-1] + 1)
        index = group[-1] + 1
        keep.append(group[0])
        if len(group) == 1:
            continue
        names = ", ".join(_short(headers[g].path) for g in group)
        first = headers[group[0]]
        where = f"{offsets[group[0]]:.2f} mm"
        if all(headers[g].sop_instance_uid == first.sop_instance_uid for g in group):
            same_image.append(f"duplicate file of the same image at {where} ({names}); kept one")
        elif compare_pixels:
            reference = _decode_hu(first)
            for g in group[1:]:
                if not np.array_equal(reference, _decode_hu(headers[g])):
                    raise SeriesError(
                        headers[g].path,
                        f"duplicate slice position {offsets[g]:.2f} mm along the normal "
                        f"with different pixels ({names})",
                    )
            notes.append(f"duplicate slice with identical pixels at {where} ({names}); kept one")
        else:
            notes.append(f"duplicate slice position {where} ({names}); kept the first")
        dropped.extend(headers[g].path for g in group[1:])
    if len(same_image) > 3:  # e.g. a whole series exported twice: one line, not hundreds
        examples = "; ".join(same_image[:2])
        same_image = [
            f"{len(same_image)} duplicate files of the same images, kept one of each "
            f"(e.g. {examples})"
        ]
    return keep, same_image + notes, dropped


def plan_series(
    headers: Sequence[DicomHeader],
    *,
    max_gap_ratio: float = 1.5,
    max_tilt_deg: float = 45.0,
    compare_pixels: bool = True,
) -> SeriesPlan:
    """Validate one series' geometry from its headers and plan the output grid.

    Args:
        headers: the files of one series, in any order.
        max_gap_ratio: a gap between neighbouring slices larger than this times the median gap
            is treated as missing slices (the series is unusable). Must be > 1.
        max_tilt_deg: largest gantry tilt that is corrected; larger is unusable.
        compare_pixels: decode slices that share a position but not a SOPInstanceUID to tell
            harmless copies from conflicting images (only those few files are decoded).

    Returns:
        The plan; see :class:`SeriesPlan`.

    Raises:
        SeriesError: the series cannot be made into a volume; ``path`` names a file at fault.
    """
    if not headers:
        raise ValueError("headers must not be empty")
    if not max_gap_ratio > 1:
        raise ValueError(f"max_gap_ratio must be > 1, got {max_gap_ratio}")
    headers = expand_frames(headers)
    for header in headers:
        _require_geometry(header)
    direction = _check_consistent(headers)
    normal = direction[:, 2]
    positions = np.asarray([h.position for h in headers], dtype=np.float64)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    sorted_headers = [headers[o] for o in order]
    positions = positions[order]
    offsets = along[order] - along[order][0]

    keep, notes, dropped = _remove_duplicates(sorted_headers, offsets, compare_pixels)
    sorted_headers = [sorted_headers[k] for k in keep]
    positions, offsets = positions[keep], offsets[keep] - offsets[keep][0]
    first = sorted_headers[0]
    sj, si = first.pixel_spacing  # type: ignore[misc]

    # In-plane drift of each slice (gantry tilt): must be a straight line in the offset.
    drift = positions - positions[0]
    inplane = np.stack([drift @ direction[:, 0], drift @ direction[:, 1]], axis=1)
    tilt_deg = 0.0
    if len(sorted_headers) > 1 and np.max(np.abs(inplane)) > 1e-3 * min(si, sj):
        slope = (offsets @ inplane) / (offsets @ offsets)  # (2,) mm in-plane per mm along
        residual = np.max(np.linalg.norm(inplane - offsets[:, None] * slope[None, :], axis=1))
        if residual > 0.1 * min(si, sj):
            raise SeriesError(
                first.path,
                "slice positions do not lie on a line (in-plane offsets up to "
                f"{np.max(np.linalg.norm(inplane, axis=1)):.2f} mm, {residual:.2f} mm off a "
                "straight gantry-tilt line)",
            )
        tilt_deg = float(np.degrees(np.arctan(np.linalg.norm(slope))))
        if tilt_deg > max_tilt_deg:
            raise SeriesError(
                first.path, f"gantry tilt {tilt_deg:.1f} deg exceeds {max_tilt_deg:.1f} deg"
            )
        notes.append(f"gantry tilt of {tilt_deg:.1f} deg corrected by in-plane resampling")

    n = len(sorted_headers)
    resample = False
    if n == 1:
        sk = first.slice_thickness if first.slice_thickness and first.slice_thickness > 0 else 1.0
        n_out = 1
    else:
        gaps = np.diff(offsets)
        nominal = float(np.median(gaps))
        worst = int(np.argmax(gaps))
        if gaps[worst] > max_gap_ratio * nominal:
            raise SeriesError(
                sorted_headers[worst + 1].path,
                f"missing slice(s): gap of {gaps[worst]:.2f} mm between "
                f"{sorted_headers[worst].path.name} and {sorted_headers[worst + 1].path.name} "
                f"where the spacing is {nominal:.2f} mm",
            )
        extent = float(offsets[-1])
        if np.max(np.abs(gaps - nominal)) <= max(_UNEVEN_ATOL_MM, _UNEVEN_RTOL * nominal):
            n_out = n
            sk = extent / (n - 1)
        else:
            resample = True
            n_out = round(extent / nominal) + 1
            sk = extent / (n_out - 1)
            odd = int(np.argmax(np.abs(gaps - nominal)))
            notes.append(
                f"uneven slice spacing ({gaps.min():.2f}-{gaps.max():.2f} mm, e.g. "
                f"{gaps[odd]:.2f} mm before {sorted_headers[odd + 1].path.name}); resampled "
                f"linearly to {n_out} slices at {sk:.3f} mm"
            )
    return SeriesPlan(
        headers=tuple(sorted_headers),
        offsets_mm=offsets,
        inplane_mm=inplane,
        direction=direction,
        origin=tuple(float(v) for v in positions[0]),  # type: ignore[arg-type]
        spacing=(float(sk), float(sj), float(si)),
        n_slices=n_out,
        resample=resample,
        tilt_deg=tilt_deg,
        warnings=tuple(notes),
        dropped=tuple(dropped),
    )


# ----------------------------------------------------------------------------- loading


def _interpolate_slices(stack: np.ndarray, offsets: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``stack (n, J, I)`` at ``offsets (n,)`` to ``targets (m,)``."""
    lower = np.clip(np.searchsorted(offsets, targets, side="right") - 1, 0, len(offsets) - 2)
    weight = (targets - offsets[lower]) / (offsets[lower + 1] - offsets[lower])
    weight = np.clip(weight, 0.0, 1.0).astype(np.float32)[:, None, None]
    return (1 - weight) * stack[lower] + weight * stack[lower + 1]


_THREADED_DECODE_MIN_PIXELS = 256 * 256
"""Slices are decoded on threads only from this size: a 512 × 512 slice is decoded about 1.5 ×
faster on 2 threads than on one, a 128 × 128 slice twice as slowly (the work released from the
interpreter lock is then too short to pay for handing slices between threads)."""


def load_series(plan: SeriesPlan) -> Volume:
    """Decode a planned series into a Hounsfield-unit volume.

    Args:
        plan: from :func:`plan_series`.

    Returns:
        ``Volume`` with ``array (K, J, I)`` float32 HU and the plan's geometry.

    Raises:
        SeriesError: a file cannot be decoded or has an unexpected size; names the file.
    """
    n = len(plan.headers)
    first = plan.headers[0]
    stack = np.empty((n, int(first.rows or 0), int(first.columns or 0)), dtype=np.float32)
    workers = min(8, os.cpu_count() or 1)
    pixels = int(first.rows or 0) * int(first.columns or 0)
    if any(h.frame is not None for h in plan.headers):  # multi-frame: each file decoded once
        files: dict[Path, np.ndarray] = {}
        for index, header in enumerate(plan.headers):
            if header.frame is None:
                stack[index] = _decode_hu(header)
                continue
            if header.path not in files:
                files[header.path] = _decode_frames(header)
            stack[index] = files[header.path][header.frame]
        del files
    elif n >= 16 and workers > 1 and pixels >= _THREADED_DECODE_MIN_PIXELS:
        # decoders (CharLS, OpenJPEG, RLE) and NumPy release the GIL for much of their work
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for index, hu in enumerate(pool.map(_decode_hu, plan.headers)):
                stack[index] = hu
    else:
        for index, header in enumerate(plan.headers):
            stack[index] = _decode_hu(header)
    if plan.tilt_deg > 0:
        from scipy.ndimage import shift

        _, sj, si = plan.spacing
        fill = float(stack.min())
        for index in range(1, n):
            along_i, along_j = plan.inplane_mm[index]
            stack[index] = shift(
                stack[index], (along_j / sj, along_i / si), order=1, mode="constant", cval=fill
            )
    if plan.resample:
        targets = np.arange(plan.n_slices, dtype=np.float64) * plan.spacing[0]
        stack = _interpolate_slices(stack, plan.offsets_mm, targets)
    return Volume(
        array=np.ascontiguousarray(stack, dtype=np.float32),
        spacing=plan.spacing,
        origin=plan.origin,
        direction=plan.direction,
    )


def read_series(paths: Sequence[Path | str], **plan_options: float | bool) -> Volume:
    """Read the files of one series into a HU volume (headers, plan, decode).

    Args:
        paths: the files of one series, any order.
        **plan_options: passed to :func:`plan_series`.

    Raises:
        DicomReadError: a file is not readable DICOM.
        SeriesError: the series cannot be made into a volume.
    """
    if not paths:
        raise ValueError("paths must not be empty")
    headers = [read_header(p) for p in paths]
    series = {h.series_instance_uid for h in headers}
    if len(series) > 1:
        raise SeriesError(headers[0].path, f"files belong to {len(series)} different series")
    return load_series(plan_series(headers, **plan_options))  # type: ignore[arg-type]


def transfer_syntax_name(uid: str) -> str:
    """Readable name of a transfer syntax UID (the UID itself when unknown)."""
    name = UID(uid).name if uid else ""
    return name or uid or "unknown"
