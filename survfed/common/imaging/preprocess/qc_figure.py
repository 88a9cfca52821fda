"""A quality-control picture of one preprocessed scan: slices of the crop with the lung contours.

Written as ``<id>_qc.png`` by ``survfed preprocess --export`` next to the NIfTI files
(:mod:`.export`), so a person checking a site can glance at one small PNG per patient instead of
opening every scan in 3D Slicer.

The picture (:data:`FIGSIZE_IN` at :data:`DPI`: 960 × 560 pixels):

* a title line: the patient ID, the volume of the right and the left lung (step 3) in litres,
  the crop's size and voxel spacing; below it the scan's :attr:`~.PreprocessedScan.warnings`,
  wrapped, in orange (:data:`WARNING_COLOUR`);
* :data:`N_AXIAL` axial slices spread evenly over the slices that hold lung, the topmost (largest
  z, towards the head) first, each labelled with its patient z in mm;
* a coronal slice through the lungs' centre of mass (its patient y in mm) and a sagittal slice
  through the plane that holds the most lung (its patient x in mm, and which lung it cuts: the
  lungs' centre lies in the mediastinum, where a sagittal slice shows no lung), both head up;
* the grey crop (``image``, 0 black to 255 white) with the contours of the right lung (red), the
  left lung (blue) and the final mask of step 4 (yellow), and a legend of the contours drawn.

Orientation. The crop is on the LPS grid, array ``[z, y, x]``: x grows towards the patient's
left, y towards the back, z towards the head. Axial slices are drawn with column ``x`` growing to
the right and row ``y`` growing downwards, so the patient's right is on the viewer's left and the
front is at the top: the radiological convention, with no flip. The coronal slice draws x the
same way (patient's right on the viewer's left) with z flipped so the head is at the top; the
sagittal slice has the front on the left and the head at the top. Panels are drawn in mm
(``extent``), so a crop with anisotropic spacing keeps its true proportions. Small letters in
each panel (R/L, A/P) name the sides.

Degenerate scans. :func:`~.pipeline.preprocess_volume` never returns a scan without lung (step 2b
raises :class:`~.PreprocessError` "no lung found", and the crop is the lungs' bounding box), but
it does return scans whose left lung is empty (no left/right split: the whole mask is labelled
right, with a warning); a :class:`~.PreprocessedScan` built or loaded by hand may hold no lung at
all. Such scans are drawn, not refused: with no lung at all the axial slices are spread over the
whole crop, the coronal and sagittal slices go through its middle, and a warning line says "the
scan holds no lung voxels"; a contour that is empty is neither drawn nor listed in the legend.
A crop with fewer lung slices than :data:`N_AXIAL` shows each of them once and leaves the other
axial panels empty; a crop of one slice still gets its (one voxel thin) coronal and sagittal
panels. Outlines that meet the edge of the crop are closed along it.

Matplotlib's object-oriented API on the Agg canvas (``Figure`` + ``FigureCanvasAgg``, no
``pyplot``): nothing global is touched, so it is safe in the worker processes of
:func:`survfed.client.preprocess_cache.preprocess_site`. Text that comes from the data (patient
ID, warnings) is drawn with ``parse_math=False`` so a ``$`` in it is not read as mathtext.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from survfed.common.imaging.preprocess.export import export_stem
from survfed.common.imaging.preprocess.result import PreprocessedScan

__all__ = [
    "DPI",
    "FIGSIZE_IN",
    "LEFT_COLOUR",
    "MASK_COLOUR",
    "N_AXIAL",
    "RIGHT_COLOUR",
    "WARNING_COLOUR",
    "qc_figure",
    "save_qc_png",
]

FIGSIZE_IN = (12.0, 7.0)
"""Width and height of the picture in inches."""
DPI = 80
"""Dots per inch: ``FIGSIZE_IN`` × ``DPI`` = 960 × 560 pixels."""
N_AXIAL = 6
"""Axial slices shown (2 rows of 3)."""
RIGHT_COLOUR = (1.0, 0.0, 0.0)
"""Contour of the right lung (label 1): red."""
LEFT_COLOUR = (0.0, 0.0, 1.0)
"""Contour of the left lung (label 2): blue."""
MASK_COLOUR = (1.0, 1.0, 0.0)
"""Contour of the final mask of step 4: yellow."""
WARNING_COLOUR = "#d95f02"
"""The scan's warnings: orange (none of the contour colours)."""

