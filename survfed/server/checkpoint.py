"""Per-round checkpoints of a federated run: weights, round, strategy state, metrics history.

Layout inside the run folder::

    RUN/checkpoint/round-0003.npz   weights (``w/<name>``) and strategy state (``s/<slot>/<name>``)
    RUN/checkpoint/latest.json      {"round": 3, "file": "round-0003.npz", "history": [...],
                                     "strategy": "fedadam", "num_server_rounds": 5, ...}

Every file is written to a temporary name and renamed into place (``os.replace``), and
``latest.json`` is replaced only after its ``.npz`` is complete, so a server killed at any
moment leaves the previous complete checkpoint: it loses at most the round in flight.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Checkpoint",
    "checkpoint_dir",
    "load_checkpoint",
    "load_round_arrays",
    "save_checkpoint",
]

_LATEST = "latest.json"


def checkpoint_dir(run_dir: str | Path) -> Path:
    """``RUN/checkpoint``."""
    return Path(run_dir) / "checkpoint"


@dataclass(frozen=True)
class Checkpoint:
    """The state of a federated run after a completed round.

    Attributes:
        round: the last completed round (1-based).
        arrays: the global weights, name -> array.
        strategy_state: per-slot arrays of the strategy (e.g. FedAdam ``m_t``, ``v_t``); empty
            for FedAvg/FedProx.
        history: one metrics dict per completed round (and round 0 when evaluated).
        meta: anything else JSON-able (strategy name, configured rounds, ...).
    """

    round: int
    arrays: dict[str, np.ndarray]
    strategy_state: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def _atomic(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(
    run_dir: str | Path,
    round_: int,
    arrays: Mapping[str, np.ndarray],
    *,
    strategy_state: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    history: Sequence[Mapping[str, Any]] = (),
    meta: Mapping[str, Any] | None = None,
    keep: int | None = None,
) -> Path:
    """Write the checkpoint of round ``round_`` atomically; return the ``.npz`` path.

    Args:
        run_dir: the run folder.
        round_: the completed round (>= 1).
        arrays: global weights by name.
        strategy_state: slot -> name -> array (e.g. ``{"m_t": {...}, "v_t": {...}}``).
        history: metrics per round so far (JSON-able values).
        meta: extra JSON-able information.
        keep: keep only the newest ``keep`` round files (``None`` = keep all).
    """
    if isinstance(round_, bool) or not isinstance(round_, int) or round_ < 1:
        raise ValueError(f"round_ must be an integer >= 1, got {round_!r}")
    if not arrays:
        raise ValueError("arrays must hold at least one array")
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    payload: dict[str, np.ndarray] = {f"w/{k}": np.asarray(v) for k, v in arrays.items()}
    for slot, values in (strategy_state or {}).items():
        if "/" in slot:
            raise ValueError(f"strategy_state slot {slot!r} must not contain '/'")
        payload.update({f"s/{slot}/{k}": np.asarray(v) for k, v in values.items()})
    name = f"round-{round_:04d}.npz"
    _atomic(folder / name, lambda fh: np.savez(fh, **payload))
    latest = {
        "round": round_,
        "file": name,
        "history": list(history),
        "meta": dict(meta or {}),
    }
    text = json.dumps(latest, indent=1, allow_nan=True).encode()
    _atomic(folder / _LATEST, lambda fh: fh.write(text))
    if keep is not None:
        files = sorted(folder.glob("round-*.npz"))
        for old in files[: max(0, len(files) - keep)]:
            if old.name != name:
                old.unlink(missing_ok=True)
    return folder / name


def load_checkpoint(run_dir: str | Path) -> Checkpoint | None:
    """The latest complete checkpoint of ``run_dir``, or ``None`` when there is none."""
    folder = checkpoint_dir(run_dir)
    latest = folder / _LATEST
    if not latest.is_file():
        return None
    info = json.loads(latest.read_text())
    path = folder / str(info["file"])
    if not path.is_file():
        raise FileNotFoundError(f"{latest} names {path.name}, which does not exist")
    arrays: dict[str, np.ndarray] = {}
    state: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            kind, _, rest = key.partition("/")
            if kind == "w":
                arrays[rest] = data[key]
            elif kind == "s":
                slot, _, name = rest.partition("/")
                state.setdefault(slot, {})[name] = data[key]
    return Checkpoint(
        round=int(info["round"]),
        arrays=arrays,
        strategy_state=state,
        history=list(info.get("history", [])),
        meta=dict(info.get("meta", {})),
    )


def load_round_arrays(run_dir: str | Path, round_: int) -> dict[str, np.ndarray] | None:
    """The global weights saved after round ``round_``, or ``None`` when that file is gone."""
    path = checkpoint_dir(run_dir) / f"round-{round_:04d}.npz"
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key[2:]: data[key] for key in data.files if key.startswith("w/")}
    except (OSError, ValueError, EOFError):
        return None
