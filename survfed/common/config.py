"""Typed training settings, read once and passed around (never scattered over files).

One :class:`TrainConfig` describes how a survival model is trained, for the pooled baseline and
for each federated site alike, so the two are comparable. It is saved in every run folder
(``config.json``) and can be read from a TOML file's ``[train]``, ``[train.model]`` and
``[train.loss]`` tables.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from survfed.common.survival.model import ModelConfig
from survfed.common.survival.train import LossConfig

__all__ = ["TrainConfig", "resolve_device"]


def resolve_device(name: str) -> str:
    """``"auto"`` → ``"cuda"`` when a CUDA device is usable, else ``"cpu"``; others unchanged."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class TrainConfig:
    """How the crop survival model is trained.

    Attributes:
        epochs: passes over the training patients (pooled) or local epochs per round (sites).
        batch_size: patients per site-local mini-batch (the Cox risk set).
        lr: AdamW learning rate at the start of training.
        lr_final_factor: the learning rate decays along a half cosine from ``lr`` to
            ``lr * lr_final_factor`` over the whole training (all epochs of a pooled run, all
            rounds × local epochs of a federation; :meth:`lr_at`); 1 = constant.
        weight_decay: Adam (decoupled, AdamW) weight decay.
        average_last: the final model is the mean of the weights at the end of the last
            ``max(1, round(average_last · T))`` of the ``T`` epochs (pooled) or rounds
            (federated; :meth:`averaged_snapshots`) — tail (Polyak) averaging, which takes
            out most of the noise of where the last step happened to land; 0 = the last
            weights.
        seed: seeds model initialisation and batch shuffling.
        grid_step_days: width of the common time grid of the Breslow baseline aggregates.
        grid_max_days: end of that grid (days); later times count as censored at the end.
        max_grad_norm: gradient clipping (``None`` = off).
        augment: random flips and axial quarter turns of the training crops.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        model: architecture and crop preprocessing.
        loss: two-task loss weights and ties.
    """

    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    lr_final_factor: float = 0.1
    weight_decay: float = 1e-4
    average_last: float = 0.3
    seed: int = 0
    grid_step_days: float = 30.0
    grid_max_days: float = 3650.0
    max_grad_norm: float | None = 5.0
    augment: bool = True
    device: str = "auto"
    model: ModelConfig = field(default_factory=lambda: ModelConfig(encoder="small"))
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.batch_size, int) and self.batch_size < 2:
            raise ValueError("batch_size must be >= 2 (a Cox risk set of one trains nothing)")
        for name in ("lr", "grid_step_days", "grid_max_days"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not (isinstance(self.lr_final_factor, int | float) and 0 < self.lr_final_factor <= 1):
            raise ValueError(f"lr_final_factor must be in (0, 1], got {self.lr_final_factor!r}")
        if not (isinstance(self.average_last, int | float) and 0 <= self.average_last <= 1):
            raise ValueError(f"average_last must be in [0, 1], got {self.average_last!r}")
        if not (isinstance(self.weight_decay, int | float) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")

    def lr_at(self, epoch: int, total_epochs: int) -> float:
        """The learning rate of epoch ``epoch`` (0-based) of ``total_epochs``.

        ``lr · (f + (1 − f) · (1 + cos(π · epoch / total_epochs)) / 2)`` with
        ``f = lr_final_factor``: ``lr`` in the first epoch, approaching ``f · lr`` in the last.
        """
        if total_epochs < 1 or not 0 <= epoch < total_epochs:
            raise ValueError(f"epoch must be in [0, {total_epochs}), got {epoch}")
        f = float(self.lr_final_factor)
        return self.lr * (f + (1.0 - f) * 0.5 * (1.0 + math.cos(math.pi * epoch / total_epochs)))

    def averaged_snapshots(self, total: int) -> int:
        """How many of the last of ``total`` epochs/rounds enter the final average (>= 1)."""
        if total < 1:
            raise ValueError(f"total must be >= 1, got {total}")
        return min(total, max(1, round(self.average_last * total)))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/TOML-able dict."""
        out = asdict(self)
        out["model"] = self.model.to_dict()
        out["loss"] = self.loss.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; missing keys take defaults, unknown keys are errors."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown train config keys {unknown}; known: {sorted(known)}")
        values = dict(data)
        if "model" in values and not isinstance(values["model"], ModelConfig):
            values["model"] = ModelConfig.from_dict({"encoder": "small", **dict(values["model"])})
        if "loss" in values and not isinstance(values["loss"], LossConfig):
            values["loss"] = LossConfig.from_dict(dict(values["loss"]))
        return cls(**values)

    @classmethod
    def from_toml(cls, path: str | Path, table: str = "train") -> TrainConfig:
        """Read ``[table]`` (with ``[table.model]`` / ``[table.loss]``) from a TOML file."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"cannot read config {path}: {exc}") from exc
        return cls.from_dict(dict(data.get(table, {})))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})
