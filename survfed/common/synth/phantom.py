"""Render a patient's thorax (anatomy + nodules) in Hounsfield units on an axis-aligned grid.

The grid is given by ascending voxel-centre coordinates ``xs`` (``i``), ``ys`` (``j``) and
``zs`` (``k``) in patient mm; arrays come back indexed ``[k, j, i]``. Tissue values (HU):

========================  =====================================================
air outside the body      -1000
table                     -300 (slab under the patient)
subcutaneous fat          -110..-85
muscle                    +38..+55
mediastinum / abdomen     +35, heart +42
lung parenchyma           -900..-850, +40 posterior (gravity), +/-20 low-frequency and
                          +/-10 mid-frequency texture
vessels                   +40, partial-volume tubes tapering towards the periphery
trachea, main bronchi     -1000 (air)
ribs                      +900 cortex, +300 marrow; sternum +400; vertebrae +800 cortex,
                          +230 cancellous, discs +90, spinal canal +15
nodules                   see :mod:`survfed.common.synth.nodules`
========================  =====================================================

Scanner blur and noise are added later (:mod:`survfed.common.synth.scanner`); this module is
noise free and deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from survfed.common.synth.anatomy import Anatomy, _superellipse_rho, lung_labels
from survfed.common.synth.nodules import Nodule, rasterise_nodule

__all__ = ["Phantom", "render_thorax"]

AIR_HU = -1000.0
TABLE_HU = -300.0
SOFT_HU = 35.0
HEART_HU = 42.0
VESSEL_HU = 40.0


@dataclass(frozen=True, eq=False)
class Phantom:
    """Noise-free rendering, all ``(K, J, I)``: ``hu`` float32, ``lung`` uint8 (0/1 right/2
    left), ``nodules`` uint16 (0 or the nodule index)."""

    hu: np.ndarray
    lung: np.ndarray
    nodules: np.ndarray


def _interp_matrix(coords: np.ndarray, origin: float, step: float, n: int) -> np.ndarray:
    """``(len(coords), n)`` linear-interpolation weights on a periodic coarse axis."""
    pos = (coords - origin) / step
    i0 = np.floor(pos).astype(np.int64)
    frac = pos - i0
    w = np.zeros((coords.size, n), dtype=np.float32)
    rows = np.arange(coords.size)
    np.add.at(w, (rows, i0 % n), 1.0 - frac)
    np.add.at(w, (rows, (i0 + 1) % n), frac)
    return w


def _texture(
    anatomy: Anatomy, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray, scale: float
) -> np.ndarray:
    """Smooth N(0, 1) texture ``(K, J, I)``, features ``texture_step_mm / scale`` apart."""
    tex = anatomy.texture
    nz, ny, nx = tex.shape
    ox, oy, oz = anatomy.texture_origin
    step = anatomy.texture_step_mm / scale
    wz = _interp_matrix(zs, oz, step, nz)
    wy = _interp_matrix(ys, oy, step, ny)
    wx = _interp_matrix(xs, ox, step, nx)
    out = np.tensordot(wz, tex, axes=(1, 0))  # (K, ny, nx)
    out = np.einsum("kyx,jy->kjx", out, wy)  # (K, J, nx)
    return np.tensordot(out, wx, axes=(2, 1)).astype(np.float32)  # (K, J, I)


def _segment_occupancy(
    xs: np.ndarray,
    ys: np.ndarray,
    zs: np.ndarray,
    p0: np.ndarray,
    p1: np.ndarray,
    r0: float,
    r1: float,
    width: float,
) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Partial-volume occupancy of a tapered cylinder ``p0 -> p1`` over its bounding box."""
    rmax = max(r0, r1) + width
    box = []
    for coords, a, b in ((zs, p0[2], p1[2]), (ys, p0[1], p1[1]), (xs, p0[0], p1[0])):
        lo = int(np.searchsorted(coords, min(a, b) - rmax))
        hi = int(np.searchsorted(coords, max(a, b) + rmax, side="right"))
        if hi <= lo:
            return None
        box.append(slice(lo, hi))
    d = p1 - p0
    dd = max(float(d @ d), 1e-9)
    px = (xs[box[2]] - p0[0])[None, None, :]
    py = (ys[box[1]] - p0[1])[None, :, None]
    pz = (zs[box[0]] - p0[2])[:, None, None]
    t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / dd, 0.0, 1.0)
    dist = np.sqrt((px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2)
    radius = r0 + t * (r1 - r0)
    occ = np.clip((radius - dist) / width + 0.5, 0.0, 1.0).astype(np.float32)
    return (box[0], box[1], box[2]), occ


def _bones(anatomy: Anatomy, x2: np.ndarray, y2: np.ndarray, zs: np.ndarray) -> np.ndarray:
    """Bone HU (0 where no bone) ``(K, J, I)``: ribs, sternum, vertebrae."""
    a = anatomy
    bx, by = a.body_centre
    ia, ib = a.inner_axes
    x2, y2 = np.broadcast_arrays(x2, y2)
    shape = (zs.size, *x2.shape)
    bone = np.zeros(shape, dtype=np.float32)
    # ribs: a band just outside the rib-cage interior, one sloping ring per rib
    rho = _superellipse_rho(x2 - bx, y2 - by, ia + 5.0, ib + 5.0, a.body_power)
    radial = np.abs(rho - 1.0) * (ia + ib) / 2.0
    band = (radial < 4.5) & ~((np.abs(x2 - bx) < 30.0) & (y2 < by))
    jj, ii = np.nonzero(band)
    if jj.size:
        slope = 45.0 * (y2[jj, ii] - by) / ib  # posterior end higher
        z_rib = a.rib_top_z - a.rib_pitch * np.arange(a.n_ribs)[:, None] + slope[None, :]
        hit = (np.abs(zs[:, None, None] - z_rib[None]) < 4.5).any(axis=1)  # (K, N)
        value = np.where(radial[jj, ii] > 2.5, 900.0, 300.0).astype(np.float32)
        bone[:, jj, ii] = np.where(hit, value[None, :], 0.0)
    # sternum
    zt = a.rib_top_z - 15.0
    zb = a.heart_centre[2] - 0.6 * a.heart_axes[2]
    in_z = ((zs >= zb) & (zs <= zt))[:, None, None]
    sternum = (np.abs(x2 - bx) < 16.0) & (y2 > by - ib - 9.0) & (y2 < by - ib + 3.0)
    bone = np.where(in_z & sternum[None], np.float32(400.0), bone)
    # vertebrae: body (cortex + cancellous, discs), lamina ring, spinous/transverse processes
    vr = a.vertebra_radius
    r_body = np.hypot(x2 - bx, y2 - a.spine_y)
    canal_y = a.spine_y + vr + 9.0
    r_canal = np.hypot(x2 - bx, y2 - canal_y)
    disc = (np.mod(zs - a.rib_top_z, a.vertebra_pitch) < 5.0)[:, None, None]
    body_hu = np.where(r_body > vr - 2.5, 800.0, 230.0).astype(np.float32)
    spine = np.where(r_body < vr, body_hu, 0.0)
    posterior = (
        ((r_canal > 7.0) & (r_canal < 12.0) & (y2 > canal_y - 4.0))
        | ((np.abs(x2 - bx) < 4.0) & (y2 > canal_y + 10.0) & (y2 < canal_y + 34.0))
        | ((np.abs(y2 - canal_y) < 4.0) & (np.abs(x2 - bx) < 38.0) & (r_canal > 7.0))
    )
    spine = np.where(posterior & (r_body >= vr), 600.0, spine).astype(np.float32)
    spine_3d = np.where(disc & (r_body < vr)[None], np.float32(90.0), spine[None])
    bone = np.where(spine_3d > 0, spine_3d, bone)
    canal = (r_canal <= 7.0)[None] & (bone == 0)
    return np.where(canal, np.float32(15.0), bone)


def render_thorax(
    anatomy: Anatomy,
    nodules: Sequence[Nodule],
    xs: np.ndarray,
    ys: np.ndarray,
    zs: np.ndarray,
    *,
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0),
    min_vessel_radius_mm: float = 0.5,
) -> Phantom:
    """Render the thorax on the grid ``xs`` x ``ys`` x ``zs`` (ascending mm coordinates).

    Args:
        anatomy: the patient's anatomy.
        nodules: placed nodules (centres in the anatomy's frame).
        xs, ys, zs: ``(I,)``, ``(J,)``, ``(K,)`` strictly ascending voxel-centre coordinates, mm.
        offset: ``(x, y, z)`` mm displacement of the whole patient in this scan (e.g. an older
            study with the patient positioned differently).
        min_vessel_radius_mm: vessel segments thinner than this are skipped (coarse grids).

    Returns:
        The noise-free :class:`Phantom` on the grid, arrays ``(K, J, I)``.
    """
    xs, ys, zs = (
        np.asarray(v, dtype=np.float64) - o for v, o in zip((xs, ys, zs), offset, strict=True)
    )
    for name, v in (("xs", xs), ("ys", ys), ("zs", zs)):
        if v.ndim != 1 or v.size < 1 or np.any(np.diff(v) <= 0):
            raise ValueError(f"{name} must be a non-empty strictly ascending 1D array")
    a = anatomy
    bx, by = a.body_centre
    x2, y2 = xs[None, :], ys[:, None]
    X, Y, Z = xs[None, None, :], ys[None, :, None], zs[:, None, None]
    steps = [float(np.median(np.diff(v))) if v.size > 1 else 1.0 for v in (xs, ys, zs)]
    width = float(np.prod(steps) ** (1.0 / 3.0))

    # body, fat, muscle, rib-cage interior, table (in-plane only)
    rho_body = _superellipse_rho(x2 - bx, y2 - by, *a.body_axes, a.body_power)
    rho_fat = _superellipse_rho(
        x2 - bx, y2 - by, a.body_axes[0] - a.fat_mm, a.body_axes[1] - a.fat_mm, a.body_power
    )
    rho_cage = _superellipse_rho(x2 - bx, y2 - by, *a.inner_axes, a.body_power)
    base = np.full(rho_body.shape, AIR_HU, dtype=np.float32)
    table = (
        (y2 > by + a.body_axes[1] + 4.0)
        & (y2 < by + a.body_axes[1] + 16.0)
        & (np.abs(x2 - bx) < 210.0)
    )
    base[table] = TABLE_HU
    base[rho_body < 1.0] = a.fat_hu
    base[rho_fat < 1.0] = a.muscle_hu
    base[rho_cage < 1.0] = SOFT_HU
    hu = np.repeat(base[None], zs.size, axis=0)

    hx, hy, hz = a.heart_centre
    ha, hb, hc = a.heart_axes
    heart = ((X - hx) / ha) ** 2 + ((Y - hy) / hb) ** 2 + ((Z - hz) / hc) ** 2 < 1.0
    hu[heart] = HEART_HU

    # lungs with gravity gradient and smooth texture
    lung = lung_labels(a, X, Y, Z)
    in_lung = lung > 0
    if in_lung.any():
        ay = a.lung_axes[1]
        gravity = 40.0 * np.clip((Y - (a.lung_centre_y - ay)) / (2.0 * ay), 0.0, 1.0)
        paren = (
            a.lung_hu
            + gravity
            + 20.0 * _texture(a, xs, ys, zs, 1.0)
            + 10.0 * _texture(a, xs + 37.0, ys + 11.0, zs + 23.0, 2.7)
        )
        hu[in_lung] = paren[in_lung]

        # vessels (inside the lungs only)
        v = a.vessels
        vessel = np.zeros(hu.shape, dtype=np.float32)
        for p0, p1, r0, r1 in zip(v.start, v.end, v.radius_start, v.radius_end, strict=True):
            if max(r0, r1) < min_vessel_radius_mm:
                continue
            hit = _segment_occupancy(xs, ys, zs, p0, p1, float(r0), float(r1), width)
            if hit is not None:
                box, occ = hit
                np.maximum(vessel[box], occ, out=vessel[box])
        vessel *= in_lung
        hu += (VESSEL_HU - hu) * vessel

    # airways: trachea above the carina, main bronchi
    trachea = (np.hypot(x2 - bx, y2 - a.trachea_y) < a.trachea_radius)[None] & (Z > a.carina_z)
    hu[trachea] = AIR_HU
    starts, ends = a.bronchi()
    for p0, p1 in zip(starts, ends, strict=True):
        hit = _segment_occupancy(xs, ys, zs, p0, p1, 6.0, 5.0, width)
        if hit is not None:
            box, occ = hit
            hu[box] += (AIR_HU - hu[box]) * occ

    bone = _bones(a, x2, y2, zs)
    hu = np.where(bone != 0, bone, hu)

    # nodules (not over bone)
    labels = np.zeros(hu.shape, dtype=np.uint16)
    for nodule in nodules:
        hit = rasterise_nodule(nodule, xs, ys, zs)
        if hit is None:
            continue
        box, occ, core = hit
        occ = occ * (bone[box] == 0)
        value = nodule.hu_ggo + (nodule.hu - nodule.hu_ggo) * core
        hu[box] += (value - hu[box]) * occ
        labels[box][occ >= 0.5] = nodule.index
        # a nodule smaller than a voxel still owns the voxel holding its centre
        idx = [
            int(np.argmin(np.abs(coords - c)))
            for coords, c in zip((zs, ys, xs), nodule.centre[::-1], strict=True)
        ]
        inside = all(
            coords[0] - s / 2 <= c <= coords[-1] + s / 2
            for coords, c, s in zip((zs, ys, xs), nodule.centre[::-1], steps[::-1], strict=True)
        )
        if inside and bone[tuple(idx)] == 0:
            labels[tuple(idx)] = nodule.index
    return Phantom(hu=hu.astype(np.float32, copy=False), lung=lung, nodules=labels)
