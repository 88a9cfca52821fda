"""Acquire a synthetic CT series: scan geometry, scanner blur, noise, field-of-view circle.

A :class:`SeriesPlan` fixes the grid (pixel and slice spacing, matrix, table range, patient
orientation); :func:`acquire` renders the phantom slab by slab (bounded memory at 512 x 512),
blurs it with the scanner's Gaussian point-spread function, adds in-plane-correlated Gaussian
noise of the site's dose, clips to the CT range and returns a
:class:`~survfed.common.imaging.volume.Volume` plus the truth label maps in the same geometry.

Orientation: head-first supine (``HFS``) scans have row direction ``+x``; feet-first supine
(``FFS``) scans have row direction ``-x`` (ImageOrientationPatient ``-1,0,0,0,1,0``). Slice index
``k`` runs head-to-feet (direction ``-z``) or feet-to-head (``+z``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from survfed.common.imaging.volume import Volume
from survfed.common.synth.anatomy import Anatomy
from survfed.common.synth.nodules import Nodule
from survfed.common.synth.phantom import render_thorax

__all__ = ["Acquisition", "SeriesPlan", "acquire"]

CT_MIN_HU = -1024.0
CT_MAX_HU = 3071.0


@dataclass(frozen=True)
class SeriesPlan:
    """Geometry and physics of one series (lengths in mm, HU for noise).

    Attributes:
        matrix: rows = columns.
        pixel_spacing: in-plane spacing.
        slice_spacing: distance between slice centres (= slice thickness here).
        centre_xy: patient ``(x, y)`` of the field-of-view centre.
        z_range: ``(z_low, z_high)`` patient z of the lowest and highest slice centre.
        feet_first: FFS orientation (row direction ``-x``).
        head_to_feet: slice index ``k`` runs towards the feet.
        noise_sd_hu: standard deviation of the image noise.
        psf_sigma_mm: in-plane Gaussian blur sigma (at least half a pixel is used).
        outside_fov_hu: value outside the reconstruction circle, ``None`` = keep.
        offset: ``(x, y, z)`` displacement of the patient in this scan.
    """

    matrix: int
    pixel_spacing: float
    slice_spacing: float
    centre_xy: tuple[float, float]
    z_range: tuple[float, float]
    feet_first: bool
    head_to_feet: bool
    noise_sd_hu: float
    psf_sigma_mm: float
    outside_fov_hu: float | None = None
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if self.matrix < 16:
            raise ValueError(f"matrix must be >= 16, got {self.matrix}")
        if not (self.pixel_spacing > 0 and self.slice_spacing > 0):
            raise ValueError(
                f"pixel_spacing and slice_spacing must be > 0, got {self.pixel_spacing}, "
                f"{self.slice_spacing}"
            )
        if not self.z_range[1] > self.z_range[0]:
            raise ValueError(f"z_range must be (low, high) with low < high, got {self.z_range}")

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ascending voxel-centre coordinates ``xs (I,)``, ``ys (J,)``, ``zs (K,)`` in mm."""
        half = (self.matrix - 1) / 2.0
        grid = (np.arange(self.matrix) - half) * self.pixel_spacing
        n_slices = int(np.floor((self.z_range[1] - self.z_range[0]) / self.slice_spacing)) + 1
        zs = self.z_range[0] + self.slice_spacing * np.arange(n_slices)
        return self.centre_xy[0] + grid, self.centre_xy[1] + grid, zs

    def _flips(self, reader_order: bool) -> tuple[bool, bool]:
        """(flip z, flip x) from the canonical ascending grid to this series' voxel order."""
        # a DICOM reader sorts slices along row x column: +z for HFS rows (+x), -z for FFS (-x)
        flip_z = self.feet_first if reader_order else self.head_to_feet
        return flip_z, self.feet_first

    def to_volume_order(self, array: np.ndarray, *, reader_order: bool = False) -> np.ndarray:
        """Flip a canonical ``(K, J, I)`` array (ascending x, y, z) into this series' order.

        ``reader_order=False``: the acquisition order (slice ``k`` = InstanceNumber ``k + 1``);
        ``True``: slices sorted along the normal row x column, as SimpleITK/GDCM read them.
        """
        flip_z, flip_x = self._flips(reader_order)
        if flip_z:
            array = array[::-1]
        if flip_x:
            array = array[:, :, ::-1]
        return np.ascontiguousarray(array)

    def geometry(
        self, *, reader_order: bool = False
    ) -> tuple[tuple[float, float, float], np.ndarray]:
        """Origin (patient position of voxel ``[0, 0, 0]``) and direction matrix."""
        xs, ys, zs = self.axes()
        flip_z, flip_x = self._flips(reader_order)
        origin = (
            float(xs[-1] if flip_x else xs[0]),
            float(ys[0]),
            float(zs[-1] if flip_z else zs[0]),
        )
        return origin, np.diag([-1.0 if flip_x else 1.0, 1.0, -1.0 if flip_z else 1.0])

    def put_slab(self, out: np.ndarray, slab: np.ndarray, k0: int, *, reader_order: bool) -> None:
        """Copy canonical slices ``k0 .. k0 + len(slab)`` into ``out`` (already in series order)."""
        flip_z, flip_x = self._flips(reader_order)
        n_k, k1 = out.shape[0], k0 + slab.shape[0]
        if flip_x:
            slab = slab[:, :, ::-1]
        if flip_z:
            out[n_k - k1 : n_k - k0] = slab[::-1]
        else:
            out[k0:k1] = slab

    def wrap(self, array: np.ndarray, *, reader_order: bool = False) -> Volume:
        """A :class:`Volume` around an array that is already in this series' order."""
        origin, direction = self.geometry(reader_order=reader_order)
        return Volume(
            array=array,
            spacing=(self.slice_spacing, self.pixel_spacing, self.pixel_spacing),
            origin=origin,
            direction=direction,
        )

    def volume(self, array: np.ndarray, *, reader_order: bool = False) -> Volume:
        """Wrap a canonical ``(K, J, I)`` array as a :class:`Volume` of this series."""
        origin, direction = self.geometry(reader_order=reader_order)
        return Volume(
            array=self.to_volume_order(array, reader_order=reader_order),
            spacing=(self.slice_spacing, self.pixel_spacing, self.pixel_spacing),
            origin=origin,
            direction=direction,
        )


