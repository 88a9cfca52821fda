"""A patient's thorax anatomy as continuous shapes in patient millimetres (LPS).

An :class:`Anatomy` is drawn once per patient and rendered on any scan grid by
:mod:`survfed.common.synth.phantom`, so two series of one patient show the same body. Axes:
``x`` towards the patient's left, ``y`` posterior, ``z`` towards the head; the patient lies
supine on the table (table at large ``y``).

Shapes: an elliptical (super-ellipse) body with a subcutaneous fat layer and a muscle layer, the
rib cage inside it, two lungs (tapered towards the apex, domed diaphragm at the base, a flat
mediastinal wall, the heart carved out of the left lung), the spine behind, the trachea and main
bronchi, and a branching pulmonary vessel tree per lung.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.ndimage import gaussian_filter

__all__ = ["Anatomy", "VesselTree", "draw_anatomy", "lung_labels"]

_APEX_EXPONENT = 2.0  # lung cross-section scale is sqrt(1 - t**2), t = height fraction


@dataclass(frozen=True, eq=False)
class VesselTree:
    """Tapered cylinder segments (mm): ``start``/``end`` ``(n, 3)`` xyz, radii ``(n,)``."""

    start: np.ndarray
    end: np.ndarray
    radius_start: np.ndarray
    radius_end: np.ndarray

    def __len__(self) -> int:
        return int(self.start.shape[0])


@dataclass(frozen=True, eq=False)
class Anatomy:
    """Thorax shape parameters of one patient; all lengths in mm, positions LPS mm.

    Attributes (main ones): ``body_centre`` ``(x, y)``; ``body_axes`` ``(a, b)`` semi-axes of
    the body outline with super-ellipse exponent ``body_power``; ``fat_mm``/``muscle_mm`` layer
    thicknesses; ``lung_base_z`` ``(right, left)`` lowest z of each lung; ``lung_height``;
    ``lung_axes`` ``(ax, ay)`` base semi-axes; ``mediastinum_half_width``; ``dome_mm``
    diaphragm dome height; ``heart_centre``/``heart_axes``; ``spine_y``; ``trachea`` geometry;
    ``vessels``; smooth texture fields for the lung parenchyma.
    """

    body_centre: tuple[float, float]
    body_axes: tuple[float, float]
    body_power: float
    fat_mm: float
    muscle_mm: float
    lung_base_z: tuple[float, float]
    lung_height: float
    lung_axes: tuple[float, float]
    lung_centre_y: float
    mediastinum_half_width: float
    dome_mm: float
    heart_centre: tuple[float, float, float]
    heart_axes: tuple[float, float, float]
    spine_y: float
    vertebra_radius: float
    vertebra_pitch: float
    trachea_y: float
    trachea_radius: float
    carina_z: float
    rib_pitch: float
    rib_top_z: float
    n_ribs: int
    lung_hu: float
    fat_hu: float
    muscle_hu: float
    texture_origin: tuple[float, float, float]  # xyz of texture[..., 0, 0, 0]
    texture_step_mm: float
    texture: np.ndarray  # (nz, ny, nx) smooth N(0, 1) field on a coarse grid
    vessels: VesselTree

    @property
    def inner_axes(self) -> tuple[float, float]:
        """Semi-axes of the rib-cage interior (body minus fat and muscle), mm."""
        t = self.fat_mm + self.muscle_mm
        return self.body_axes[0] - t, self.body_axes[1] - t

    @property
    def lung_z_range(self) -> tuple[float, float]:
        """Lowest and highest z of the lungs, mm."""
        return min(self.lung_base_z), max(self.lung_base_z) + self.lung_height

    def lung_centre_x(self, side: int) -> float:
        """x of the lung axis; ``side`` -1 = right lung, +1 = left lung."""
        g = self.mediastinum_half_width
        return self.body_centre[0] + side * (g + self.inner_axes[0]) / 2.0

    def bronchi(self) -> tuple[np.ndarray, np.ndarray]:
        """Main bronchi as segments: ``(2, 3)`` start and end points (carina to hilum)."""
        bx = self.body_centre[0]
        start = np.array([[bx, self.trachea_y, self.carina_z]] * 2)
        end = np.array(
            [
                [
                    self.lung_centre_x(s) * 0.55 + bx * 0.45,
                    self.trachea_y + 8.0,
                    self.carina_z - 22.0 - 6.0 * (s > 0),
                ]
                for s in (-1, 1)
            ]
        )
        return start, end


def _superellipse_rho(dx: np.ndarray, dy: np.ndarray, a: float, b: float, p: float) -> np.ndarray:
    """Super-ellipse radius ``(|dx/a|^p + |dy/b|^p)^(1/p)`` (1 on the outline)."""
    return (np.abs(dx / a) ** p + np.abs(dy / b) ** p) ** (1.0 / p)


def lung_labels(anatomy: Anatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Lung label of patient points: 0 outside, 1 right lung, 2 left lung.

    Args:
        anatomy: the patient.
        x, y, z: broadcastable arrays of patient coordinates in mm.

    Returns:
        uint8 array of the broadcast shape.
    """
    x, y, z = np.broadcast_arrays(
        np.asarray(x, np.float32), np.asarray(y, np.float32), np.asarray(z, np.float32)
    )
    a = anatomy
    bx, by = a.body_centre
    ia, ib = a.inner_axes
    in_cage = _superellipse_rho(x - bx, y - by, ia - 2.0, ib - 2.0, a.body_power) < 1.0
    hx, hy, hz = a.heart_centre
    ha, hb, hc = (s + 4.0 for s in a.heart_axes)
    in_heart = ((x - hx) / ha) ** 2 + ((y - hy) / hb) ** 2 + ((z - hz) / hc) ** 2 < 1.0
    near_spine = (np.abs(x - bx) < a.vertebra_radius + 14.0) & (
        y > a.spine_y - a.vertebra_radius - 8.0
    )
    medial = np.abs(x - bx) <= a.mediastinum_half_width
    allowed = in_cage & ~in_heart & ~near_spine & ~medial
    labels = np.zeros(x.shape, dtype=np.uint8)
    ax, ay = a.lung_axes
    for label, side, base in ((1, -1, a.lung_base_z[0]), (2, 1, a.lung_base_z[1])):
        cx = a.lung_centre_x(side)
        dx, dy = (x - cx) / ax, (y - a.lung_centre_y) / ay
        t = (z - base) / a.lung_height
        scale = np.sqrt(np.clip(1.0 - np.clip(t, 0.0, 1.0) ** _APEX_EXPONENT, 1e-6, 1.0))
        q = (dx / scale) ** 2 + (dy / scale) ** 2
        q_base = np.clip(dx**2 + dy**2, 0.0, 1.0)
        floor = base + a.dome_mm * (1.0 - q_base) - 12.0 * np.clip(dy, 0.0, 1.0)
        inside = (q < 1.0) & (t <= 1.0) & (z > floor) & allowed & ((x - bx) * side > 0)
        labels[inside] = label
    return labels