_MAX_WARNING_LINES = 4
_WRAP_CHARS = 150
_LINE_WIDTH = 1.3
_TITLE_PT = 11.0
_TEXT_PT = 9.0


def _check_scan(scan: object) -> PreprocessedScan:
    if not isinstance(scan, PreprocessedScan):
        raise TypeError(f"scan must be a PreprocessedScan, got {type(scan).__name__}")
    if min(scan.shape) < 1:
        raise ValueError(f"scan must hold at least one voxel, got a crop of shape {scan.shape}")
    return scan


def _check_patient_id(patient_id: object) -> str:
    if not isinstance(patient_id, str):
        raise TypeError(f"patient_id must be a str, got {type(patient_id).__name__}")
    return patient_id


def _axial_indices(lung_z: np.ndarray, n_z: int, n: int = N_AXIAL) -> list[int]:
    """Up to ``n`` distinct slice indices, top (largest z) first.

    The centres of ``n`` equal bands between the lowest and the highest lung slice (the whole
    crop when ``lung_z`` is empty), so the first and last panels are not the lungs' tips.
    """
    lo, hi = (int(lung_z[0]), int(lung_z[-1])) if lung_z.size else (0, n_z - 1)
    picks = np.rint(lo + (np.arange(n) + 0.5) / n * (hi - lo)).astype(int)
    return sorted({int(k) for k in picks}, reverse=True)


def _edges(lo_mm: float, step_mm: float, n: int) -> tuple[float, float]:
    """Edges in mm of ``n`` voxels whose first centre is at ``lo_mm``."""
    return lo_mm - step_mm / 2.0, lo_mm + (n - 0.5) * step_mm


def _outline(
    region: np.ndarray, lo_mm: tuple[float, float], step_mm: tuple[float, float]
) -> list[np.ndarray]:
    """Contour lines (level 0.5, between voxels) of a 2D bool ``region`` ``(rows, cols)``, in mm.

    ``region`` is padded with a row and column of False on each side, so an outline that meets
    the edge of the crop is closed there. Voxel ``[r, c]`` lies at ``(lo_h + c step_h,
    lo_v + r step_v)`` where ``lo_mm`` = ``(lo_h, lo_v)`` and ``step_mm`` = ``(step_h, step_v)``.
    (:mod:`contourpy` directly: several times faster than ``Axes.contour`` on 300×300 slices.)
    """
    import contourpy

    padded = np.pad(region.astype(np.float32), 1)
    lines = contourpy.contour_generator(z=padded, line_type="Separate").lines(0.5)
    scale = np.asarray(step_mm)
    shift = np.asarray(lo_mm) - scale  # the padding moves every index by one
    return [shift + np.asarray(line) * scale for line in lines]


def _draw(
    ax: Axes,
    grey: np.ndarray,
    labels: np.ndarray,
    mask: np.ndarray,
    lo_mm: tuple[float, float],
    step_mm: tuple[float, float],
    rows_down: bool,
) -> None:
    """One panel: the grey slice ``(rows, cols)`` and the contours of the lungs and the mask.

    Column ``c`` is drawn at ``lo_h + c step_h`` mm from left to right, row ``r`` at
    ``lo_v + r step_v`` mm, growing downwards when ``rows_down`` (axial: front at the top), else
    upwards (coronal, sagittal: head at the top).
    """
    n_rows, n_cols = grey.shape
    h_edges = _edges(lo_mm[0], step_mm[0], n_cols)
    v_edges = _edges(lo_mm[1], step_mm[1], n_rows)
    # imshow's extent is (left, right, bottom, top) in data units
    extent = (*h_edges, *(v_edges[::-1] if rows_down else v_edges))
    ax.imshow(
        grey,
        cmap="gray",
        vmin=0,
        vmax=255,
        extent=extent,
        origin="upper" if rows_down else "lower",
        interpolation="antialiased",
        aspect="equal",
    )
    for region, colour in (
        (mask, MASK_COLOUR),
        (labels == 1, RIGHT_COLOUR),
        (labels == 2, LEFT_COLOUR),
    ):
        if region.any():
            lines = _outline(region, lo_mm, step_mm)
            ax.add_collection(
                LineCollection(lines, colors=[colour], linewidths=_LINE_WIDTH), autolim=False
            )
    ax.set_xlim(*h_edges)
    ax.set_ylim(*(v_edges[::-1] if rows_down else v_edges))
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _sides(ax: Axes, left: str, right: str) -> None:
    style = {"color": "white", "fontsize": 7, "va": "center", "transform": ax.transAxes}
    ax.text(0.02, 0.5, left, ha="left", **style)
    ax.text(0.98, 0.5, right, ha="right", **style)