@dataclass(frozen=True, eq=False)
class Acquisition:
    """An acquired series.

    ``image`` is the HU :class:`Volume` in acquisition order (what is written to DICOM);
    ``lung`` (uint8) and ``nodules`` (uint16) are label :class:`Volume` objects in the geometry a
    DICOM reader reconstructs (slices sorted along row x column).
    """

    image: Volume
    lung: Volume
    nodules: Volume


def _noise_gain(sigma_px: float) -> float:
    """Standard deviation of unit white noise after the in-plane Gaussian filter."""
    delta = np.zeros((33, 33))
    delta[16, 16] = 1.0
    return float(np.sqrt(np.sum(gaussian_filter(delta, sigma_px) ** 2)))


def acquire(
    anatomy: Anatomy,
    nodules: Sequence[Nodule],
    plan: SeriesPlan,
    rng: np.random.Generator,
    *,
    chunk_voxels: int = 8_000_000,
    min_vessel_radius_mm: float = 0.5,
) -> Acquisition:
    """Render, blur, add noise; returns the series and its truth labels.

    Args:
        anatomy, nodules: the patient (nodule centres in the anatomy frame).
        plan: the series geometry and physics.
        rng: the series' noise stream.
        chunk_voxels: render slabs of about this many voxels.
        min_vessel_radius_mm: skip thinner vessels.
    """
    xs, ys, zs = plan.axes()
    n_k = zs.size
    psf_px = max(plan.psf_sigma_mm / plan.pixel_spacing, 0.5)
    psf_k = max(0.35, 0.5 * plan.psf_sigma_mm / plan.slice_spacing)
    halo = int(np.ceil(4.0 * psf_k)) + 1
    per_slice = xs.size * ys.size
    chunk = max(1, min(n_k, chunk_voxels // per_slice))
    noise_px = 0.6
    gain = _noise_gain(noise_px)
    shape = (n_k, ys.size, xs.size)
    hu = np.empty(shape, dtype=np.float32)  # acquisition order
    lung = np.empty(shape, dtype=np.uint8)  # reader order
    labels = np.empty(shape, dtype=np.uint16)  # reader order
    outside = None
    if plan.outside_fov_hu is not None:
        r = (plan.matrix / 2.0) * plan.pixel_spacing
        dx = xs - plan.centre_xy[0]
        dy = ys - plan.centre_xy[1]
        outside = dx[None, :] ** 2 + dy[:, None] ** 2 > r**2
    for k0 in range(0, n_k, chunk):
        k1 = min(n_k, k0 + chunk)
        lo, hi = max(0, k0 - halo), min(n_k, k1 + halo)
        phantom = render_thorax(
            anatomy,
            nodules,
            xs,
            ys,
            zs[lo:hi],
            offset=plan.offset,
            min_vessel_radius_mm=min_vessel_radius_mm,
        )
        blurred = gaussian_filter(phantom.hu, (psf_k, psf_px, psf_px), mode="nearest")
        inner = slice(k0 - lo, k0 - lo + (k1 - k0))
        noise = rng.standard_normal((k1 - k0, ys.size, xs.size), dtype=np.float32)
        noise = gaussian_filter(noise, (0.0, noise_px, noise_px), mode="wrap")
        slab = blurred[inner] + noise * np.float32(plan.noise_sd_hu / gain)
        np.clip(slab, CT_MIN_HU, CT_MAX_HU, out=slab)
        if outside is not None:
            slab[:, outside] = plan.outside_fov_hu
        plan.put_slab(hu, slab, k0, reader_order=False)
        plan.put_slab(lung, phantom.lung[inner], k0, reader_order=True)
        plan.put_slab(labels, phantom.nodules[inner], k0, reader_order=True)
    return Acquisition(
        image=plan.wrap(hu, reader_order=False),
        lung=plan.wrap(lung, reader_order=True),
        nodules=plan.wrap(labels, reader_order=True),
    )
