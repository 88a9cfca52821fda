"""The quality-control picture (``<id>_qc.png``): size, contour colours, orientation, odd scans."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from survfed.common.imaging.preprocess import PreprocessConfig, PreprocessedScan, preprocess_volume
from survfed.common.imaging.preprocess.qc_figure import (
    DPI,
    FIGSIZE_IN,
    N_AXIAL,
    WARNING_COLOUR,
    qc_figure,
    save_qc_png,
)
from survfed.common.imaging.volume import Volume

WIDTH, HEIGHT = round(FIGSIZE_IN[0] * DPI), round(FIGSIZE_IN[1] * DPI)  # 960 x 560


@pytest.fixture(scope="module")
def scan(chest: Callable[..., Volume]) -> PreprocessedScan:
    """The analytic chest preprocessed at 2.5 mm: right lung at x = -70 mm, left at +70 mm."""
    return preprocess_volume(chest(2.5), PreprocessConfig(spacing_mm=2.5), device="cpu")


def _colour_counts(rgb: np.ndarray) -> dict[str, int]:
    """Pixels close to pure red, blue and yellow in an ``(H, W, 3+)`` float image in [0, 1]."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    hi, lo = 0.8, 0.2
    return {
        "red": int(np.count_nonzero((r > hi) & (g < lo) & (b < lo))),
        "blue": int(np.count_nonzero((b > hi) & (r < lo) & (g < lo))),
        "yellow": int(np.count_nonzero((r > hi) & (g > hi) & (b < lo))),
    }