def _header(scan: PreprocessedScan, patient_id: str, right_l: float, left_l: float) -> str:
    z, y, x = scan.shape
    spacing = "×".join(f"{s:g}" for s in scan.spacing_mm)
    lungs = f"right lung {right_l:.2f} L, left lung {left_l:.2f} L"
    return f"{patient_id} — {lungs} — crop {z}×{y}×{x} voxels of {spacing} mm"


def _warning_lines(warnings: tuple[str, ...]) -> list[str]:
    lines: list[str] = []
    for warning in warnings:
        lines.extend(textwrap.wrap(f"warning: {warning}", _WRAP_CHARS, subsequent_indent="  "))
    if len(lines) > _MAX_WARNING_LINES:
        extra = len(lines) - (_MAX_WARNING_LINES - 1)
        lines = [*lines[: _MAX_WARNING_LINES - 1], f"… and {extra} more line(s) of warnings"]
    return lines


def qc_figure(scan: PreprocessedScan, patient_id: str) -> Figure:
    """The quality-control picture of the module docstring.

    Args:
        scan: a preprocessed scan (``image`` uint8 ``(Z, Y, X)``, ``lung_labels`` 0/1/2,
            ``mask`` bool, on the crop grid of ``spacing_mm`` (z, y, x) mm).
        patient_id: shown in the title (as is).

    Returns:
        A :class:`~matplotlib.figure.Figure` of :data:`FIGSIZE_IN` inches at :data:`DPI` on an
        Agg canvas (``fig.canvas``), ready for ``savefig``.

    Raises:
        TypeError: ``scan`` is not a :class:`PreprocessedScan`, ``patient_id`` not a str.
        ValueError: the crop holds no voxel.
    """
    scan = _check_scan(scan)
    patient_id = _check_patient_id(patient_id)
    image, labels, mask = scan.image, scan.lung_labels, scan.mask
    n_z, n_y, n_x = scan.shape
    sz, sy, sx = scan.spacing_mm
    x0, y0, z0 = scan.origin_mm

    n_right, n_left = (int(np.count_nonzero(labels == v)) for v in (1, 2))
    voxel_l = float(np.prod(scan.spacing_mm)) / 1e6  # mm³ -> L
    right_l, left_l = n_right * voxel_l, n_left * voxel_l
    lungs = labels > 0
    per_z = np.count_nonzero(lungs, axis=(1, 2))
    per_y = np.count_nonzero(lungs, axis=(0, 2))
    per_x = np.count_nonzero(lungs, axis=(0, 1))
    if per_z.any():
        axial = _axial_indices(np.flatnonzero(per_z), n_z)
        j = int(np.rint(np.average(np.arange(n_y), weights=per_y)))  # centre of mass in y
        i = int(np.argmax(per_x))  # the sagittal plane with the most lung
    else:
        axial = _axial_indices(np.empty(0, dtype=int), n_z)
        j, i = n_y // 2, n_x // 2

    notes = _warning_lines(scan.warnings)
    if not per_z.any():
        notes = ["warning: the scan holds no lung voxels", *notes]

    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    height_pt = FIGSIZE_IN[1] * 72.0
    fig.text(
        0.01,
        1.0 - 6.0 / height_pt,
        _header(scan, patient_id, right_l, left_l),
        fontsize=_TITLE_PT,
        fontweight="bold",
        va="top",
        ha="left",
        parse_math=False,
    )
    used_pt = 6.0 + 1.3 * _TITLE_PT
    if notes:
        fig.text(
            0.01,
            1.0 - used_pt / height_pt,
            "\n".join(notes),
            fontsize=_TEXT_PT,
            color=WARNING_COLOUR,
            va="top",
            ha="left",
            linespacing=1.2,
            parse_math=False,
        )
        used_pt += 1.2 * _TEXT_PT * len(notes) * 1.15
    top = 1.0 - (used_pt + 18.0) / height_pt
    grid = fig.add_gridspec(
        2, 4, left=0.01, right=0.99, bottom=0.06, top=top, wspace=0.04, hspace=0.14
    )

    for n in range(N_AXIAL):
        ax = fig.add_subplot(grid[n // 3, n % 3])
        if n >= len(axial):
            ax.set_axis_off()
            continue
        k = axial[n]
        _draw(ax, image[k], labels[k], mask[k], (x0, y0), (sx, sy), rows_down=True)
        _sides(ax, "R", "L")
        ax.set_title(f"axial z {z0 + k * sz:.1f} mm", fontsize=_TEXT_PT, pad=2)

    ax = fig.add_subplot(grid[0, 3])
    cut = (slice(None), j, slice(None))
    _draw(ax, image[cut], labels[cut], mask[cut], (x0, z0), (sx, sz), rows_down=False)
    _sides(ax, "R", "L")
    ax.set_title(f"coronal y {y0 + j * sy:.1f} mm", fontsize=_TEXT_PT, pad=2)

    ax = fig.add_subplot(grid[1, 3])
    cut = (slice(None), slice(None), i)
    _draw(ax, image[cut], labels[cut], mask[cut], (y0, z0), (sy, sz), rows_down=False)
    _sides(ax, "A", "P")
    side = ""
    if per_z.any():
        right, left = (int(np.count_nonzero(labels[cut] == v)) for v in (1, 2))
        side = " (right lung)" if right >= left else " (left lung)"
    ax.set_title(f"sagittal x {x0 + i * sx:.1f} mm{side}", fontsize=_TEXT_PT, pad=2)

    handles = [
        Line2D([], [], color=colour, linewidth=2.0, label=label)
        for present, colour, label in (
            (n_right > 0, RIGHT_COLOUR, "right lung"),
            (n_left > 0, LEFT_COLOUR, "left lung"),
            (bool(mask.any()), MASK_COLOUR, "final mask (step 4)"),
        )
        if present
    ]
    if handles:
        legend = fig.legend(
            handles=handles,
            loc="lower center",
            ncol=len(handles),
            fontsize=_TEXT_PT,
            frameon=True,
            bbox_to_anchor=(0.5, 0.0),
        )
        legend.get_frame().set_facecolor("0.35")  # yellow is invisible on white
        for text in legend.get_texts():
            text.set_color("white")
    return fig


def save_qc_png(scan: PreprocessedScan, out_dir: str | os.PathLike[str], patient_id: str) -> Path:
    """Write :func:`qc_figure` as ``<out_dir>/<id>_qc.png``.

    Args:
        scan: the preprocessed scan.
        out_dir: folder (created if needed).
        patient_id: shown in the title; in the file name after
            :func:`~.export.export_stem` (as the NIfTI files of :func:`~.export.export_nifti`).

    Returns:
        The path of the PNG. It is written to a temporary name and renamed, so a reader never
        sees half a file.

    Raises:
        TypeError: ``scan``, ``out_dir`` or ``patient_id`` of the wrong type.
        ValueError: the crop holds no voxel.
        OSError: ``out_dir`` cannot be created or written.
    """
    scan = _check_scan(scan)
    stem = export_stem(_check_patient_id(patient_id))
    if not isinstance(out_dir, str | os.PathLike):
        raise TypeError(f"out_dir must be a path, got {type(out_dir).__name__}")
    fig = qc_figure(scan, patient_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}_qc.png"
    tmp = path.with_name(path.name + ".tmp.png")
    try:
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
