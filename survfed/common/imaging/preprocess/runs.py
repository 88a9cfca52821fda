"""Run-length view of a label image: per-component statistics without full-volume passes.

Every row (fixed ``z, y``) of a label image is cut into runs of equal labels. A component's
pixel count, moment sums, per-slice area and minimum distance to a point follow from its runs in
closed form, so statistics cost time in proportion to the number of runs (a few per row) rather
than to the number of voxels, and one ``bincount`` over the runs replaces a ``bincount`` over
the volume with a weight array per moment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from survfed.common.imaging.preprocess.backend import NUMPY, ArrayBackend

__all__ = ["Runs", "label_runs"]


@dataclass(frozen=True)
class Runs:
    """The non-zero runs of a label image (backend arrays, one entry per run).

    Attributes:
        label: the run's label (> 0), int64.
        z, y: its slice and row, int64.
        x0, x1: first and last column (inclusive), int64.
    """

    label: Any
    z: Any
    y: Any
    x0: Any
    x1: Any

    @property
    def length(self) -> Any:
        """Pixels per run."""
        return self.x1 - self.x0 + 1


def label_runs(labels: Any, backend: ArrayBackend = NUMPY) -> Runs:
    """The runs of non-zero labels of ``labels`` (integer ``(Z, Y, X)``), in raster order."""
    xp = backend.xp
    _, y, x = labels.shape
    rows = labels.reshape(-1, x)
    start = xp.empty(rows.shape, dtype=bool)
    start[:, 0] = True
    start[:, 1:] = rows[:, 1:] != rows[:, :-1]
    pos = xp.flatnonzero(start.reshape(-1))
    end = xp.empty_like(pos)
    end[:-1] = pos[1:] - 1
    end[-1] = rows.size - 1
    value = rows.reshape(-1)[pos].astype(xp.int64)
    keep = value > 0
    pos, end, value = pos[keep], end[keep], value[keep]
    row = pos // x
    return Runs(
        label=value,
        z=(row // y).astype(xp.int64),
        y=(row % y).astype(xp.int64),
        x0=(pos % x).astype(xp.int64),
        x1=(end % x).astype(xp.int64),
    )
