"""The two-task nodule-crop model of seed 000 (§5.3, table 8) and its saved form.

A patient is ``k`` nodule crops (top-k, largest or most suspicious first; blank where the patient
has fewer nodules). Each *present* crop goes through a shared 3D encoder (128-D feature) and a
fully connected layer to ``hidden`` = 32 units with ReLU; the element-wise maximum over the
patient's present crops gives one 32-D vector, and a last fully connected layer gives one number
``g`` per patient: the log hazard (relative risk) of the Cox term.

The cancer probability comes from one of two selectable heads (``ModelConfig.cancer_head``):

* ``"two-task"`` (seed 000): ``sigmoid(g)`` — the same number drives both terms;
* ``"noisy-or"`` (seed 003 §V-D): each present crop's encoder feature goes through a two-layer
  perceptron (64 hidden units) to a per-nodule probability ``P_i``, combined by the leaky
  noisy-OR ``P = 1 − (1 − P_d) ∏_i (1 − P_i)`` with a learned leak ``P_d`` (a patient without
  nodules has ``P = P_d``); ``g`` stays the Cox term's log hazard. Per-nodule probabilities make
  the cancer prediction interpretable nodule by nodule.

:meth:`CropSurvivalModel.outputs` returns both ``g`` and the cancer logit.

Masking: blank crops (``present=False``) never enter the maximum, so what is stored in a blank
crop cannot change ``g`` of a patient who has at least one nodule. A patient with *no* present
crop gets the pooled feature of an all-zero (blank) crop, computed by the same encoder and
hidden layer — a learned "no nodule" value — rather than zeros or NaN. Blank crops are not
encoded at all otherwise, which saves most of the compute on cohorts with few nodules.

:class:`ModelConfig` records how the inputs were made (crop size, spacing, HU window) along with
the architecture, and :func:`save_model` / :func:`load_model` keep the two together.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from survfed.common.detection.noisy_or import noisy_or_log_complement
from survfed.common.survival.encoders import ENCODER_NAMES, build_encoder
from survfed.common.torch_files import load_payload

__all__ = ["CANCER_HEADS", "CropSurvivalModel", "ModelConfig", "load_model", "save_model"]

CANCER_HEADS: tuple[str, ...] = ("two-task", "noisy-or")
"""Cancer heads of :class:`CropSurvivalModel` (see the module docstring)."""

_NODULE_HIDDEN = 64  # seed 003 §V-B: two-layer perceptron with 64 hidden units
_LEAK_INIT = -2.0  # P_d = sigmoid(-2) ≈ 0.12 before training
_FORMAT = "survfed.crop_survival_model"
_FORMAT_VERSION = 1


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and input preprocessing of a :class:`CropSurvivalModel`.

    Attributes:
        encoder: crop encoder name, one of ``resnet18``, ``vgg16``, ``alexnet``, ``small``
            (``small`` is the CPU preset).
        k: crops per patient (top-k nodules).
        crop_size: crop edge in voxels.
        spacing_mm: isotropic crop voxel size in mm.
        hu_window: ``(low, high)`` HU mapped to ``[0, 1]``.
        feature_dim: encoder output length per crop.
        hidden: width of the per-crop fully connected layer before the max over crops.
        cancer_head: ``"two-task"`` (``sigmoid(g)``) or ``"noisy-or"`` (leaky noisy-OR over
            per-nodule probabilities); see the module docstring.
    """

    encoder: str = "resnet18"
    k: int = 5
    crop_size: int = 32
    spacing_mm: float = 1.0
    hu_window: tuple[float, float] = (-1200.0, 600.0)
    feature_dim: int = 128
    hidden: int = 32
    cancer_head: str = "two-task"

    def __post_init__(self) -> None:
        if self.encoder not in ENCODER_NAMES:
            raise ValueError(f"encoder must be one of {ENCODER_NAMES}, got {self.encoder!r}")
        if self.cancer_head not in CANCER_HEADS:
            raise ValueError(f"cancer_head must be one of {CANCER_HEADS}, got {self.cancer_head!r}")
        _check_int(self.k, "k", 1)
        _check_int(self.crop_size, "crop_size", 8)
        _check_int(self.feature_dim, "feature_dim", 1)
        _check_int(self.hidden, "hidden", 1)
        try:
            spacing = float(self.spacing_mm)
            lo, hi = (float(v) for v in self.hu_window)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"spacing_mm must be a number and hu_window two numbers, got "
                f"{self.spacing_mm!r} and {self.hu_window!r}"
            ) from err
        if not (math.isfinite(spacing) and spacing > 0):
            raise ValueError(f"spacing_mm must be a positive number, got {self.spacing_mm!r}")
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"hu_window must be finite with low < high, got {self.hu_window!r}")
        object.__setattr__(self, "spacing_mm", spacing)
        object.__setattr__(self, "hu_window", (lo, hi))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (``hu_window`` as a list)."""
        out = asdict(self)
        out["hu_window"] = list(self.hu_window)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; missing keys take the defaults, unknown keys are errors."""
        if not isinstance(data, dict):
            raise TypeError(f"data must be a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known keys: {sorted(known)}")
        values = dict(data)
        if "hu_window" in values:
            values["hu_window"] = tuple(values["hu_window"])
        return cls(**values)

    def crop_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`survfed.common.imaging.crops.extract_crops`."""
        return {
            "k": self.k,
            "size_vox": self.crop_size,
            "spacing_mm": self.spacing_mm,
            "hu_window": self.hu_window,
        }

    def build_model(self) -> CropSurvivalModel:
        """A freshly initialised model with this architecture."""
        return CropSurvivalModel(
            self.encoder,
            k=self.k,
            crop_size=self.crop_size,
            feature_dim=self.feature_dim,
            hidden=self.hidden,
            cancer_head=self.cancer_head,
        )


class CropSurvivalModel(nn.Module):
    """Shared crop encoder → FC(hidden) + ReLU → max over present crops → FC(1) = ``g``.

    Args:
        encoder_name: see :func:`survfed.common.survival.encoders.build_encoder`.
        k: crops per patient.
        crop_size: crop edge ``S`` in voxels.
        feature_dim: encoder output length (128 in seed 000).
        hidden: per-crop hidden width (32 in seed 000).
        cancer_head: ``"two-task"`` or ``"noisy-or"`` (see the module docstring).
    """

    def __init__(
        self,
        encoder_name: str,
        k: int = 5,
        crop_size: int = 32,
        feature_dim: int = 128,
        hidden: int = 32,
        cancer_head: str = "two-task",
    ) -> None:
        super().__init__()
        self.encoder_name = encoder_name
        self.k = _check_int(k, "k", 1)
        self.crop_size = _check_int(crop_size, "crop_size", 8)
        self.feature_dim = _check_int(feature_dim, "feature_dim", 1)
        self.hidden_dim = _check_int(hidden, "hidden", 1)
        self.encoder = build_encoder(encoder_name, feature_dim=feature_dim, crop_size=crop_size)
        self.hidden = nn.Linear(feature_dim, hidden)
        self.out = nn.Linear(hidden, 1)
        if cancer_head not in CANCER_HEADS:
            raise ValueError(f"cancer_head must be one of {CANCER_HEADS}, got {cancer_head!r}")
        self.cancer_head = cancer_head
        if cancer_head == "noisy-or":
            self.nodule_mlp = nn.Sequential(
                nn.Linear(feature_dim, _NODULE_HIDDEN), nn.ReLU(), nn.Linear(_NODULE_HIDDEN, 1)
            )
            self.leak_logit = nn.Parameter(torch.tensor(_LEAK_INIT))

    def crop_features(self, crops: torch.Tensor) -> torch.Tensor:
        """``(N, 1, S, S, S)`` crops → ``(N, hidden)`` post-ReLU per-crop features."""
        return torch.relu(self.hidden(self.encoder(crops)))

    def forward(self, crops: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Log hazard ``g`` per patient.

        Args:
            crops: ``(B, k, 1, S, S, S)`` float crops in ``[0, 1]``.
            present: ``(B, k)`` bool, False marks blank crops (ignored).

        Returns:
            ``(B,)`` float tensor ``g`` (with the two-task head ``sigmoid(g)`` is also the
            cancer probability; see :meth:`outputs`).
        """
        return self.outputs(crops, present)[0]

    def outputs(
        self, crops: torch.Tensor, present: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(g, cancer_logit)``, both ``(B,)``: the log hazard and the logit of P(cancer).

        With the two-task head the two are the same tensor; with the noisy-OR head the
        cancer logit is ``log P − log(1 − P)`` of the leaky noisy-OR, from its log-complement
        (stable when ``P`` is near 0 or 1).
        """
        s = self.crop_size
        if crops.ndim != 6 or tuple(crops.shape[1:]) != (self.k, 1, s, s, s):
            raise ValueError(
                f"crops must have shape (B, {self.k}, 1, {s}, {s}, {s}), got {tuple(crops.shape)}"
            )
        if present.shape != crops.shape[:2]:
            raise ValueError(
                f"present must have shape {tuple(crops.shape[:2])}, got {tuple(present.shape)}"
            )
        present = present.to(device=crops.device, dtype=torch.bool)
        batch = crops.shape[0]
        has_any = present.any(dim=1)
        n_present = int(present.sum())
        inputs = crops[present]
        if not bool(has_any.all()):
            inputs = torch.cat([inputs, crops.new_zeros((1, 1, s, s, s))])
        encoded = self.encoder(inputs)
        feats = torch.relu(self.hidden(encoded))
        per_crop = feats.new_full((batch, self.k, self.hidden_dim), float("-inf"))
        per_crop = per_crop.index_put((present,), feats[:n_present])
        pooled = per_crop.amax(dim=1)
        if n_present < feats.shape[0]:
            pooled = torch.where(has_any[:, None], pooled, feats[n_present:].expand_as(pooled))
        g = self.out(pooled).squeeze(-1)
        if self.cancer_head == "two-task":
            return g, g
        logits = g.new_zeros((batch, self.k))
        z = self.nodule_mlp(encoded[:n_present]).squeeze(-1).to(logits.dtype)
        logits = logits.index_put((present,), z)
        log_c = noisy_or_log_complement(logits, present, self.leak_logit.to(logits.dtype))
        log_c = log_c.clamp(max=-1e-7)  # P >= 1e-7: the logit stays finite
        return g, torch.log(-torch.expm1(log_c)) - log_c


def _check_matches(model: CropSurvivalModel, config: ModelConfig) -> None:
    pairs = {
        "encoder": (model.encoder_name, config.encoder),
        "k": (model.k, config.k),
        "crop_size": (model.crop_size, config.crop_size),
        "feature_dim": (model.feature_dim, config.feature_dim),
        "hidden": (model.hidden_dim, config.hidden),
        "cancer_head": (model.cancer_head, config.cancer_head),
    }
    bad = {name: pair for name, pair in pairs.items() if pair[0] != pair[1]}
    if bad:
        detail = ", ".join(f"{n}: model {m!r} vs config {c!r}" for n, (m, c) in bad.items())
        raise ValueError(f"config does not describe model ({detail})")


def save_model(path: str | os.PathLike[str], model: CropSurvivalModel, config: ModelConfig) -> Path:
    """Write the weights and the config to ``path`` (atomically) and return the path.

    The file is a ``torch.save`` of a dict with plain types and CPU tensors only, so
    :func:`load_model` can read it with ``weights_only=True``.
    """
    if not isinstance(model, CropSurvivalModel):
        raise TypeError(f"model must be a CropSurvivalModel, got {type(model).__name__}")
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
    _check_matches(model, config)
    from survfed import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "survfed_version": __version__,
        "config": config.to_dict(),
        "state_dict": {name: t.detach().cpu() for name, t in model.state_dict().items()},
    }
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_model(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> tuple[CropSurvivalModel, ModelConfig]:
    """Read a file written by :func:`save_model`; returns ``(model in eval mode, config)``."""
    path = Path(path)
    payload = load_payload(path, what="crop-survival model", map_location=map_location)
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"path: {path} is not a survfed crop-survival model file")
    if payload.get("format_version") != _FORMAT_VERSION:
        raise ValueError(
            f"path: {path} has model format version {payload.get('format_version')!r}; "
            f"this survfed reads version {_FORMAT_VERSION}"
        )
    config = ModelConfig.from_dict(payload["config"])
    model = config.build_model()
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, config
