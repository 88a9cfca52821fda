"""Random symmetries of nodule crops for training: flips and axial quarter turns.

Crops are isotropic and aligned with the patient axes (see :mod:`survfed.common.imaging.crops`),
so mirroring along any axis and rotating by multiples of 90° in the axial plane give equally
plausible nodules without resampling. Each crop draws its own transform.
"""

from __future__ import annotations

import torch

__all__ = ["random_flip_rotate"]


def random_flip_rotate(crops: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each crop along each spatial axis with probability 1/2, then turn it by a random
    multiple of 90° in the axial (row, column) plane.

    Args:
        crops: ``(..., 1, S, S, S)`` crops in ``[z, y, x]`` order (any leading dims, e.g.
            ``(B, k)``); values are not changed, only moved.
        generator: the random source (CPU generator; seeded by the caller for reproducibility).

    Returns:
        A new tensor of the same shape, dtype and device.
    """
    if crops.ndim < 4 or crops.shape[-1] != crops.shape[-2]:
        raise ValueError(
            f"crops must be (..., 1, S, S, S) with square axial planes, got {tuple(crops.shape)}"
        )
    lead = crops.shape[:-4]
    flat = crops.reshape(-1, *crops.shape[-4:])
    n = flat.shape[0]
    out = flat.clone()
    for dim in (-3, -2, -1):
        chosen = torch.rand(n, generator=generator) < 0.5
        if chosen.any():
            idx = chosen.nonzero().squeeze(1).to(out.device)
            out[idx] = out[idx].flip(dim)
    turns = torch.randint(0, 4, (n,), generator=generator)
    for k in (1, 2, 3):
        chosen = turns == k
        if chosen.any():
            idx = chosen.nonzero().squeeze(1).to(out.device)
            out[idx] = torch.rot90(out[idx], k, dims=(-2, -1))
    return out.reshape(*lead, *crops.shape[-4:])
