"""Lung preprocessing after Liao et al. (seed 003 §III.B): CPU and GPU paths, one result type.

See ``docs/preprocessing.md``. Entry point: :func:`preprocess_volume`.
"""

from survfed.common.imaging.preprocess.config import (
    PIPELINE_VERSION,
    PreprocessConfig,
    PreprocessError,
)
from survfed.common.imaging.preprocess.pipeline import preprocess_volume, resolve_device
from survfed.common.imaging.preprocess.result import PreprocessedScan, ScanFileError

__all__ = [
    "PIPELINE_VERSION",
    "PreprocessConfig",
    "PreprocessError",
    "PreprocessedScan",
    "ScanFileError",
    "preprocess_volume",
    "resolve_device",
]
