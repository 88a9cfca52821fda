"""The detector's input contract: a preprocessed scan, its nodules, and what the network sees.

A *scan* is a volume as lung preprocessing (seed 003 §III) produces it: ``image`` uint8
``(Z, Y, X)`` on an isotropic grid (``DetectorConfig.spacing_mm`` per voxel), axes along the
patient axes, HU [−1200, 600] mapped linearly to 0–255, everything outside the lung mask filled
with :data:`PAD_VALUE` = 170. *Nodules* are an ``(n, 4)`` float array ``(z, y, x, diameter)`` in
voxels of that grid (``n`` may be 0). Voxel ``(k, j, i)`` has its centre at coordinate
``(k, j, i)``; a voxel spans ``[k − 0.5, k + 0.5)``.

The network sees

* the intensities scaled as in grt123, ``(v − 128) / 128`` (:func:`normalise_intensity`), so
  tissue (170) is ≈ 0.33 and air ≈ −1;
* a **location crop** (seed 003 §IV-C, :func:`location_crop`): 3 channels on the output grid
  (stride 4) holding the normalised ``z, y, x`` coordinate of each output voxel's centre, −1 and
  +1 at the two ends of the segmented lung along that axis (``lung_box``; by default the scan's
  own extent, since preprocessing crops the scan to the lung box plus a margin). Outside the lung
  box the values continue linearly beyond ±1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = [
    "PAD_VALUE",
    "DetectionScan",
    "check_image",
    "check_lung_box",
    "check_nodules",
    "location_crop",
    "normalise_intensity",
]

PAD_VALUE: int = 170
"""Grey value of tissue outside the lung mask and of padding beyond the scan (seed 003 §III)."""


def check_image(image: object, name: str = "image") -> np.ndarray:
    """``image`` as a C-contiguous uint8 ``(Z, Y, X)`` array, or a ``ValueError`` naming it."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3:
        raise ValueError(f"{name} must be 3-D (Z, Y, X), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 (preprocessed grey values), got {image.dtype}")
    if min(image.shape) < 1:
        raise ValueError(f"{name} must not be empty, got shape {image.shape}")
    return np.ascontiguousarray(image)


def check_nodules(nodules: object, name: str = "nodules") -> np.ndarray:
    """``nodules`` as a float64 ``(n, 4)`` array ``(z, y, x, diameter)`` in voxels.

    ``None`` or an empty sequence gives ``(0, 4)``. Coordinates must be finite and diameters
    finite and > 0; a ``ValueError`` naming ``name`` otherwise.
    """
    if nodules is None:
        return np.zeros((0, 4), dtype=np.float64)
    arr = np.asarray(nodules, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name} must have shape (n, 4) = (z, y, x, diameter), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite")
    if (arr[:, 3] <= 0).any():
        raise ValueError(f"{name} diameters (column 3) must be > 0")
    return arr


def check_lung_box(lung_box: object, shape: tuple[int, ...], name: str = "lung_box") -> np.ndarray:
    """``lung_box`` as float64 ``(3, 2)`` ``[[z0, z1], [y0, y1], [x0, x1]]`` (voxel coordinates
    of the lung's two ends per axis, ``z0 < z1``); ``None`` gives the scan extent
    ``[[0, Z − 1], ...]``."""
    if lung_box is None:
        return np.array([[0.0, max(n - 1, 1)] for n in shape], dtype=np.float64)
    box = np.asarray(lung_box, dtype=np.float64)
    if box.shape != (3, 2) or not np.isfinite(box).all():
        raise ValueError(f"{name} must be finite with shape (3, 2), got {box.shape}")
    if (box[:, 1] <= box[:, 0]).any():
        raise ValueError(f"{name} needs low < high on every axis, got {box.tolist()}")
    return box


@dataclass(frozen=True)
class DetectionScan:
    """One preprocessed scan and its annotated nodules (see the module docstring).

    Attributes:
        image: uint8 ``(Z, Y, X)``.
        nodules: float ``(n, 4)`` ``(z, y, x, diameter)`` in voxels; ``n`` may be 0.
        lung_box: optional ``(3, 2)`` voxel coordinates of the lung's ends per axis (the
            location crop's −1 and +1); ``None`` = the scan's extent.
        name: an identifier for messages (e.g. the patient id).
    """

    image: np.ndarray
    nodules: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    lung_box: np.ndarray | None = None
    name: str = ""

    def __post_init__(self) -> None:
        label = f"scan {self.name!r}" if self.name else "scan"
        image = check_image(self.image, f"{label} image")
        object.__setattr__(self, "image", image)
        object.__setattr__(self, "nodules", check_nodules(self.nodules, f"{label} nodules"))
        object.__setattr__(
            self, "lung_box", check_lung_box(self.lung_box, image.shape, f"{label} lung_box")
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)``."""
        return tuple(self.image.shape)  # type: ignore[return-value]


def normalise_intensity(values: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 grey values (or floats on that scale) → float32 ``(v − 128) / 128``, same shape."""
    t = torch.as_tensor(values)
    return (t.to(torch.float32) - 128.0) / 128.0


def location_crop(
    start: tuple[float, float, float],
    out_shape: tuple[int, int, int],
    lung_box: np.ndarray,
    *,
    stride: int = 4,
    scale: float = 1.0,
) -> torch.Tensor:
    """The location crop of a patch: ``(3, d, h, w)`` float32 normalised coordinates.

    Output voxel ``(a, b, c)`` of a patch covers patch voxels ``stride·a … stride·a + stride − 1``
    (centre ``stride·(a + 0.5) − 0.5``); a patch voxel ``p`` sits at scan coordinate
    ``start + (p + 0.5) / scale − 0.5`` (``scale`` = the patch's zoom factor, 1 without resizing).
    Channel ``i`` holds ``2 · (u_i − lo_i) / (hi_i − lo_i) − 1`` for that scan coordinate ``u_i``
    and ``lung_box[i] = (lo_i, hi_i)``.

    Args:
        start: scan coordinate ``(z, y, x)`` of the patch's voxel 0 (before zooming).
        out_shape: output grid ``(d, h, w)`` = patch shape / ``stride``.
        lung_box: ``(3, 2)`` from :func:`check_lung_box`.
        stride: output stride (4).
        scale: zoom factor of the patch.
    """
    axes = []
    for i in range(3):
        p = stride * (np.arange(out_shape[i], dtype=np.float64) + 0.5) - 0.5
        u = start[i] + (p + 0.5) / scale - 0.5
        lo, hi = lung_box[i]
        axes.append(2.0 * (u - lo) / (hi - lo) - 1.0)
    grids = np.meshgrid(*axes, indexing="ij")
    return torch.from_numpy(np.stack(grids).astype(np.float32))
