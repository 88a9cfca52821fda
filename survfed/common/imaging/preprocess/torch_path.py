"""The GPU path: the same five steps with torch on the device (and CuPy where it helps).

What runs where:

* resampling (``grid_sample``, trilinear, ``align_corners=True``; outside the scan NaN, as
  SimpleITK's linear interpolator), the per-slice Gaussian (separable ``conv2d`` with SciPy's
  kernel and its ``reflect`` border), the threshold, the convex hulls, the dilation and the uint8
  conversion run in torch on ``device``;
* the connected-component steps (2D component filter, 3D lung components, hole filling, lung
  separation) run the code of :mod:`.binarize`, :mod:`.components` and :mod:`.separate` on the
  GPU through CuPy (``pip install survfed[gpu]``) when it is installed, sharing the device
  memory with torch through DLPack; without CuPy they run on the CPU (the bool mask is copied
  to the host and back, said once through ``notify``).

The same code runs with ``device="cpu"``: that is how the test suite checks it against the
SciPy path when there is no GPU. Hulls here are the intersection of the support half-planes of
``_HULL_DIRECTIONS`` directions (exact for edges along those directions, and within a few
thousandths of a pixel elsewhere), computed for all slices at once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from survfed.common.imaging.preprocess.backend import NUMPY, ArrayBackend, cupy_backend
from survfed.common.imaging.preprocess.binarize import filter_slice_components, gaussian_kernel1d
from survfed.common.imaging.preprocess.components import fill_holes_3d, select_lungs
from survfed.common.imaging.preprocess.config import PreprocessConfig, PreprocessError
from survfed.common.imaging.preprocess.pipeline import (
    assemble_scan,
    check_body,
    scan_warnings,
)
from survfed.common.imaging.preprocess.resample import (
    PatientGrid,
    check_volume,
    padding_values,
    patient_grid,
)
from survfed.common.imaging.preprocess.result import PreprocessedScan
from survfed.common.imaging.preprocess.separate import separate_lungs
from survfed.common.imaging.volume import Volume

__all__ = [
    "convex_hull_slices",
    "dilate_taxicab",
    "gaussian_slices",
    "preprocess_volume_torch",
    "resample_hu",
]

_HULL_DIRECTIONS = 512
_HULL_TOL = 1e-9
_HULL_CHUNK = 16_000_000


def _device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but torch sees no CUDA device")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be a CPU or CUDA torch device, got {device!r}")
    return dev


# ----------------------------------------------------------------------------- step 1
def _padding_to_nan(array: torch.Tensor, values: np.ndarray) -> torch.Tensor:
    """Set the field-of-view padding pixels (see :func:`.resample.padding_values`) to NaN."""
    if np.isnan(values).all():
        return array
    array = array.clone()
    for c in range(values.shape[1]):
        rows = np.flatnonzero(~np.isnan(values[:, c]))
        for v in np.unique(values[rows, c]):
            ks = torch.as_tensor(rows[values[rows, c] == v], device=array.device)
            block = array[ks]
            block[block == float(v)] = float("nan")
            array[ks] = block
    return array


def resample_hu(
    volume: Volume, config: PreprocessConfig, device: torch.device
) -> tuple[torch.Tensor, PatientGrid]:
    """Step 1 in torch: ``(hu, grid)`` with ``hu`` float32 ``(Z, Y, X)`` on ``device``."""
    check_volume(volume)
    grid = patient_grid(volume, config.spacing_mm)
    src = torch.from_numpy(np.ascontiguousarray(volume.array, dtype=np.float32)).to(device)
    src = _padding_to_nan(src, padding_values(volume.array, config))
    k, j, i = volume.shape
    z, y, x = grid.shape
    # output voxel (x, y, z) index -> patient mm -> input continuous index (i, j, k)
    s_out = grid.spacing_mm
    to_index = volume.direction.T / np.asarray(volume.spacing[::-1])[:, None]  # ijk per mm
    lin = to_index * s_out  # d(ijk) / d(xyz index)
    off = to_index @ (np.asarray(grid.origin_mm) - np.asarray(volume.origin))
    n_in = np.array([i, j, k], dtype=np.float64)
    n_out = np.array([x, y, z], dtype=np.float64)
    # normalised coordinates (align_corners=True): u = 2 idx / (n - 1) - 1
    scale_in = 2.0 / np.maximum(n_in - 1, 1)
    half_out = np.maximum(n_out - 1, 1) / 2.0
    theta = np.zeros((3, 4), dtype=np.float64)
    theta[:, :3] = scale_in[:, None] * lin * half_out[None, :]
    theta[:, 3] = scale_in * (off + lin @ half_out) - 1.0
    sample = F.affine_grid(
        torch.as_tensor(theta, dtype=torch.float32, device=device)[None],
        [1, 1, z, y, x],
        align_corners=True,
    )
    hu = F.grid_sample(
        src[None, None], sample, mode="bilinear", padding_mode="border", align_corners=True
    )[0, 0]
    # SimpleITK: points more than half a voxel outside the input have no value
    cont = (sample + 1.0) * torch.as_tensor((n_in - 1) / 2.0, dtype=torch.float32, device=device)
    limit = torch.as_tensor(n_in - 0.5, dtype=torch.float32, device=device)
    outside = ((cont < -0.5) | (cont > limit)).any(dim=-1)[0]
    hu = hu.masked_fill(outside, float("nan"))
    return hu, grid


# ----------------------------------------------------------------------------- step 2 (dense)
def _reflect_pad(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """SciPy's ``reflect`` border (``d c b a | a b c d``) of width ``r`` along ``dim``."""
    if r == 0:
        return x
    n = x.shape[dim]
    idx = torch.arange(-r, n + r, device=x.device)
    idx = torch.where(idx < 0, -idx - 1, idx)
    idx = torch.where(idx >= n, 2 * n - idx - 1, idx)
    idx = idx.clamp(0, n - 1)
    return x.index_select(dim, idx)


