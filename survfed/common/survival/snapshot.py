"""The mean of several snapshots of a model's weights (tail / Polyak averaging).

Pooled training averages the weights at the end of its last epochs and a federation the global
models of its last rounds (:meth:`survfed.common.config.TrainConfig.averaged_snapshots`), so both
report a model that does not depend on where the last optimiser step happened to land. With
GroupNorm everywhere there are no running statistics to recompute after averaging.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

__all__ = ["SnapshotMean"]


class SnapshotMean:
    """A running mean of state dicts (float64 accumulation; integer tensors keep the last)."""

    def __init__(self) -> None:
        self._sum: dict[str, torch.Tensor] = {}
        self._dtype: dict[str, torch.dtype] = {}
        self._last: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, state: Mapping[str, torch.Tensor | np.ndarray]) -> None:
        """Add one snapshot (same keys and shapes every time)."""
        tensors = {k: torch.as_tensor(np.asarray(v)) for k, v in state.items()}
        if self.count and set(tensors) != set(self._sum) | set(self._last):
            raise ValueError("state must have the same keys as the snapshots before it")
        for key, value in tensors.items():
            if value.is_floating_point():
                self._dtype[key] = value.dtype
                acc = value.detach().to(torch.float64)
                self._sum[key] = self._sum[key] + acc if key in self._sum else acc.clone()
            else:
                self._last[key] = value.detach().clone()
        self.count += 1

    def mean(self) -> dict[str, torch.Tensor]:
        """The mean snapshot, each tensor in its original floating dtype."""
        if not self.count:
            raise ValueError("no snapshot was added")
        out = {k: (v / self.count).to(self._dtype[k]) for k, v in self._sum.items()}
        out.update(self._last)
        return out
