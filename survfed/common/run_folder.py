"""The run folder: everything one training run produces, in one place.

Layout (pooled and federated runs alike)::

    RUN/
      config.json     the TrainConfig, the sites, survfed and torch versions
      model.pt        the final model (weights + ModelConfig; survfed.common.survival.model)
      baseline.json   the Breslow baseline hazard built from the training sites' aggregates
      metrics.csv     one row per epoch (pooled) or round (federated)
      summary.json    the end-of-run summary
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from survfed.common.survival.baseline import BaselineHazard

__all__ = ["RunFolder"]


def find_detector(run_dir: str | os.PathLike[str]) -> Path | None:
    """The run's detector file: ``detector.pt`` (pooled) or ``detector/detector.pt`` (a
    federation with detector rounds); ``None`` when it has neither."""
    for candidate in (Path(run_dir) / "detector.pt", Path(run_dir) / "detector" / "detector.pt"):
        if candidate.is_file():
            return candidate
    return None


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


class RunFolder:
    """Read and write the files of one run folder (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def model_path(self) -> Path:
        return self.path / "model.pt"

    def create(self, *, overwrite: bool = False) -> RunFolder:
        """Create the folder; refuse a folder that already holds a model unless ``overwrite``."""
        if self.model_path.exists() and not overwrite:
            raise FileExistsError(
                f"{self.path} already holds a finished run (model.pt); choose another --out "
                "or pass --overwrite"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        metrics = self.path / "metrics.csv"
        if metrics.exists():
            metrics.unlink()
        return self

    def write_json(self, name: str, data: Mapping[str, Any]) -> Path:
        path = self.path / name
        _atomic_write_text(path, json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n")
        return path

    def read_json(self, name: str) -> dict[str, Any]:
        path = self.path / name
        if not path.is_file():
            raise FileNotFoundError(f"{self.path} is not a survfed run folder: no {name}")
        return json.loads(path.read_text())

    def append_metrics(self, row: Mapping[str, Any]) -> None:
        """Append one row to ``metrics.csv``.

        Columns are those of the rows so far; a row with a column the file does not have yet
        (e.g. the first evaluated round after unevaluated ones) rewrites the file with the
        new column added (empty in the earlier rows), so every value stays under its header.
        """
        path = self.path / "metrics.csv"
        row = {k: _jsonable(v) for k, v in row.items()}
        header: list[str] = []
        if path.exists():
            with path.open(newline="") as fh:
                header = next(csv.reader(fh), [])
        if header and set(row) <= set(header):
            with path.open("a", newline="") as fh:
                csv.DictWriter(fh, fieldnames=header).writerow(row)
            return
        rows = self.read_metrics() if header else []
        fields = header + [k for k in row if k not in header]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=fields)
        writer.writeheader()
        writer.writerows([*rows, row])
        _atomic_write_text(path, text.getvalue())

    def read_metrics(self) -> list[dict[str, str]]:
        path = self.path / "metrics.csv"
        if not path.is_file():
            return []
        with path.open(newline="") as fh:
            return list(csv.DictReader(fh))

    def write_baseline(
        self,
        baseline: BaselineHazard,
        aggregates: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> Path:
        """Save the baseline hazard (and the summed aggregates it came from)."""
        data: dict[str, Any] = dict(baseline.to_dict())
        if aggregates:
            data["events"] = np.sum([np.asarray(a[0]) for a in aggregates], axis=0)
            data["risk_sum"] = np.sum([np.asarray(a[1]) for a in aggregates], axis=0)
        return self.write_json("baseline.json", data)

    def read_baseline(self) -> BaselineHazard | None:
        path = self.path / "baseline.json"
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        return BaselineHazard.from_dict({"edges": data["edges"], "cumhaz": data["cumhaz"]})