def gaussian_slices(hu: torch.Tensor, sigma_vox: float, truncate: float) -> torch.Tensor:
    """Per-slice 2D Gaussian of ``hu`` ``(Z, Y, X)`` as ``scipy.ndimage.gaussian_filter``.

    Separable, as weighted sums of shifted copies (the kernel has 3-5 taps at the paper's
    sigma), with SciPy's ``reflect`` border; NaN spreads over the kernel as in SciPy.
    """
    kernel = gaussian_kernel1d(sigma_vox, truncate)
    r = (kernel.size - 1) // 2
    out = hu
    for dim in (2, 1):
        padded = _reflect_pad(out, r, dim)
        n = out.shape[dim]
        acc = padded.narrow(dim, 0, n) * float(kernel[0])
        for k in range(1, kernel.size):
            acc = acc + padded.narrow(dim, k, n) * float(kernel[k])
        out = acc
    return out


# ----------------------------------------------------------------------------- step 4
def convex_hull_slices(mask: torch.Tensor, directions: int = _HULL_DIRECTIONS) -> torch.Tensor:
    """Per-slice convex hull images of ``mask`` (bool ``(Z, Y, X)``), all slices at once.

    scikit-image's definition: the hull of the pixels' edge midpoints, pixel centres inside or
    on it. The hull's vertices are found as the support points of the point set in
    ``directions`` evenly spaced directions (every vertex whose exterior angle exceeds
    ``2 pi / directions`` is found); the polygon through them, in angular order, is then
    rasterised row by row from its edges' half-planes, exactly (half-integer coordinates in
    float64).
    """
    z, y, x = mask.shape
    dev = mask.device
    dt = torch.float64
    rows_any = mask.any(dim=2)  # (Z, Y)
    col = torch.arange(x, device=dev)
    first = torch.where(mask, col, x).amin(dim=2).to(dt)
    last = torch.where(mask, col, -1).amax(dim=2).to(dt)
    theta = torch.arange(directions, device=dev, dtype=dt) * (2 * math.pi / directions)
    cos, sin = torch.cos(theta), torch.sin(theta)
    cos = torch.where(cos.abs() < 1e-12, torch.zeros_like(cos), cos)
    sin = torch.where(sin.abs() < 1e-12, torch.zeros_like(sin), sin)
    horizontal = cos.abs() >= sin.abs()  # the diamond's support point: left/right or up/down
    ys = torch.arange(y, device=dev, dtype=dt)
    rows_idx = torch.arange(y, device=dev)
    colf = col.to(dt)
    out = torch.zeros_like(mask)
    step = max(1, _HULL_CHUNK // max(1, y * directions))
    for z0 in range(0, z, step):
        sl = slice(z0, min(z, z0 + step))
        any_r = rows_any[sl]
        if not bool(any_r.any()):
            continue
        ext = torch.where(cos[None, None, :] >= 0, last[sl, :, None], first[sl, :, None])
        proj = ys[None, :, None] * sin + ext * cos  # (z, Y, D)
        proj = proj.masked_fill(~any_r[:, :, None], -math.inf)
        best = proj.argmax(dim=1)  # (z, D): row of the support point
        vy = best.to(dt)
        vx = torch.gather(ext, 1, best[:, None, :])[:, 0, :]
        vx = vx + torch.where(horizontal, 0.5 * torch.sign(cos), torch.zeros_like(cos))
        vy = vy + torch.where(horizontal, torch.zeros_like(sin), 0.5 * torch.sign(sin))
        # edges V_k -> V_k+1 (counter-clockwise in (x, y)); inside: e_y x <= e_x (y - V_y) + e_y V_x
        ex = torch.roll(vx, -1, dims=1) - vx
        ey = torch.roll(vy, -1, dims=1) - vy
        rhs = ex[:, None, :] * (ys[None, :, None] - vy[:, None, :]) + (ey * vx)[:, None, :]
        a = ey[:, None, :].expand_as(rhs)
        pos, neg, flat = a > 0.5e-9, a < -0.5e-9, a.abs() <= 0.5e-9
        hi = torch.where(pos, rhs / torch.where(pos, a, 1.0), math.inf).amin(dim=2)
        lo = torch.where(neg, rhs / torch.where(neg, a, 1.0), -math.inf).amax(dim=2)
        row_ok = (~flat | (rhs >= -_HULL_TOL)).all(dim=2)
        y_lo = torch.where(any_r, rows_idx, y).amin(dim=1, keepdim=True)
        y_hi = torch.where(any_r, rows_idx, -1).amax(dim=1, keepdim=True)
        in_rows = (rows_idx[None] >= y_lo) & (rows_idx[None] <= y_hi) & row_ok
        lo_i = torch.ceil(lo - _HULL_TOL)
        hi_i = torch.floor(hi + _HULL_TOL)
        band = (colf[None, None] >= lo_i[..., None]) & (colf[None, None] <= hi_i[..., None])
        out[sl] = band & in_rows[..., None]
    return out


def dilate_taxicab(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Dilate bool ``(Z, Y, X)`` by the 6-connected cross iterated ``radius`` times."""
    out = mask.clone()
    for _ in range(max(0, radius)):
        p = F.pad(out[None, None].to(torch.uint8), (1, 1, 1, 1, 1, 1))[0, 0].bool()
        out = (
            out
            | p[2:, 1:-1, 1:-1]
            | p[:-2, 1:-1, 1:-1]
            | p[1:-1, 2:, 1:-1]
            | p[1:-1, :-2, 1:-1]
            | p[1:-1, 1:-1, 2:]
            | p[1:-1, 1:-1, :-2]
        )
    return out


def _box(mask: torch.Tensor, margin: int) -> tuple[slice, slice, slice] | None:
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = torch.nonzero(mask.any(dim=other)).flatten()
        if hit.numel() == 0:
            return None
        lo = max(0, int(hit[0]) - margin)
        hi = min(mask.shape[axis], int(hit[-1]) + 1 + margin)
        out.append(slice(lo, hi))
    return tuple(out)  # type: ignore[return-value]


def final_mask(right: torch.Tensor, left: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """Step 4 in torch (see :func:`.hull_dilate.final_mask`)."""
    mask = torch.zeros_like(right)
    r = config.dilation_vox
    for lung in (right, left):
        box = _box(lung, r)
        if box is None:
            continue
        block = lung[box]
        hull = convex_hull_slices(block)
        too_big = hull.sum(dim=(1, 2)) > config.max_hull_ratio * block.sum(dim=(1, 2))
        hull = torch.where(too_big[:, None, None], block, hull)
        mask[box] |= dilate_taxicab(hull, r)
    return mask


# ----------------------------------------------------------------------------- step 5
def to_uint8(hu: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """As :func:`.normalize.to_uint8` (float32, truncation)."""
    lo, hi = config.hu_window
    scaled = torch.nan_to_num(hu.float(), nan=float(config.outside_hu))
    scaled = (scaled - np.float32(lo)) / np.float32(hi - lo)
    scaled = scaled.clamp_(0.0, 1.0) * np.float32(255)
    return scaled.to(torch.uint8)


def normalize(
    hu: torch.Tensor, lungs: torch.Tensor, mask: torch.Tensor, config: PreprocessConfig
) -> torch.Tensor:
    """As :func:`.normalize.normalize`, in torch."""
    image = to_uint8(hu, config)
    pad = torch.tensor(config.pad_value, dtype=torch.uint8, device=hu.device)
    image = torch.where(mask, image, pad)
    bone = mask & ~lungs & (image > config.bone_threshold)
    return torch.where(bone, pad, image)


# ----------------------------------------------------------------------------- transfers
def _to_backend(t: torch.Tensor, backend: ArrayBackend) -> Any:
    if backend.name == "numpy":
        return t.cpu().numpy()
    return backend.xp.from_dlpack(t.to(torch.uint8).contiguous()).astype(bool)


def _from_backend(a: Any, backend: ArrayBackend, device: torch.device) -> torch.Tensor:
    if backend.name == "numpy":
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)
    return torch.from_dlpack(a.astype(backend.xp.uint8)).to(device).bool()


class _Timer:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self._last
        self._last = now


def _mask_steps(
    air: torch.Tensor,
    measured: np.ndarray | None,
    config: PreprocessConfig,
    backend: ArrayBackend,
    device: torch.device,
    timer: _Timer,
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Steps 2b-3 on ``backend``: right and left lung (torch, on ``device``), separated."""
    mask = filter_slice_components(_to_backend(air, backend), config, backend)
    timer.lap("binarize")
    found = select_lungs(mask, config, valid=measured, backend=backend)
    del mask
    lungs = fill_holes_3d(found.mask, backend)
    timer.lap("components")
    separation = separate_lungs(lungs, config, backend)
    right = _from_backend(separation.right, backend, device)
    left = _from_backend(separation.left, backend, device)
    timer.lap("separate")
    return right, left, separation.separated


def preprocess_volume_torch(
    volume: Volume,
    config: PreprocessConfig,
    *,
    device: str | torch.device = "cuda",
    notify: Callable[[str], Any] | None = None,
    backend: ArrayBackend | None = None,
) -> PreprocessedScan:
    """Steps 1-5 with torch on ``device`` (see the module docstring).

    Args:
        volume: the CT scan.
        config: the settings.
        device: a CUDA or CPU torch device.
        notify: receives one-line notices (where the component steps run, CuPy failures).
        backend: force the component steps' backend (default: CuPy on CUDA when installed,
            else NumPy on the CPU).
    """
    dev = _device(device)
    say = notify or (lambda _msg: None)
    if backend is None:
        backend = cupy_backend() if dev.type == "cuda" else None
        if backend is None:
            backend = NUMPY
            if dev.type == "cuda":
                say(
                    "CuPy not installed: connected components on the CPU (pip install survfed[gpu])"
                )
    timer = _Timer(dev)
    with torch.no_grad():
        hu, grid = resample_hu(volume, config, dev)
        n_measured = int((~torch.isnan(hu)).sum())
        timer.lap("resample")
        check_body(int((hu > -500.0).sum()), n_measured)
        smooth = gaussian_slices(hu, config.sigma_vox, config.gaussian_truncate)
        air = smooth < config.threshold_hu
        smooth_nan = torch.isnan(smooth)
        measured = None if not bool(smooth_nan.any()) else (~smooth_nan).cpu().numpy()
        del smooth, smooth_nan
        try:
            right, left, separated = _mask_steps(air, measured, config, backend, dev, timer)
        except Exception as exc:
            if backend.name == "numpy" or isinstance(exc, PreprocessError):
                raise
            say(f"CuPy failed ({type(exc).__name__}: {exc}); connected components on the CPU")
            backend = NUMPY
            right, left, separated = _mask_steps(air, measured, config, backend, dev, timer)
        union = right | left
        notes = scan_warnings(union.cpu().numpy(), separated, config, measured)
        box = _box(union, config.margin_vox)
        assert box is not None  # select_lungs found lungs
        start = tuple(int(s.start) for s in box)
        r_crop, l_crop = right[box], left[box]
        mask = final_mask(r_crop, l_crop, config)
        timer.lap("hull_dilate")
        image = normalize(hu[box], union[box], mask, config)
        timer.lap("normalize")
        out = assemble_scan(
            r_crop.cpu().numpy(),
            l_crop.cpu().numpy(),
            mask.cpu().numpy(),
            image.cpu().numpy(),
            grid,
            start,  # type: ignore[arg-type]
            notes,
            config,
            timer.timings,
        )
    return out
