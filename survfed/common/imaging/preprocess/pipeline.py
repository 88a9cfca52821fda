"""The whole lung preprocessing of seed 003 (§III.B) on the CPU, and device dispatch.

``preprocess_volume(volume)`` runs, in order:

1. :mod:`.resample` — HU onto an isotropic patient-axis (LPS) grid;
2. :mod:`.binarize` — per-slice Gaussian, -600 HU, 2D component filter; :mod:`.components` —
   3D lung components, top slices, 3D hole filling;
3. :mod:`.separate` — left and right lung;
4. :mod:`.hull_dilate` — per-slice convex hulls, dilation, union;
5. :mod:`.normalize` — uint8, fill 170, bone band, crop;

and returns a :class:`~.result.PreprocessedScan`. ``device="cuda"`` runs the same steps with
torch on the GPU (:mod:`.torch_path`); ``"auto"`` picks CUDA when torch sees a device.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from survfed.common.imaging.preprocess.backend import NUMPY
from survfed.common.imaging.preprocess.binarize import filter_slice_components, smooth_threshold
from survfed.common.imaging.preprocess.components import fill_holes_3d, select_lungs
from survfed.common.imaging.preprocess.config import PreprocessConfig, PreprocessError
from survfed.common.imaging.preprocess.hull_dilate import final_mask
from survfed.common.imaging.preprocess.normalize import crop_box, normalize
from survfed.common.imaging.preprocess.resample import PatientGrid, resample_hu
from survfed.common.imaging.preprocess.result import PreprocessedScan
from survfed.common.imaging.preprocess.separate import separate_lungs
from survfed.common.imaging.volume import Volume

__all__ = [
    "DEVICES",
    "assemble_scan",
    "check_body",
    "field_of_view_contact_mm2",
    "preprocess_volume",
    "preprocess_volume_cpu",
    "resolve_device",
    "scan_warnings",
]

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
"""Accepted ``device`` values."""

MIN_BODY_FRACTION = 0.01
"""A scan needs at least this fraction of its measured voxels above -500 HU (a body)."""
SMALL_LUNGS_L = 1.0
"""Both lungs together below this volume get a warning (partial scan?)."""
FOV_CONTACT_MM2 = 100.0
"""Lung on the side edge of the field of view from this area (mm²) on gets a warning."""
END_SLICE_LUNG_MM2 = 1000.0
"""Lung in the top or bottom slice from this area (mm²) on gets a warning. Less is an airway (an
adult trachea's lumen is 1.5-5 cm², and on a coarse grid the mask can keep it up into the
neck) or the tip of an apex, not a chest cut short."""


def resolve_device(device: str) -> tuple[str, str | None]:
    """``(device, notice)``: ``"cpu"`` or ``"cuda"``, and a one-line notice for a fallback.

    Raises:
        ValueError: ``device`` is not one of :data:`DEVICES`, or ``"cuda"`` without a usable
            CUDA device.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cpu":
        return "cpu", None
    import torch

    available = torch.cuda.is_available()
    if device == "cuda":
        if not available:
            raise ValueError(
                "device 'cuda' was requested but torch sees no CUDA device "
                f"(torch {torch.__version__}); use --device cpu or auto"
            )
        return "cuda", None
    if available:
        return "cuda", None
    return "cpu", "no CUDA device found: preprocessing on the CPU"


def check_body(n_body: int, n_measured: int) -> None:
    """Raise :class:`PreprocessError` when the resampled grid holds no body.

    Args:
        n_body: voxels above -500 HU.
        n_measured: voxels with a value (not NaN).
    """
    if n_measured <= 0:
        raise PreprocessError("the resampled grid holds no measured voxel")
    if n_body / n_measured < MIN_BODY_FRACTION:
        raise PreprocessError(
            f"no body in the scan: only {100 * n_body / n_measured:.2f} % of the measured "
            "voxels are above -500 HU (all air?)"
        )


def field_of_view_contact_mm2(
    lungs: np.ndarray, measured: np.ndarray | None, spacing: float
) -> float:
    """Area (mm²) of lung that touches the side edge of the field of view, in the slice planes.

    A lung voxel touches it when one of its four in-plane neighbours lies outside the grid or
    was not measured (``measured`` False: outside the reconstruction circle or the scan). A
    small reconstruction field of view (a large patient, a heart-centred scan) cuts the lungs at
    the sides this way, as a short scan cuts them at the top or bottom.

    Args:
        lungs: bool ``(Z, Y, X)``.
        measured: bool ``(Z, Y, X)``, True where the smoothed image has a value; ``None`` =
            everywhere.
        spacing: the grid's voxel size in mm.
    """
    inside = np.ones(lungs.shape, dtype=bool) if measured is None else measured
    padded = np.pad(inside, ((0, 0), (1, 1), (1, 1)), constant_values=False)
    surrounded = (
        padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:]
    )
    return float(np.count_nonzero(lungs & ~surrounded)) * spacing**2