def _rotate_towards(
    directions: np.ndarray, angles: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Unit vectors at ``angles`` (radians) from ``directions`` ``(n, 3)``, random azimuth."""
    d = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    helper = np.where(np.abs(d[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    p1 = np.cross(d, helper)
    p1 /= np.linalg.norm(p1, axis=1, keepdims=True)
    p2 = np.cross(d, p1)
    phi = rng.uniform(0.0, 2.0 * np.pi, size=(d.shape[0], 1))
    perp = np.cos(phi) * p1 + np.sin(phi) * p2
    angles = np.asarray(angles, dtype=np.float64).reshape(-1, 1)
    return np.cos(angles) * d + np.sin(angles) * perp


def _grow_vessels(
    anatomy_wo_vessels: Anatomy, rng: np.random.Generator, side: int, hilum: np.ndarray
) -> list[np.ndarray]:
    """Grow one lung's branching tree from the hilum, one generation at a time.

    Returns ``[start (n, 3), end (n, 3), r_start (n,), r_end (n,)]``. A branch that would leave
    the lung is shortened or turned (up to 4 tries), else dropped.
    """
    a = anatomy_wo_vessels
    label = 1 if side < 0 else 2
    z_lo, z_hi = a.lung_z_range
    cx, cy = a.lung_centre_x(side), a.lung_centre_y
    ax, ay = a.lung_axes
    targets = np.array(
        [
            [cx + side * fx * ax, cy + fy * ay, z_lo + fz * (z_hi - z_lo)]
            for fz in (0.2, 0.45, 0.75)
            for fx, fy in ((0.3, -0.4), (0.1, 0.45))
        ]
    )
    direction = targets - hilum
    length = np.linalg.norm(direction, axis=1)
    direction = direction / length[:, None]
    start = np.repeat(hilum[None], len(targets), axis=0)
    radius = np.full(len(targets), 4.5)
    length = 0.55 * length
    out: list[list[np.ndarray]] = [[], [], [], []]
    for _depth in range(8):
        if start.shape[0] == 0:
            break
        end = np.full_like(start, np.nan)
        for attempt in range(4):
            todo = np.isnan(end[:, 0])
            if not todo.any():
                break
            trial = (
                direction[todo]
                if attempt == 0
                else _rotate_towards(direction[todo], np.full(int(todo.sum()), 0.5), rng)
            )
            for frac in (1.0, 0.5):
                cand = start[todo] + trial * (length[todo] * frac)[:, None]
                ok = lung_labels(a, cand[:, 0], cand[:, 1], cand[:, 2]) == label
                idx = np.flatnonzero(todo)[ok]
                end[idx] = cand[ok]
                direction[idx] = trial[ok]
                todo = np.isnan(end[:, 0])
                trial = trial[~ok]
                if not todo.any():
                    break
        keep = ~np.isnan(end[:, 0])
        start, end, direction = start[keep], end[keep], direction[keep]
        radius, length = radius[keep], length[keep]
        r_end = radius * 0.93
        for store, values in zip(out, (start, end, radius, r_end), strict=True):
            store.append(values)
        grow = r_end >= 0.5
        n = int(grow.sum())
        children_dir, children_r, children_len = [], [], []
        for share, lo, hi in ((0.86, 0.2, 0.45), (0.66, 0.45, 0.8)):
            children_dir.append(_rotate_towards(direction[grow], rng.uniform(lo, hi, n), rng))
            children_r.append(r_end[grow] * share)
            children_len.append(length[grow] * rng.uniform(0.7, 0.85, n))
        start = np.concatenate([end[grow], end[grow]])
        direction = np.concatenate(children_dir)
        radius = np.concatenate(children_r)
        length = np.concatenate(children_len)
    tree = [
        np.concatenate(v) if v else np.zeros((0, 3) if i < 2 else (0,)) for i, v in enumerate(out)
    ]
    return _add_twigs(a, rng, label, tree, n_points=220)


def _add_twigs(
    a: Anatomy, rng: np.random.Generator, label: int, tree: list[np.ndarray], n_points: int
) -> list[np.ndarray]:
    """Fill the lung periphery: thin twigs from the nearest branch end to random lung points."""
    start, end, r_start, r_end = tree
    if end.shape[0] == 0:
        return tree
    z_lo, z_hi = a.lung_z_range
    side = -1 if label == 1 else 1
    cx, cy = a.lung_centre_x(side), a.lung_centre_y
    ax, ay = a.lung_axes
    pts = rng.uniform([cx - ax, cy - ay, z_lo], [cx + ax, cy + ay, z_hi], size=(4 * n_points, 3))
    pts = pts[lung_labels(a, pts[:, 0], pts[:, 1], pts[:, 2]) == label][:n_points]
    nearest = np.argmin(((pts[:, None, :] - end[None, :, :]) ** 2).sum(axis=-1), axis=1)
    base = end[nearest]
    vec = pts - base
    dist = np.maximum(np.linalg.norm(vec, axis=1), 1e-6)
    tip = base + vec * (np.minimum(dist, 45.0) / dist)[:, None]
    ok = (lung_labels(a, tip[:, 0], tip[:, 1], tip[:, 2]) == label) & (dist > 2.0)
    twig_r0 = np.minimum(r_end[nearest], 1.2)
    return [
        np.concatenate([start, base[ok]]),
        np.concatenate([end, tip[ok]]),
        np.concatenate([r_start, twig_r0[ok]]),
        np.concatenate([r_end, np.full(int(ok.sum()), 0.35)]),
    ]


def draw_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's thorax (body size, lungs, vessels, texture) from ``rng``.

    Lungs come out between about 1.5 and 3 L each (tested).
    """
    bx, by = rng.uniform(-8.0, 8.0), rng.uniform(-8.0, 8.0)
    body_a, body_b = rng.uniform(148.0, 182.0), rng.uniform(100.0, 128.0)
    fat, muscle = rng.uniform(8.0, 26.0), rng.uniform(8.0, 13.0)
    inner_a, inner_b = body_a - fat - muscle, body_b - fat - muscle
    base_left = rng.uniform(-320.0, -120.0)  # table position: arbitrary scanner z
    base_right = base_left + rng.uniform(8.0, 22.0)
    height = rng.uniform(190.0, 245.0)
    gap = rng.uniform(22.0, 32.0)
    lung_ax = (inner_a - gap) / 2.0 + 6.0
    lung_ay = inner_b + rng.uniform(-6.0, 4.0)
    spine_y = by + body_b - fat - rng.uniform(58.0, 66.0)
    vertebra_r = rng.uniform(15.0, 19.0)
    heart_axes = (rng.uniform(55.0, 70.0), rng.uniform(42.0, 55.0), rng.uniform(50.0, 65.0))
    heart_centre = (
        bx + rng.uniform(12.0, 28.0),
        by - inner_b + heart_axes[1] + rng.uniform(2.0, 10.0),
        base_left + rng.uniform(45.0, 65.0),
    )
    trachea_y = spine_y - vertebra_r - rng.uniform(14.0, 20.0)
    carina_z = base_left + height * rng.uniform(0.58, 0.66)
    step = 14.0
    lo = np.array([bx - inner_a, by - inner_b, base_left - 20.0])
    shape = np.ceil((np.array([2 * inner_a, 2 * inner_b, height + 60.0])) / step).astype(int) + 2
    coarse = gaussian_filter(rng.standard_normal(tuple(shape[::-1])), 1.0, mode="wrap")
    coarse = (coarse / max(float(coarse.std()), 1e-6)).astype(np.float32)
    anatomy = Anatomy(
        body_centre=(bx, by),
        body_axes=(body_a, body_b),
        body_power=rng.uniform(2.1, 2.6),
        fat_mm=fat,
        muscle_mm=muscle,
        lung_base_z=(base_right, base_left),
        lung_height=height,
        lung_axes=(lung_ax, lung_ay),
        lung_centre_y=by + rng.uniform(0.0, 8.0),
        mediastinum_half_width=gap,
        dome_mm=rng.uniform(30.0, 50.0),
        heart_centre=heart_centre,
        heart_axes=heart_axes,
        spine_y=spine_y,
        vertebra_radius=vertebra_r,
        vertebra_pitch=rng.uniform(26.0, 32.0),
        trachea_y=trachea_y,
        trachea_radius=rng.uniform(7.5, 10.0),
        carina_z=carina_z,
        rib_pitch=(height + 40.0) / 11.0,
        rib_top_z=base_left + height + rng.uniform(5.0, 20.0),
        n_ribs=12,
        lung_hu=rng.uniform(-900.0, -850.0),
        fat_hu=rng.uniform(-110.0, -85.0),
        muscle_hu=rng.uniform(38.0, 55.0),
        texture_origin=(float(lo[0]), float(lo[1]), float(lo[2])),
        texture_step_mm=step,
        texture=coarse,
        vessels=VesselTree(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros(0)),
    )
    _, hilum_end = anatomy.bronchi()
    parts = [
        _grow_vessels(anatomy, rng, side, hilum_end[k] + np.array([side * 6.0, -6.0, 0.0]))
        for k, side in enumerate((-1, 1))
    ]
    tree = VesselTree(*(np.concatenate([p[i] for p in parts]) for i in range(4)))
    return replace(anatomy, vessels=tree)
