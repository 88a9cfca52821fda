"""Array backends for the connected-component steps: NumPy + SciPy, or CuPy + cupyx on a GPU.

The mask-selection steps (2D component filtering, 3D component selection, hole filling, lung
separation) are written once against this small namespace, so the CPU path and the GPU path run
the same code: on the CPU with :data:`NUMPY`, on a GPU with :func:`cupy_backend` when CuPy is
installed (the optional ``gpu`` extra). CuPy mirrors the NumPy / ``scipy.ndimage`` calls used
here (``label``, ``binary_erosion``, ``binary_fill_holes``, ``distance_transform_edt``,
``bincount``), so nothing else differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import scipy.ndimage

__all__ = ["NUMPY", "ArrayBackend", "cupy_backend"]


@dataclass(frozen=True)
class ArrayBackend:
    """An array module and its ``ndimage`` counterpart.

    Attributes:
        name: ``"numpy"`` or ``"cupy"``.
        xp: ``numpy`` or ``cupy``.
        ndi: ``scipy.ndimage`` or ``cupyx.scipy.ndimage``.
    """

    name: str
    xp: ModuleType
    ndi: ModuleType

    def asnumpy(self, array: Any) -> np.ndarray:
        """``array`` as a NumPy array on the host."""
        if self.name == "numpy":
            return np.asarray(array)
        return self.xp.asnumpy(array)

    def scalar(self, value: Any) -> float:
        """A 0-d array (or number) as a Python float (synchronises on a GPU)."""
        return float(value)


NUMPY = ArrayBackend("numpy", np, scipy.ndimage)
"""The CPU backend."""


def cupy_backend() -> ArrayBackend | None:
    """The CuPy backend when CuPy is installed and sees a CUDA device, else None."""
    try:
        import cupy
        import cupyx.scipy.ndimage as cndi

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
    except Exception:  # not installed, no driver, no device
        return None
    return ArrayBackend("cupy", cupy, cndi)
