"""The site's optimiser moments between rounds, kept on the site's own disk.

A site continues its AdamW moments from round to round, so local training behaves like one long
run instead of restarting Adam's bias correction every round. The moments never leave the site.
They are kept in a file rather than in Flower's per-run node state because

* a coordinator that crashed and was resumed (``survfed-server start --resume``) submits a *new*
  Flower run, whose node state starts empty — the file is keyed by the run folder, which a
  resumed run keeps, so the site picks up where it was;
* node state travels between the SuperNode and the ClientApp process with every message
  (twice the model's size, each way), a file does not.

File: ``<cache-dir>/optimizer-state/<sha256(run-dir)[:16]>.npz`` holding the arrays of
:func:`survfed.client.local_training.optimizer_arrays` plus ``__round__``; written atomically.
A state is used only for a later round than the one that wrote it (a fresh run in a reused
run folder starts at round 1 and ignores it).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from survfed.common.cache_files import write_npz_atomic

__all__ = ["OptimizerStore"]

_ROUND_KEY = "__round__"


class OptimizerStore:
    """Load and save one site's optimiser state for one run folder.

    Args:
        cache_dir: the site's writable cache folder.
        run_key: what identifies the run across restarts (the coordinator's run folder).
        kind: which model's optimiser (``"survival"``, ``"detector"``), one file each.
    """

    def __init__(self, cache_dir: str | Path, run_key: str, kind: str = "survival") -> None:
        if not run_key:
            raise ValueError("run_key must be a non-empty string (the run folder)")
        digest = hashlib.sha256(f"{kind}\0{run_key}".encode()).hexdigest()[:16]
        self.path = Path(cache_dir) / "optimizer-state" / f"{digest}.npz"

    def load(self, server_round: int) -> dict[str, np.ndarray] | None:
        """The state saved by an earlier round than ``server_round``, or ``None``."""
        try:
            with np.load(self.path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError):
            return None  # none yet, or damaged: the moments simply start afresh
        saved = arrays.pop(_ROUND_KEY, None)
        if saved is None or int(saved) >= server_round:
            return None
        return arrays

    def save(self, server_round: int, arrays: dict[str, np.ndarray]) -> None:
        """Keep ``arrays`` as the state after ``server_round``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_npz_atomic(self.path, **arrays, **{_ROUND_KEY: np.asarray(server_round)})
