"""Image-size presets: ``tiny`` (fast CPU tests and demos) and ``standard`` (benchmarks)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["PRESETS", "Preset", "get_preset"]


@dataclass(frozen=True)
class Preset:
    """Grid size of every synthetic series.

    Attributes:
        name: ``"tiny"`` or ``"standard"``.
        matrix: rows = columns of every slice.
        pixel_scale: multiplies the site's standard pixel spacing (mm); the field of view
            ``matrix * spacing`` stays that of a real 512 x 512 scan.
        chunk_voxels: slices are rendered in slabs of about this many voxels (bounds memory).
        min_vessel_radius_mm: vessel branches thinner than this are not drawn.
    """

    name: str
    matrix: int
    pixel_scale: float
    chunk_voxels: int
    min_vessel_radius_mm: float


PRESETS: Mapping[str, Preset] = MappingProxyType(
    {
        "tiny": Preset("tiny", 128, 4.0, 4_000_000, 0.9),
        "standard": Preset("standard", 512, 1.0, 4_000_000, 0.45),
    }
)


def get_preset(name: str) -> Preset:
    """The preset called ``name``; a clear error lists the valid names."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}") from None
