"""Nearly uniform directions on the unit sphere, for sampling round shapes (nodules, masses)."""

from __future__ import annotations

import numpy as np

__all__ = ["fibonacci_directions"]


def fibonacci_directions(n: int) -> np.ndarray:
    """``(n, 3)`` nearly uniform unit vectors on the sphere (Fibonacci lattice)."""
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    phi = np.pi * (3.0 - np.sqrt(5.0)) * k
    s = np.sqrt(1.0 - z**2)
    return np.stack([s * np.cos(phi), s * np.sin(phi), z], axis=-1)