def _rendered(fig: Figure) -> np.ndarray:
    """The drawn figure as float RGB ``(H, W, 3)`` in [0, 1] (row 0 at the top)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3] / 255.0


def _panel(fig: Figure, rgb: np.ndarray, index: int) -> np.ndarray:
    """The pixels of ``fig.axes[index]`` (as drawn, after its equal-aspect shrink)."""
    box = fig.axes[index].get_window_extent()
    height = rgb.shape[0]
    rows = slice(int(np.ceil(height - box.y1)), int(np.floor(height - box.y0)))
    cols = slice(int(np.ceil(box.x0)), int(np.floor(box.x1)))
    return rgb[rows, cols]


def _without(scan: PreprocessedScan, label: int) -> PreprocessedScan:
    labels = scan.lung_labels.copy()
    labels[labels == label] = 0
    return dataclasses.replace(scan, lung_labels=labels)


def test_png_has_the_size_and_the_three_contour_colours(
    scan: PreprocessedScan, tmp_path: Path
) -> None:
    path = save_qc_png(scan, tmp_path / "qc", "P$1/ x")
    assert path == tmp_path / "qc" / "P_1__x_qc.png"  # export_nifti's file stem
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary left
    rgb = imread(path)
    assert rgb.shape[:2] == (HEIGHT, WIDTH)
    panels = _colour_counts(rgb[: HEIGHT - 40, :, :3])  # above the legend
    assert panels["red"] > 300 and panels["blue"] > 300 and panels["yellow"] > 300, panels
    assert path.stat().st_size < 400_000


def test_no_red_without_a_right_lung(scan: PreprocessedScan, tmp_path: Path) -> None:
    no_right = _without(scan, 1)
    assert scan.lung_labels.max() == 2 and not (no_right.lung_labels == 1).any()
    counts = _colour_counts(imread(save_qc_png(no_right, tmp_path, "P1"))[..., :3])
    assert counts["red"] == 0, counts  # not in the panels, not in the legend
    assert counts["blue"] > 300 and counts["yellow"] > 300, counts
    counts = _colour_counts(imread(save_qc_png(_without(scan, 2), tmp_path, "P2"))[..., :3])
    assert counts["blue"] == 0 and counts["red"] > 300, counts


def test_patient_right_on_the_viewer_left_and_head_up(scan: PreprocessedScan) -> None:
    # keep the right lung's upper half only, in the labels and in the image (mid grey there, 170
    # where its lower half was): on the coronal slice it must sit high and left, in red and grey
    labels, image = scan.lung_labels.copy(), scan.image.copy()
    half = scan.shape[0] // 2
    image[:half][labels[:half] == 1] = 170
    labels[:half][labels[:half] == 1] = 0
    image[labels == 1] = 100
    fig = qc_figure(dataclasses.replace(scan, lung_labels=labels, image=image), "P1")
    rgb = _rendered(fig)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[N_AXIAL].startswith("coronal") and titles[N_AXIAL + 1].startswith("sagittal")

    def centre(panel: np.ndarray, colour: tuple[float, float, float], tol: float) -> np.ndarray:
        hit = np.all(np.abs(panel - np.asarray(colour)) < tol, axis=-1)
        assert hit.sum() > 20
        return np.argwhere(hit).mean(axis=0) / np.asarray(hit.shape)  # (row, col) fractions

    grey = (100 / 255,) * 3
    axial = _panel(fig, rgb, 0)  # the top axial slice holds both lungs
    assert centre(axial, (1, 0, 0), 0.2)[1] < 0.5 < centre(axial, (0, 0, 1), 0.2)[1]
    assert centre(axial, grey, 0.02)[1] < 0.5  # the image is drawn the same way round
    coronal = _panel(fig, rgb, N_AXIAL)
    red, blue = centre(coronal, (1, 0, 0), 0.2), centre(coronal, (0, 0, 1), 0.2)
    assert red[1] < 0.5 < blue[1]  # right lung on the viewer's left
    assert red[0] < 0.45 and 0.4 < blue[0] < 0.6  # the kept top half is drawn at the top
    assert np.abs(centre(coronal, grey, 0.02) - red).max() < 0.05  # and the image with it


def test_axial_slices_run_top_down_over_the_lungs(scan: PreprocessedScan) -> None:
    fig = qc_figure(scan, "P1")
    titles = [ax.get_title() for ax in fig.axes[:N_AXIAL]]
    z_mm = [float(re.fullmatch(r"axial z (-?[\d.]+) mm", t).group(1)) for t in titles]
    assert len(set(z_mm)) == N_AXIAL and z_mm == sorted(z_mm, reverse=True)  # top first
    lung_z = np.flatnonzero(scan.lung_mask.any(axis=(1, 2)))
    top, bottom = (scan.voxel_to_patient((k, 0, 0))[2] for k in (lung_z[-1], lung_z[0]))
    assert top > z_mm[0] and z_mm[-1] > bottom  # inside the lungs, not at their tips
    assert z_mm[0] - z_mm[-1] > 0.6 * (top - bottom)  # and spread over them
    for k_mm in z_mm:  # each title is a slice's patient z
        k = (k_mm - scan.origin_mm[2]) / scan.spacing_mm[0]
        assert abs(k - round(k)) < 0.05 and scan.lung_mask[round(k)].any()


def test_title_gives_the_lung_volumes_and_the_warnings(scan: PreprocessedScan) -> None:
    warned = dataclasses.replace(scan, warnings=("costs $5 $6", "x " * 200))
    fig = qc_figure(warned, "P$1")  # "$" is no mathtext here: drawing must not fail
    rgb = _rendered(fig)
    texts = [t for t in fig.texts if t.get_text()]
    title, notes = texts[0].get_text(), texts[1]
    voxel_l = float(np.prod(scan.spacing_mm)) / 1e6
    right, left = (np.count_nonzero(scan.lung_labels == v) * voxel_l for v in (1, 2))
    assert title.startswith("P$1 — ") and f"right lung {right:.2f} L" in title
    assert f"left lung {left:.2f} L" in title and 1.0 < right < 3.0
    assert "costs $5 $6" in notes.get_text() and notes.get_color() == WARNING_COLOUR
    assert len(notes.get_text().splitlines()) <= 4  # long warnings wrapped and cut
    orange = np.all(np.abs(rgb - np.array([0xD9, 0x5F, 0x02]) / 255) < 0.1, axis=-1)
    assert orange.sum() > 100  # the warnings stand out...
    assert not any(_panel(fig, orange, i).any() for i in range(len(fig.axes)))  # ...above
    assert len(qc_figure(scan, "P1").texts) == 1  # no warning line when there is none


def test_scan_without_lungs_is_drawn_with_a_warning(scan: PreprocessedScan, tmp_path) -> None:
    empty = dataclasses.replace(scan, lung_labels=np.zeros_like(scan.lung_labels))
    fig = qc_figure(empty, "P1")
    assert any("no lung voxels" in t.get_text() for t in fig.texts)
    assert "right lung 0.00 L, left lung 0.00 L" in fig.texts[0].get_text()
    assert len(fig.legends[0].get_texts()) == 1  # only the final mask is drawn
    counts = _colour_counts(imread(save_qc_png(empty, tmp_path, "P1"))[..., :3])
    assert counts["red"] == counts["blue"] == 0 and counts["yellow"] > 300


@pytest.mark.parametrize("n_slices", [1, 2, 4])
def test_crops_of_few_slices(scan: PreprocessedScan, tmp_path: Path, n_slices: int) -> None:
    lung_z = np.flatnonzero(scan.lung_mask.any(axis=(1, 2)))
    z0 = int(lung_z.mean())
    cut = slice(z0, z0 + n_slices)
    thin = PreprocessedScan(
        image=scan.image[cut].copy(),
        spacing_mm=scan.spacing_mm,
        origin_mm=tuple(scan.voxel_to_patient((z0, 0, 0))),
        lung_labels=scan.lung_labels[cut].copy(),
        mask=scan.mask[cut].copy(),
        lung_fraction=scan.lung_fraction[cut].copy(),
        crop_offset=scan.crop_offset,
        resampled_shape=scan.resampled_shape,
    )
    fig = qc_figure(thin, "P1")
    drawn = [ax for ax in fig.axes[:N_AXIAL] if ax.get_title()]
    assert len(drawn) == min(n_slices, N_AXIAL)  # each slice once, the other panels empty
    rgb = imread(save_qc_png(thin, tmp_path, "P1"))
    assert rgb.shape[:2] == (HEIGHT, WIDTH)
    counts = _colour_counts(rgb[: HEIGHT - 40, :, :3])
    assert counts["red"] > 50 and counts["blue"] > 50 and counts["yellow"] > 50


def test_arguments_are_checked(scan: PreprocessedScan, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="scan must be a PreprocessedScan"):
        qc_figure(scan.image, "P1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="patient_id must be a str"):
        save_qc_png(scan, tmp_path, 7)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="out_dir must be a path"):
        save_qc_png(scan, None, "P1")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
