"""The site's optimiser moments between rounds, kept on the site's own disk.

A site continues its AdamW moments from round to round, so local training behaves like one long
run instead of restarting Adam's bias correction every round. The moments never leave the site.
They are kept in a file rather than in Flower's per-run node state because

* a coordinator that crashed and was resumed (``survfed-server start --resume``) submits a *new*
  Flower run, whose node state starts empty — the file is keyed by the run folder, which a
  resumed run keeps, so the site picks up where it was;
* node state travels between the SuperNode and the ClientApp process with every message
  (twice the model's size, each way), a file does not.

Files: ``<cache-dir>/optimizer-state/<sha256(kind, run-dir)[:16]>.r<round>.npz``, one per
round, holding the arrays of :func:`survfed.client.local_training.optimizer_arrays`; written
atomically. Round ``r`` uses the newest state of a round before ``r`` (a fresh run in a reused
run folder starts at round 1 and ignores them all). The last :data:`KEEP` rounds are kept, not
only the last: a site may still finish round ``r`` of a coordinator that was killed during
round ``r``, and the resumed run then trains round ``r`` again and needs round ``r − 1``'s
moments.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from survfed.common.cache_files import write_npz_atomic

__all__ = ["KEEP", "OptimizerStore"]

KEEP = 2  # rounds of moments kept per run and model


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
        self.folder = Path(cache_dir) / "optimizer-state"
        self._stem = hashlib.sha256(f"{kind}\0{run_key}".encode()).hexdigest()[:16]

    def path(self, server_round: int) -> Path:
        """The file holding the state after ``server_round``."""
        return self.folder / f"{self._stem}.r{int(server_round)}.npz"

    def saved_rounds(self) -> list[int]:
        """Rounds with a saved state, ascending."""
        rounds = []
        for f in self.folder.glob(f"{self._stem}.r*.npz"):
            tag = f.name[len(self._stem) + 2 : -len(".npz")]
            if tag.isdigit():
                rounds.append(int(tag))
        return sorted(rounds)

    def load(self, server_round: int) -> dict[str, np.ndarray] | None:
        """The newest state saved by a round before ``server_round``, or ``None``."""
        earlier = [r for r in self.saved_rounds() if r < server_round]
        if not earlier:
            return None
        try:
            with np.load(self.path(earlier[-1]), allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError):
            return None  # damaged: the moments simply start afresh

    def save(self, server_round: int, arrays: dict[str, np.ndarray]) -> None:
        """Keep ``arrays`` as the state after ``server_round``; drop all but the last
        :data:`KEEP` rounds."""
        self.folder.mkdir(parents=True, exist_ok=True)
        write_npz_atomic(self.path(server_round), **arrays)
        for r in self.saved_rounds()[:-KEEP]:
            self.path(r).unlink(missing_ok=True)
