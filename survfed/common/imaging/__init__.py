"""CT imaging: volumes with patient geometry, DICOM series reading."""

from survfed.common.imaging.volume import Volume

__all__ = ["Volume"]
