"""Reading survfed's torch payload files (models, detectors) with errors that name the file."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_payload"]


def load_payload(
    path: str | os.PathLike[str], *, what: str, map_location: str | torch.device = "cpu"
) -> Any:
    """``torch.load(path, weights_only=True)``; a missing file is a :class:`FileNotFoundError`
    and a truncated, corrupt or foreign one a :class:`ValueError`, both naming ``path`` and
    ``what`` it should have been (e.g. ``"detector"``)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"path: no {what} file at {p}")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError) as exc:
        if isinstance(exc, pickle.UnpicklingError):  # torch's text suggests unsafe loading
            reason = "not a torch weights file, or a damaged one"
        else:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"path: {p} is not a readable {what} file ({reason})") from exc
