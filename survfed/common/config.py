"""Typed training settings, read once and passed around (never scattered over files).

One :class:`TrainConfig` describes how a survival model is trained, for the pooled baseline and
for each federated site alike, so the two are comparable. It is saved in every run folder
(``config.json``) and can be read from a TOML file's ``[train]``, ``[train.model]`` and
``[train.loss]`` tables. :class:`DetectorTrainConfig` is the same for the nodule detector
(``[detector]`` with ``[detector.model]``). Both share the learning-rate schedule and the tail
averaging (:class:`Schedule`).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from survfed.common.detection.config import DetectorConfig, cpu_preset
from survfed.common.survival.model import ModelConfig
from survfed.common.survival.train import LossConfig

__all__ = ["DetectorTrainConfig", "Schedule", "TrainConfig", "resolve_device"]


def resolve_device(name: str) -> str:
    """``"auto"`` → ``"cuda"`` when a CUDA device is usable, else ``"cpu"``; others unchanged."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Schedule:
    """The learning-rate schedule and tail averaging of a training config (a mixin).

    Needs the fields ``lr``, ``lr_final_factor`` and ``average_last`` (see
    :class:`TrainConfig`).
    """

    lr: float
    lr_final_factor: float
    average_last: float

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

    def _check_schedule(self) -> None:
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        f = self.lr_final_factor
        if not (isinstance(f, int | float) and 0 < f <= 1):
            raise ValueError(f"lr_final_factor must be in (0, 1], got {f!r}")
        if not (isinstance(self.average_last, int | float) and 0 <= self.average_last <= 1):
            raise ValueError(f"average_last must be in [0, 1], got {self.average_last!r}")


def _check_device(device: str) -> None:
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {device!r}")


@dataclass(frozen=True)
class TrainConfig(Schedule):
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
        self._check_schedule()
        for name in ("grid_step_days", "grid_max_days"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not (isinstance(self.weight_decay, int | float) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        _check_device(self.device)

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


@dataclass(frozen=True)
class DetectorTrainConfig(Schedule):
    """How the N-Net nodule detector (seed 003 §IV) is trained, pooled or at each site.

    Attributes:
        epochs: passes over the patch sampler (pooled: in total; federated: per round).
        batch_size: patches per optimiser step (paper: 2 per GPU).
        lr, lr_final_factor, weight_decay: AdamW and the schedule, as in :class:`TrainConfig`.
        average_last: the tail average, as in :class:`TrainConfig`, but over a shorter tail
            (the last 10 %: 3 of 30 rounds): on the benchmark's tuning seeds the mean of the
            last 30 % of the rounds lagged the last round's model by up to 0.06 held-out CPM,
            and the last 3 rounds' mean was best on average (``docs/benchmarks.md``).
        max_grad_norm: gradient clipping (``None`` = off).
        samples_per_epoch: patches per epoch (per site when federated); ``None`` = the
            sampler's rule (every nodule about once, 70 % nodule patches).
        seed: initialisation, patches and negative pools.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        detector: the network, its targets, sampling and inference
            (:class:`~survfed.common.detection.config.DetectorConfig`); its ``spacing_mm`` is
            the preprocessing grid (:meth:`preprocess_config`).
    """

    epochs: int = 1
    batch_size: int = 2
    lr: float = 2e-3  # 1e-3 left a 10-round federation of the CPU preset at chance (CPM 0.007)
    lr_final_factor: float = 0.1
    weight_decay: float = 1e-4
    average_last: float = 0.1
    max_grad_norm: float | None = 5.0
    samples_per_epoch: int | None = None
    seed: int = 0
    device: str = "auto"
    detector: DetectorConfig = field(default_factory=DetectorConfig)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        n = self.samples_per_epoch
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"samples_per_epoch must be a positive integer or None, got {n!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}")
        if not (isinstance(self.weight_decay, int | float) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        self._check_schedule()
        _check_device(self.device)
        if not isinstance(self.detector, DetectorConfig):
            raise TypeError(f"detector must be a DetectorConfig, got {type(self.detector)}")

    def preprocess_config(self):  # -> PreprocessConfig (imported lazily: scipy, skimage)
        """The lung preprocessing the detector's scans need: the paper's, on its grid."""
        from survfed.common.imaging.preprocess.config import PreprocessConfig

        return PreprocessConfig(spacing_mm=self.detector.spacing_mm)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/TOML-able dict (``detector`` nested)."""
        out = asdict(self)
        out["detector"] = self.detector.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorTrainConfig:
        """Inverse of :meth:`to_dict`; ``detector`` may also be ``{"preset": "cpu", ...}``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown detector train keys {unknown}; known: {sorted(known)}")
        values = dict(data)
        det = values.get("detector")
        if isinstance(det, dict):
            det = dict(det)
            preset = det.pop("preset", "paper")
            if preset == "cpu":
                values["detector"] = cpu_preset(**det)
            elif preset == "paper":
                values["detector"] = DetectorConfig.from_dict(det)
            else:
                raise ValueError(f"detector preset must be 'paper' or 'cpu', got {preset!r}")
        return cls(**values)

    @classmethod
    def from_toml(cls, path: str | Path, table: str = "detector") -> DetectorTrainConfig:
        """Read ``[table]`` (with ``[table.detector]``, which may name ``preset = "cpu"``)."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"cannot read config {path}: {exc}") from exc
        return cls.from_dict(dict(data.get(table, {})))

    def replace(self, **changes: Any) -> DetectorTrainConfig:
        """A copy with some fields changed (validated again)."""
        return DetectorTrainConfig.from_dict({**self.to_dict(), **changes})
