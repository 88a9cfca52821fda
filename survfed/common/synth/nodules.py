"""Lung nodules: kinds, sizes, irregular shapes, placement in the lungs, rasterisation.

A nodule's surface is a star-shaped radius function of the direction ``u`` (unit vector)::

    R(u) = r0 * max(0.4, 1 + sum_j a_j P_{l_j}(u . v_j) + sum_s h_s max(0, u . w_s)^{p_s})

low-order Legendre lobulation around random axes ``v_j`` plus narrow spikes (spiculation)
along random directions ``w_s``. ``irregularity`` in [0, 1] scales both amplitudes. The
reported ``diameter_mm`` is the **equivalent-sphere diameter** ``2 (mean_u R(u)^3)^(1/3)``
(the diameter of the sphere of equal volume).

Kinds (``kind`` column of ``nodules_truth.csv``):

* benign (3-8 mm, irregularity <= 0.12): ``solid`` (+10..50 HU), ``calcified`` (+350..900 HU,
  round), ``juxtapleural`` (solid, touching the lung wall);
* malignant (8-30 mm): ``spiculated`` (irregularity 0.55-1), ``part_solid`` (ground glass
  -550..-350 HU around a solid core), ``solid`` and ``juxtapleural`` (irregularity 0.2-0.7).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
from scipy.special import eval_legendre

from survfed.common.sphere import fibonacci_directions

__all__ = [
    "Nodule",
    "draw_nodules",
    "fibonacci_directions",
    "place_nodules",
    "rasterise_nodule",
]

BENIGN_KINDS = ("solid", "calcified", "juxtapleural")
MALIGNANT_KINDS = ("spiculated", "part_solid", "solid", "juxtapleural")
MASS_DIAMETER_MM = (30.0, 60.0)
"""Equivalent-sphere diameters of masses (malignant lesions above 3 cm), when a cohort asks for
them (``make_cohort(masses=...)``): the sizes that seed 003's detector over-samples (×2 above
30 mm, ×6 above 40 mm) and its 60 mm anchor covers."""


@dataclass(frozen=True, eq=False)
class Nodule:
    """One nodule; lengths in mm, ``centre`` patient ``(x, y, z)`` mm (``nan`` until placed)."""

    index: int  # label value in the nodule mask, 1-based
    kind: str
    malignant: bool
    r0: float  # radius scale, mm
    irregularity: float
    hu: float  # solid (core) attenuation
    hu_ggo: float  # ground-glass attenuation (part_solid only; else = hu)
    core_fraction: float  # part_solid: core radius / outer radius; else 1
    lobe_axes: np.ndarray  # (m, 3) unit vectors
    lobe_degrees: np.ndarray  # (m,) int
    lobe_amps: np.ndarray  # (m,)
    spike_dirs: np.ndarray  # (s, 3) unit vectors
    spike_heights: np.ndarray  # (s,)
    spike_powers: np.ndarray  # (s,)
    centre: tuple[float, float, float] = (np.nan, np.nan, np.nan)

    def radius(self, u: np.ndarray) -> np.ndarray:
        """Surface radius (mm) along unit directions ``u`` ``(..., 3)``; returns ``(...)``."""
        rel = np.ones(u.shape[:-1])
        for axis, degree, amp in zip(
            self.lobe_axes, self.lobe_degrees, self.lobe_amps, strict=True
        ):
            rel += amp * eval_legendre(int(degree), u @ axis)
        for direction, height, power in zip(
            self.spike_dirs, self.spike_heights, self.spike_powers, strict=True
        ):
            rel += height * np.clip(u @ direction, 0.0, None) ** power
        return self.r0 * np.maximum(rel, 0.4)

    @cached_property
    def diameter_mm(self) -> float:
        """Equivalent-sphere diameter, mm."""
        r = self.radius(fibonacci_directions(4000))
        return float(2.0 * np.mean(r**3) ** (1.0 / 3.0))

    @cached_property
    def max_radius_mm(self) -> float:
        """Largest surface radius (spike tips included), mm."""
        return float(self.radius(fibonacci_directions(4000)).max()) + 0.05 * self.r0

    def scaled(self, factor: float) -> Nodule:
        """The same nodule with every length times ``factor`` (> 0), e.g. an earlier scan."""
        if not factor > 0:
            raise ValueError(f"factor must be > 0, got {factor}")
        return replace(self, r0=self.r0 * factor)


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _make_nodule(
    rng: np.random.Generator,
    index: int,
    kind: str,
    malignant: bool,
    diameter: float,
    irregularity: float,
) -> Nodule:
    n_lobes = 3
    lobe_amps = irregularity * 0.16 * rng.uniform(0.5, 1.0, n_lobes) * rng.choice([-1, 1], n_lobes)
    n_spikes = round(irregularity * (14 if kind == "spiculated" else 3))
    if kind == "part_solid":
        hu, hu_ggo, core = (
            rng.uniform(10.0, 50.0),
            rng.uniform(-550.0, -350.0),
            rng.uniform(0.35, 0.6),
        )
    elif kind == "calcified":
        hu = rng.uniform(350.0, 900.0)
        hu_ggo, core = hu, 1.0
    else:
        hu = rng.uniform(10.0, 55.0)
        hu_ggo, core = hu, 1.0
    nodule = Nodule(
        index=index,
        kind=kind,
        malignant=malignant,
        r0=1.0,
        irregularity=float(irregularity),
        hu=float(hu),
        hu_ggo=float(hu_ggo),
        core_fraction=float(core),
        lobe_axes=_unit_vectors(rng, n_lobes),
        lobe_degrees=rng.integers(2, 5, n_lobes),
        lobe_amps=lobe_amps,
        spike_dirs=_unit_vectors(rng, n_spikes),
        spike_heights=irregularity * rng.uniform(0.5, 1.3, n_spikes),
        spike_powers=rng.uniform(40.0, 160.0, n_spikes),
    )
    # r0 so that the equivalent-sphere diameter is exactly the drawn one
    return replace(nodule, r0=diameter / nodule.diameter_mm)


def draw_nodules(
    rng: np.random.Generator, cancer: bool, mass_fraction: float = 0.0
) -> list[Nodule]:
    """Draw the (not yet placed) nodules of one patient, largest malignant first.

    Cancer patients get 1 (70 %) or 2 malignant nodules of 8-30 mm; everybody gets 0-4 benign
    nodules of 3-8 mm (probabilities 0.25, 0.3, 0.2, 0.15, 0.1), so some patients have none.

    Args:
        rng: the patient's nodule stream.
        cancer: whether the patient has malignant nodules.
        mass_fraction: probability in [0, 1] that a malignant nodule is drawn as a mass instead,
            of :data:`MASS_DIAMETER_MM` (uniform). At 0 (the default) the stream is used
            exactly as without masses, so cohorts without masses keep their bytes.
    """
    specs: list[tuple[str, bool, float, float]] = []
    if cancer:
        for _ in range(1 if rng.random() < 0.7 else 2):
            kind = str(rng.choice(MALIGNANT_KINDS, p=[0.4, 0.25, 0.2, 0.15]))
            diameter = 8.0 + 22.0 * rng.beta(1.6, 2.4)
            irr = rng.uniform(0.55, 1.0) if kind == "spiculated" else rng.uniform(0.2, 0.65)
            if mass_fraction > 0.0 and rng.random() < mass_fraction:
                diameter = rng.uniform(*MASS_DIAMETER_MM)
            specs.append((kind, True, diameter, irr))
        specs.sort(key=lambda s: -s[2])
    for _ in range(int(rng.choice(5, p=[0.25, 0.3, 0.2, 0.15, 0.1]))):
        kind = str(rng.choice(BENIGN_KINDS, p=[0.5, 0.3, 0.2]))
        irr = rng.uniform(0.0, 0.04) if kind == "calcified" else rng.uniform(0.0, 0.12)
        specs.append((kind, False, rng.uniform(3.0, 8.0), irr))
    return [
        _make_nodule(rng, i + 1, kind, malignant, diameter, irr)
        for i, (kind, malignant, diameter, irr) in enumerate(specs)
    ]


LungLabelFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def place_nodules(
    rng: np.random.Generator,
    nodules: list[Nodule],
    lung_label: LungLabelFn,
    box_lo: np.ndarray,
    box_hi: np.ndarray,
    *,
    tries: int = 60,
) -> list[Nodule]:
    """Give every nodule a centre inside a lung, not overlapping the others.

    Non-juxtapleural nodules lie wholly inside one lung with a 2 mm margin; juxtapleural
    nodules have their centre inside the lung at least ``0.45 r0`` from the wall and
    10-60 % of their surface outside the lung (they touch the wall).

    Args:
        rng: the patient's nodule stream.
        nodules: unplaced nodules.
        lung_label: ``f(x, y, z) -> labels`` (0 outside, 1 right, 2 left).
        box_lo, box_hi: ``(3,)`` xyz mm bounding box of the lungs.
        tries: batches of 128 candidate centres per nodule before giving up.

    Returns:
        The nodules with centres; a nodule that finds no place (tiny lungs) is dropped.
    """
    dirs = fibonacci_directions(64)
    placed: list[Nodule] = []
    for nodule in nodules:
        juxta = nodule.kind == "juxtapleural"
        r_dir = nodule.radius(dirs)
        found = None
        for _ in range(tries):
            cand = rng.uniform(box_lo, box_hi, size=(128, 3))
            lab = lung_label(cand[:, 0], cand[:, 1], cand[:, 2])
            cand, lab = cand[lab > 0], lab[lab > 0]
            for c, side in zip(cand, lab, strict=True):
                if any(
                    np.linalg.norm(c - np.asarray(p.centre))
                    < nodule.max_radius_mm + p.max_radius_mm + 3.0
                    for p in placed
                ):
                    continue
                inner = c + dirs * (0.45 * nodule.r0 if juxta else r_dir[:, None] + 2.0)
                if not np.all(lung_label(inner[:, 0], inner[:, 1], inner[:, 2]) == side):
                    continue
                if juxta:
                    surface = c + dirs * r_dir[:, None]
                    outside = np.mean(
                        lung_label(surface[:, 0], surface[:, 1], surface[:, 2]) != side
                    )
                    if not 0.1 <= outside <= 0.6:
                        continue
                found = c
                break
            if found is not None:
                break
        if found is not None:
            placed.append(replace(nodule, centre=tuple(float(v) for v in found)))
    return placed


def rasterise_nodule(
    nodule: Nodule, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray
) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray] | None:
    """Partial-volume occupancy of a placed nodule on an axis-aligned grid.

    Args:
        nodule: a placed nodule.
        xs, ys, zs: ascending voxel-centre coordinates (mm) of the grid axes ``i, j, k``.

    Returns:
        ``(box, occupancy, core)``: ``box`` the ``(k, j, i)`` slices of the grid the nodule
        touches, ``occupancy`` in [0, 1] over that box (``(nk, nj, ni)`` float32), ``core`` the
        occupancy of the solid core (equal to ``occupancy`` unless part-solid). ``None`` when the
        nodule misses the grid.
    """
    cx, cy, cz = nodule.centre
    rmax = nodule.max_radius_mm
    steps = [float(np.median(np.diff(a))) if a.size > 1 else 1.0 for a in (xs, ys, zs)]
    box = []
    for coords, c, step in zip((zs, ys, xs), (cz, cy, cx), steps[::-1], strict=True):
        lo = int(np.searchsorted(coords, c - rmax - step))
        hi = int(np.searchsorted(coords, c + rmax + step, side="right"))
        if hi <= lo:
            return None
        box.append(slice(lo, hi))
    dz = (zs[box[0]] - cz)[:, None, None]
    dy = (ys[box[1]] - cy)[None, :, None]
    dx = (xs[box[2]] - cx)[None, None, :]
    d = np.stack(np.broadcast_arrays(dx, dy, dz), axis=-1)
    r = np.linalg.norm(d, axis=-1)
    u = d / np.maximum(r, 1e-9)[..., None]
    u[r < 1e-9] = (0.0, 0.0, 1.0)
    surface = nodule.radius(u)
    # box-average partial volume: the voxel's extent along the radial direction
    width = np.abs(u) @ np.asarray(steps)
    occupancy = np.clip((surface - r) / width + 0.5, 0.0, 1.0).astype(np.float32)
    if nodule.core_fraction < 1.0:
        core = np.clip((surface * nodule.core_fraction - r) / width + 0.5, 0.0, 1.0)
        core = core.astype(np.float32)
    else:
        core = occupancy
    return (box[0], box[1], box[2]), occupancy, core
