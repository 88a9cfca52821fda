"""Small helpers shared by the site caches: stable hashes, file-name stems, atomic ``.npz``.

Used by the crop cache (:mod:`survfed.client.crop_cache`) and the preprocessing cache
(:mod:`survfed.client.preprocess_cache`); no Flower, no site logic.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["patient_stem", "series_files_hash", "stable_hash", "write_npz_atomic"]


def stable_hash(obj: Any, length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``obj`` as canonical JSON."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def patient_stem(patient_id: str) -> str:
    """A file-name-safe, collision-free stem for a patient ID (readable part + 8-digit hash)."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", patient_id)[:48] or "_"
    return f"{safe}.{stable_hash(patient_id, 8)}"


def series_files_hash(
    series_uid: str, files: Iterable[os.PathLike[str] | str], **extra: Any
) -> str:
    """Hash of a series: its UID and every file's (path, size, mtime_ns), plus ``extra``.

    Raises:
        OSError: a file is gone or unreadable (the series changed since it was catalogued).
    """
    listed = []
    for path in files:
        st = os.stat(path)
        listed.append([str(path), st.st_size, st.st_mtime_ns])
    return stable_hash({"series": series_uid, "files": listed, **extra})


def write_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to ``path`` (uncompressed ``.npz``) through a temporary file + rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
