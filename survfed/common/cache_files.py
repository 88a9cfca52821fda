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
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["arrays_hash", "patient_stem", "series_files_hash", "stable_hash", "write_npz_atomic"]


def stable_hash(obj: Any, length: int = 16) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``obj`` as canonical JSON."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def arrays_hash(arrays: Mapping[str, Any], length: int = 16) -> str:
    """Hex digest of named arrays (names, dtypes, shapes and bytes): e.g. a model's weights.

    The coordinator and every site compute the same id for the same global model, whatever
    container the arrays travel in (torch tensors, numpy arrays, Flower ``Array``).
    """
    digest = hashlib.sha256()
    for name in sorted(arrays):
        value = arrays[name]
        value = value.numpy() if hasattr(value, "numpy") else value
        arr = np.ascontiguousarray(np.asarray(value))
        digest.update(f"{name}\0{arr.dtype.str}\0{arr.shape}\0".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()[:length]


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