def scan_warnings(
    lungs: np.ndarray,
    separated: bool,
    config: PreprocessConfig,
    measured: np.ndarray | None = None,
) -> list[str]:
    """Warnings about a segmented scan (partial coverage, unseparated lungs, small lungs).

    Args:
        lungs: bool ``(Z, Y, X)``, both lungs after step 3.
        separated: whether step 3 found two lungs.
        config: the settings.
        measured: bool ``(Z, Y, X)``, where the smoothed image has a value (``None`` =
            everywhere); lungs next to an unmeasured voxel touch the field of view's edge.
    """
    notes: list[str] = []
    volume_l = float(np.count_nonzero(lungs)) * config.spacing_mm**3 / 1e6
    end_mm2 = END_SLICE_LUNG_MM2 / config.spacing_mm**2
    ends = [
        name
        for name, z in (("bottom", 0), ("top", lungs.shape[0] - 1))
        if np.count_nonzero(lungs[z]) >= end_mm2
    ]
    if ends:
        notes.append(
            f"the lungs reach the {' and '.join(ends)} slice of the scan: the scan may not cover "
            "the whole chest"
        )
    contact = field_of_view_contact_mm2(lungs, measured, config.spacing_mm)
    if contact >= FOV_CONTACT_MM2:
        notes.append(
            f"the lungs reach the side edge of the image ({contact / 100:.1f} cm² of lung on the "
            "edge of the field of view): the reconstruction may cut off part of the lungs"
        )
    if volume_l < SMALL_LUNGS_L:
        notes.append(
            f"small lung volume ({volume_l:.2f} L): the scan may cover only part of the chest"
        )
    if not separated:
        notes.append(
            "left and right lung could not be separated (no split within "
            f"{config.max_erosion_mm:g} mm of erosion): one convex hull per slice for both"
        )
    return notes


def assemble_scan(
    right_crop: np.ndarray,
    left_crop: np.ndarray,
    mask_crop: np.ndarray,
    image: np.ndarray,
    grid: PatientGrid,
    start: tuple[int, int, int],
    notes: list[str],
    config: PreprocessConfig,
    timings: dict[str, float],
) -> PreprocessedScan:
    """Build the :class:`PreprocessedScan` from the cropped arrays (host NumPy)."""
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[right_crop] = 1
    labels[left_crop] = 2
    slice_area = grid.shape[1] * grid.shape[2]
    fraction = (np.count_nonzero(labels, axis=(1, 2)) / slice_area).astype(np.float32)
    s = grid.spacing_mm
    origin = np.asarray(grid.origin_mm) + np.asarray(start[::-1], dtype=np.float64) * s
    return PreprocessedScan(
        image=image,
        spacing_mm=(s, s, s),
        origin_mm=tuple(float(v) for v in origin),  # type: ignore[arg-type]
        lung_labels=labels,
        mask=mask_crop,
        lung_fraction=fraction,
        crop_offset=start,
        resampled_shape=grid.shape,
        warnings=tuple(notes),
        fingerprint=config.fingerprint(),
        timings=dict(timings),
    )


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self._last
        self._last = now


def preprocess_volume_cpu(volume: Volume, config: PreprocessConfig) -> PreprocessedScan:
    """Steps 1-5 on the CPU (SimpleITK, SciPy, NumPy)."""
    timer = _Timer()
    hu, grid = resample_hu(volume, config)
    timer.lap("resample")
    with np.errstate(invalid="ignore"):
        check_body(int(np.count_nonzero(hu > -500.0)), int(np.count_nonzero(~np.isnan(hu))))
    air, smooth_measured = smooth_threshold(hu, config)
    air = filter_slice_components(air, config, NUMPY)
    timer.lap("binarize")
    found = select_lungs(air, config, valid=smooth_measured, backend=NUMPY)
    lungs = fill_holes_3d(found.mask, NUMPY)
    del air
    timer.lap("components")
    separation = separate_lungs(lungs, config, NUMPY)
    timer.lap("separate")
    union = separation.right | separation.left
    notes = scan_warnings(union, separation.separated, config, smooth_measured)
    start, stop = crop_box(union, config.margin_vox)
    crop = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    right, left = separation.right[crop], separation.left[crop]
    mask, _ = final_mask(right, left, config)
    timer.lap("hull_dilate")
    image = normalize(hu[crop], union[crop], mask, config)
    timer.lap("normalize")
    return assemble_scan(right, left, mask, image, grid, start, notes, config, timer.timings)


def preprocess_volume(
    volume: Volume,
    config: PreprocessConfig | None = None,
    *,
    device: str = "auto",
    notify: Callable[[str], Any] | None = None,
) -> PreprocessedScan:
    """Preprocess one CT volume (seed 003 §III.B) on the CPU or a CUDA GPU.

    Args:
        volume: the CT scan in HU with its geometry (any orientation and spacing).
        config: the settings (default :class:`PreprocessConfig`, the paper's).
        device: ``"auto"`` (CUDA when available, else the CPU with a one-line notice),
            ``"cpu"`` or ``"cuda"``.
        notify: receives one-line notices (device fallback); default: the module's logger.

    Returns:
        The :class:`PreprocessedScan`.

    Raises:
        PreprocessError: the volume is not usable (one slice, no body, no lungs, ...).
        ValueError: a bad ``device`` or ``config``; ``"cuda"`` without a device.
    """
    config = PreprocessConfig() if config is None else config
    if not isinstance(config, PreprocessConfig):
        raise TypeError(f"config must be a PreprocessConfig, got {type(config).__name__}")
    resolved, notice = resolve_device(device)
    if notice:
        (notify or log.info)(notice)
    if resolved == "cuda":
        from survfed.common.imaging.preprocess.torch_path import preprocess_volume_torch

        return preprocess_volume_torch(volume, config, device="cuda", notify=notify)
    return preprocess_volume_cpu(volume, config)
