"""Write a :class:`~survfed.common.imaging.volume.Volume` as a DICOM CT Image Storage series.

One file per slice ``k`` of ``volume.array``. The geometry follows the DICOM Image Plane module:

* ImageOrientationPatient = ``direction[:, 0]`` (row cosines, along increasing column index
  ``i``) then ``direction[:, 1]`` (column cosines, along increasing row index ``j``);
* ImagePositionPatient of slice ``k`` = ``origin + k * sk * direction[:, 2]`` (mm, LPS);
* PixelSpacing = ``sj \\ si`` (row spacing, then column spacing), SliceThickness = ``sk`` unless
  :attr:`SeriesMeta.slice_thickness_mm` says otherwise;
* SliceLocation = projection of the position on the slice normal ``row × column``.

Any orthonormal direction works (head-first, feet-first, oblique). Output is deterministic:
SOPInstanceUIDs are derived from the series UID and the slice index, and no clock time is written,
so the same inputs give byte-identical files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    RE_VALID_UID,
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from survfed.common.imaging.volume import Volume

__all__ = [
    "CT_IMAGE_STORAGE",
    "ENHANCED_CT_IMAGE_STORAGE",
    "SUPPORTED_TRANSFER_SYNTAXES",
    "PixelEncoding",
    "SeriesMeta",
    "hu_to_stored",
    "write_ct_series",
    "write_enhanced_ct",
]

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
"""SOP Class UID of CT Image Storage."""
ENHANCED_CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2.1")
"""SOP Class UID of Enhanced CT Image Storage (one multi-frame file per series)."""

SUPPORTED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    RLELossless,
    JPEGLSLossless,
    JPEG2000Lossless,
)
"""Transfer syntaxes :func:`write_ct_series` can write (all lossless)."""

_J2K_MIN_SIZE = 32
_UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's root, as generate_uid uses by default


@dataclass(frozen=True)
class SeriesMeta:
    """Patient, study and series identity written into every file of a series.

    Args:
        patient_id: PatientID, the key that links the series to ``clinical.csv``.
        study_date: StudyDate (and SeriesDate, ContentDate) as ``"YYYYMMDD"``.
        study_instance_uid: StudyInstanceUID.
        series_instance_uid: SeriesInstanceUID; SOPInstanceUIDs are derived from it.
        frame_of_reference_uid: FrameOfReferenceUID.
        series_number: SeriesNumber.
        study_time: StudyTime as ``"HHMMSS"``.
        patient_name: PatientName; empty means the patient_id.
        slice_thickness_mm: SliceThickness in mm; ``None`` means the slice spacing ``sk``.
        manufacturer: Manufacturer.
        kvp: KVP (peak kilovoltage).
        convolution_kernel: ConvolutionKernel.
        series_description: SeriesDescription.
    """

    patient_id: str
    study_date: str  # "YYYYMMDD"
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    series_number: int = 1
    study_time: str = "120000"
    patient_name: str = ""  # default: the patient_id
    slice_thickness_mm: float | None = None  # default: the slice spacing
    manufacturer: str = "survfed synthetic"
    kvp: float = 120.0
    convolution_kernel: str = "STANDARD"
    series_description: str = ""

    def __post_init__(self) -> None:
        if not self.patient_id or len(self.patient_id) > 64:
            raise ValueError(f"patient_id must be 1-64 characters, got {self.patient_id!r}")
        if len(self.study_date) != 8 or not self.study_date.isdigit():
            raise ValueError(f"study_date must be 'YYYYMMDD', got {self.study_date!r}")
        if not (len(self.study_time) >= 2 and self.study_time.replace(".", "").isdigit()):
            raise ValueError(f"study_time must be 'HHMMSS', got {self.study_time!r}")
        for name in ("study_instance_uid", "series_instance_uid", "frame_of_reference_uid"):
            value = getattr(self, name)
            if not isinstance(value, str) or not RE_VALID_UID.match(value):
                raise ValueError(f"{name} is not a valid DICOM UID: {value!r}")
        if self.slice_thickness_mm is not None and not self.slice_thickness_mm > 0:
            raise ValueError(
                f"slice_thickness_mm must be positive or None, got {self.slice_thickness_mm}"
            )
        if self.series_number < 0:
            raise ValueError(f"series_number must be >= 0, got {self.series_number}")


@dataclass(frozen=True)
class PixelEncoding:
    """How Hounsfield units become stored pixel values, and how the pixels are compressed.

    ``HU = stored * rescale_slope + rescale_intercept``.

    Args:
        pixel_representation: 1 = signed int16, 0 = unsigned uint16.
        rescale_slope: RescaleSlope (> 0).
        rescale_intercept: RescaleIntercept in HU.
        bits_stored: 12 or 16 (BitsAllocated is always 16).
        transfer_syntax_uid: one of :data:`SUPPORTED_TRANSFER_SYNTAXES`.
    """

    pixel_representation: int = 1  # 1 signed int16, 0 unsigned uint16
    rescale_slope: float = 1.0
    rescale_intercept: float = -1024.0
    bits_stored: int = 16  # 12 or 16
    transfer_syntax_uid: str = ExplicitVRLittleEndian

    def __post_init__(self) -> None:
        if self.pixel_representation not in (0, 1):
            raise ValueError(
                f"pixel_representation must be 0 or 1, got {self.pixel_representation}"
            )
        if not (np.isfinite(self.rescale_slope) and self.rescale_slope > 0):
            raise ValueError(f"rescale_slope must be positive, got {self.rescale_slope}")
        if not np.isfinite(self.rescale_intercept):
            raise ValueError(f"rescale_intercept must be finite, got {self.rescale_intercept}")
        if self.bits_stored not in (12, 16):
            raise ValueError(f"bits_stored must be 12 or 16, got {self.bits_stored}")
        if UID(self.transfer_syntax_uid) not in SUPPORTED_TRANSFER_SYNTAXES:
            names = ", ".join(uid.name for uid in SUPPORTED_TRANSFER_SYNTAXES)
            raise ValueError(
                f"transfer_syntax_uid {self.transfer_syntax_uid!r} is not supported; use one of "
                f"{names}"
            )

    @property
    def stored_range(self) -> tuple[int, int]:
        """Smallest and largest storable value."""
        if self.pixel_representation == 1:
            return -(2 ** (self.bits_stored - 1)), 2 ** (self.bits_stored - 1) - 1
        return 0, 2**self.bits_stored - 1

    @property
    def dtype(self) -> np.dtype:
        """numpy dtype of the stored pixels."""
        return np.dtype(np.int16 if self.pixel_representation == 1 else np.uint16)


def hu_to_stored(hu: np.ndarray, encoding: PixelEncoding) -> np.ndarray:
    """Convert Hounsfield units to stored values: round, then clip to the stored range.

    Args:
        hu: array of any shape, Hounsfield units.
        encoding: the pixel encoding.

    Returns:
        Array of the same shape, dtype ``encoding.dtype``.
    """
    low, high = encoding.stored_range
    stored = np.rint(
        (np.asarray(hu, dtype=np.float64) - encoding.rescale_intercept) / encoding.rescale_slope
    )
    return np.clip(stored, low, high).astype(encoding.dtype)


def _ds(value: float) -> str:
    """A Decimal String of at most 16 characters.

    pydicom's formatter can round up into one more digit (``-99.99999999999989`` becomes
    ``-100.000000000000``, 17 characters); formatting its own result again fixes that.
    """
    text = format_number_as_ds(float(value))
    return text if len(text) <= 16 else format_number_as_ds(float(text))


def _patient_position(direction: np.ndarray) -> str:
    """PatientPosition guessed from the row direction: FFS scanners flip the row axis."""
    return "FFS" if direction[0, 0] < 0 else "HFS"


def _base_dataset(volume: Volume, meta: SeriesMeta, encoding: PixelEncoding) -> Dataset:
    """The attributes shared by every slice of the series."""
    direction = volume.direction
    sk, sj, si = volume.spacing
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.StudyDate = meta.study_date
    ds.SeriesDate = meta.study_date
    ds.ContentDate = meta.study_date
    ds.StudyTime = meta.study_time
    ds.SeriesTime = meta.study_time
    ds.ContentTime = meta.study_time
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = meta.manufacturer
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = ""
    ds.SeriesDescription = meta.series_description
    ds.PatientName = meta.patient_name or meta.patient_id
    ds.PatientID = meta.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = _ds(meta.slice_thickness_mm if meta.slice_thickness_mm else sk)
    ds.KVP = _ds(meta.kvp)
    ds.ConvolutionKernel = meta.convolution_kernel
    ds.PatientPosition = _patient_position(direction)
    ds.StudyInstanceUID = meta.study_instance_uid
    ds.SeriesInstanceUID = meta.series_instance_uid
    ds.StudyID = ""
    ds.SeriesNumber = meta.series_number
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = [_ds(v) for v in (*direction[:, 0], *direction[:, 1])]
    ds.FrameOfReferenceUID = meta.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = volume.shape[1], volume.shape[2]
    ds.PixelSpacing = [_ds(sj), _ds(si)]
    ds.BitsAllocated = 16
    ds.BitsStored = encoding.bits_stored
    ds.HighBit = encoding.bits_stored - 1
    ds.PixelRepresentation = encoding.pixel_representation
    ds.WindowCenter = _ds(-600.0)
    ds.WindowWidth = _ds(1500.0)
    ds.RescaleIntercept = _ds(encoding.rescale_intercept)
    ds.RescaleSlope = _ds(encoding.rescale_slope)
    ds.RescaleType = "HU"
    return ds


def _set_pixels(
    ds: Dataset, sop_class: UID, sop_uid: str, hu: np.ndarray, encoding: PixelEncoding
) -> None:
    """File meta and PixelData of ``ds``: ``hu`` (one slice, or frames) stored as ``encoding``
    says, compressed (frame by frame) for the compressed transfer syntaxes."""
    file_meta = FileMetaDataset()
    file_meta.MediaStorageSOPClassUID = sop_class
    file_meta.MediaStorageSOPInstanceUID = sop_uid
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    file_meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    file_meta.ImplementationVersionName = f"PYDICOM {pydicom.__version__}"[:16]
    ds.file_meta = file_meta
    pixels = np.ascontiguousarray(hu_to_stored(hu, encoding))
    transfer_syntax = UID(encoding.transfer_syntax_uid)
    if transfer_syntax == ExplicitVRLittleEndian:
        ds.PixelData = pixels.tobytes()
        ds["PixelData"].VR = "OW"
    else:
        ds.compress(transfer_syntax, pixels, generate_instance_uid=False)
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid


def write_ct_series(
    volume: Volume,
    out_dir: Path,
    meta: SeriesMeta,
    encoding: PixelEncoding,
    *,
    file_names: Sequence[str] | None = None,
) -> list[Path]:
    """One CT Image Storage file per slice k of volume.array (HU), in out_dir (created).

    SOPInstanceUIDs are derived deterministically from the series UID and slice index
    (``pydicom.uid.generate_uid(entropy_srcs=[...])``), so the same inputs give the same bytes.
    HU are converted to stored values with the encoding (rounded, clipped to the stored range).

    Args:
        volume: ``(K, J, I)`` HU volume with its geometry; ``K >= 1``.
        out_dir: folder for the files (created with parents if missing).
        meta: patient/study/series identity.
        encoding: stored-value encoding and transfer syntax.
        file_names: optional ``K`` file names (relative to ``out_dir``, may contain
            sub-folders); default ``"{k:04d}.dcm"``.

    Returns:
        The ``K`` written paths, in slice order ``k``.
    """
    if not isinstance(volume, Volume):
        raise TypeError(f"volume must be a Volume, got {type(volume).__name__}")
    n_slices, rows, cols = volume.shape
    if n_slices < 1 or rows < 1 or cols < 1:
        raise ValueError(f"volume must have at least one voxel, got shape {volume.shape}")
    if rows > 65535 or cols > 65535:
        raise ValueError(f"volume rows/columns must be <= 65535, got shape {volume.shape}")
    transfer_syntax = UID(encoding.transfer_syntax_uid)
    if transfer_syntax == JPEG2000Lossless and min(rows, cols) < _J2K_MIN_SIZE:
        # OpenJPEG's encoder uses 6 resolution levels, which need 2**5 pixels per side.
        raise ValueError(
            f"JPEG 2000 needs at least {_J2K_MIN_SIZE} rows and columns, got shape {volume.shape}"
        )
    if not np.all(np.isfinite(volume.array)):
        raise ValueError("volume.array holds NaN or infinite values")
    if file_names is not None:
        file_names = list(file_names)
        if len(file_names) != n_slices:
            raise ValueError(
                f"file_names must hold one name per slice ({n_slices}), got {len(file_names)}"
            )
        if len(set(file_names)) != n_slices:
            raise ValueError("file_names must be unique")
    else:
        file_names = [f"{k:04d}.dcm" for k in range(n_slices)]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    base = _base_dataset(volume, meta, encoding)
    direction = volume.direction
    normal = np.cross(direction[:, 0], direction[:, 1])
    origin = np.asarray(volume.origin, dtype=np.float64)
    paths: list[Path] = []
    for k in range(n_slices):
        sop_uid = generate_uid(
            prefix=_UID_PREFIX, entropy_srcs=[meta.series_instance_uid, "slice", str(k)]
        )
        position = origin + k * volume.spacing[0] * direction[:, 2]
        ds = base.copy()
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.SliceLocation = _ds(float(position @ normal))

        _set_pixels(ds, CT_IMAGE_STORAGE, sop_uid, volume.array[k], encoding)

        path = out_dir / file_names[k]
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _item(**attributes: object) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def write_enhanced_ct(
    volume: Volume, path: Path, meta: SeriesMeta, encoding: PixelEncoding
) -> Path:
    """The whole volume as one Enhanced CT Image Storage file (multi-frame, one frame per slice).

    Geometry and rescale go into the functional groups, as scanners that export Enhanced CT
    write them: PixelMeasures (PixelSpacing, SliceThickness), PlaneOrientation and
    PixelValueTransformation (RescaleSlope/Intercept) shared by all frames, PlanePosition
    (ImagePositionPatient) and FrameContent per frame. ImageType is ``ORIGINAL\\PRIMARY\\VOLUME
    \\NONE``. Pixels are stored with ``encoding`` (compressed frame by frame when it says so).

    Args:
        volume: ``(K, J, I)`` HU volume; frame ``k`` is slice ``k``.
        path: the file to write (its folder is created).
        meta: patient/study/series identity.
        encoding: stored-value encoding and transfer syntax.

    Returns:
        ``path``.
    """
    if not isinstance(volume, Volume):
        raise TypeError(f"volume must be a Volume, got {type(volume).__name__}")
    if not np.all(np.isfinite(volume.array)):
        raise ValueError("volume.array holds NaN or infinite values")
    n_frames = volume.shape[0]
    ds = _base_dataset(volume, meta, encoding)
    for keyword in (
        "ImageOrientationPatient",
        "PixelSpacing",
        "SliceThickness",
        "RescaleIntercept",
        "RescaleSlope",
        "RescaleType",
        "WindowCenter",
        "WindowWidth",
    ):
        delattr(ds, keyword)  # they live in the functional groups
    ds.SOPClassUID = ENHANCED_CT_IMAGE_STORAGE
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    sop_uid = generate_uid(prefix=_UID_PREFIX, entropy_srcs=[meta.series_instance_uid, "mf"])
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = 1
    ds.NumberOfFrames = n_frames
    direction = volume.direction
    sk, sj, si = volume.spacing
    thickness = meta.slice_thickness_mm if meta.slice_thickness_mm else sk
    ds.SharedFunctionalGroupsSequence = [
        _item(
            PixelMeasuresSequence=[
                _item(PixelSpacing=[_ds(sj), _ds(si)], SliceThickness=_ds(thickness))
            ],
            PlaneOrientationSequence=[
                _item(
                    ImageOrientationPatient=[_ds(v) for v in (*direction[:, 0], *direction[:, 1])]
                )
            ],
            PixelValueTransformationSequence=[
                _item(
                    RescaleIntercept=_ds(encoding.rescale_intercept),
                    RescaleSlope=_ds(encoding.rescale_slope),
                    RescaleType="HU",
                )
            ],
        )
    ]
    origin = np.asarray(volume.origin, dtype=np.float64)
    ds.PerFrameFunctionalGroupsSequence = [
        _item(
            PlanePositionSequence=[
                _item(ImagePositionPatient=[_ds(v) for v in origin + k * sk * direction[:, 2]])
            ],
            FrameContentSequence=[_item(InStackPositionNumber=k + 1)],
        )
        for k in range(n_frames)
    ]
    _set_pixels(ds, ENHANCED_CT_IMAGE_STORAGE, sop_uid, volume.array, encoding)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
