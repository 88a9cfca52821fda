"""The federation's settings, read once from Flower's run config and the SuperNode's node config.

Flower hands a run its settings as a flat mapping (``[tool.flwr.app.config]`` of the app's
``pyproject.toml``, overridden by ``flwr run --run-config``). :class:`FederationConfig` is that
mapping, typed and checked, with the training settings mapped onto the shared
:class:`~survfed.common.config.TrainConfig` (the pooled baseline uses the same one).

Run config keys (all optional except ``run-dir``)::

    num-server-rounds = 5         # federated rounds
    local-epochs = 1              # passes over the site's patients per round
    strategy = "fedavg"           # fedavg | fedprox | fedadam
    proximal-mu = 0.0             # FedProx mu (strategy = fedprox)
    server-lr = 0.01              # FedAdam eta (strategy = fedadam)
    fraction-train = 1.0          # share of connected sites asked to train each round
    min-sites = 2                 # wait for this many sites; fewer replies skip the update
    round-timeout-s = 600.0       # a round waits at most this long for replies
    min-patients-for-metrics = 10 # smaller sites send weights + num-examples only
    run-dir = "/srv/survfed/runs/r1"   # absolute: the run folder (coordinator side)
    eval-cohorts = "/data/heldout"     # comma-separated held-out site folders (coordinator)
    eval-cache-dir = ""           # crop cache of the held-out cohorts (default RUN/cache)
    bootstrap-per-round = 20      # cheap intervals after every round
    bootstrap-final = 200         # full intervals at the end
    resume = false                # continue from RUN/checkpoint (set by --resume)
    seed = 0
    batch-size = 16  lr = 0.001  lr-final-factor = 0.1  weight-decay = 0.0001
    average-last = 0.3            # final model = mean of the last 30% of the rounds' models
    max-grad-norm = 5.0 (0 = off)
    grid-step-days = 30.0  grid-max-days = 3650.0  device = "auto"
    encoder = "small"  k = 5  crop-size = 32  spacing-mm = 1.0  hu-low = -1200.0
    hu-high = 600.0  feature-dim = 128  hidden = 32
    cancer-head = "two-task"      # or "noisy-or": leaky noisy-OR over per-nodule probabilities
                                  # (encoder "nnet"/"nnet-small" starts from the detector)
    cox-weight = 1.0  bce-weight = 1.0  ties = "efron"
    detector-rounds = 0           # N-Net detector rounds before the survival rounds (0 = none)
    detector-init = ""            # coordinator path: a detector.pt, or a run folder
                                  # holding one; detector rounds start from it, and with
                                  # detector-rounds = 0 it is the run's detector as it is
    crop-source = "detector"      # survival crops from: "detector" proposals (default with
                                  # a detector) or "annotations" (nodules.csv)
    detector-eval-every = 1       # held-out detection metrics every N detector rounds
    detector-preset = "paper"     # "paper" (1 mm, 128^3 patches, width 24) or "cpu" (small)
    detector-width = 0  detector-patch-size = 0  detector-spacing-mm = 0.0
    detector-tile-size = 0        # 0 = the preset's value
    detector-mirror-tta = false   # inference also on the y/x mirrored scan, averaged (4x time)
    detector-local-epochs = 1  detector-batch-size = 2  detector-lr = 0.002
    detector-average-last = 0.1   # final detector = mean of the last 10% of the detector
                                  # rounds' models (0 = the last round's model alone)
    detector-samples-per-epoch = 0   # patches per site and epoch (0 = every nodule ~once)
    sim-cohort = ""               # simulation only: the cohort folder of the virtual sites
    sim-sites = ""                # simulation only: comma-separated site folders of sim-cohort
                                  # (partition i -> i-th); default: every folder not evaluated

Node config keys (per site, from ``flower-supernode --node-config``): ``site``, ``data-dir``,
``cache-dir`` (default ``<data-dir>/../.survfed-cache/<site>``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from survfed.common.config import DetectorTrainConfig, TrainConfig
from survfed.common.detection.config import DetectorConfig
from survfed.common.survival.model import ModelConfig
from survfed.common.survival.train import LossConfig

__all__ = [
    "APP_NAME",
    "STRATEGIES",
    "FederationConfig",
    "SiteContext",
    "resolve_path_keys",
    "simulation_sites",
    "site_context",
]

APP_NAME = "survfed"
"""The app name stamped into every instruction (checked by the sites)."""
STRATEGIES = ("fedavg", "fedprox", "fedadam")

# flat run-config key -> (section, TrainConfig/ModelConfig/LossConfig field)
_TRAIN_KEYS: dict[str, tuple[str, str]] = {
    "batch-size": ("train", "batch_size"),
    "lr": ("train", "lr"),
    "lr-final-factor": ("train", "lr_final_factor"),
    "average-last": ("train", "average_last"),
    "weight-decay": ("train", "weight_decay"),
    "max-grad-norm": ("train", "max_grad_norm"),
    "grid-step-days": ("train", "grid_step_days"),
    "grid-max-days": ("train", "grid_max_days"),
    "device": ("train", "device"),
    "encoder": ("model", "encoder"),
    "k": ("model", "k"),
    "crop-size": ("model", "crop_size"),
    "spacing-mm": ("model", "spacing_mm"),
    "feature-dim": ("model", "feature_dim"),
    "hidden": ("model", "hidden"),
    "cancer-head": ("model", "cancer_head"),
    "cox-weight": ("loss", "cox_weight"),
    "bce-weight": ("loss", "bce_weight"),
    "ties": ("loss", "ties"),
}
_FED_KEYS = (
    "num-server-rounds",
    "local-epochs",
    "strategy",
    "proximal-mu",
    "server-lr",
    "fraction-train",
    "min-sites",
    "round-timeout-s",
    "min-patients-for-metrics",
    "run-dir",
    "eval-cohorts",
    "eval-cache-dir",
    "bootstrap-per-round",
    "bootstrap-final",
    "resume",
    "seed",
    "sim-cohort",
    "sim-sites",
    "detector-rounds",
    "detector-init",
    "crop-source",
    "detector-eval-every",
    "detector-preset",
    "detector-width",
    "detector-patch-size",
    "detector-spacing-mm",
    "detector-tile-size",
    "detector-mirror-tta",
    "detector-local-epochs",
    "detector-batch-size",
    "detector-lr",
    "detector-average-last",
    "detector-samples-per-epoch",
    "hu-low",
    "hu-high",
)
_DETECTOR_MODEL_KEYS = {
    "detector-width": "width",
    "detector-patch-size": "patch_size",
    "detector-spacing-mm": "spacing_mm",
    "detector-tile-size": "tile_size",
}
KNOWN_KEYS = frozenset(_FED_KEYS) | frozenset(_TRAIN_KEYS)
CROP_SOURCES = ("annotations", "detector")
DETECTOR_PRESETS = ("paper", "cpu")


PATH_KEYS = ("eval-cohorts", "eval-cache-dir", "detector-init")
"""Run-config keys holding coordinator paths (``eval-cohorts``: comma-separated)."""


def resolve_path_keys(data: Mapping[str, Any], root: Path) -> dict[str, Any]:
    """``data`` with the relative paths of :data:`PATH_KEYS` made absolute under ``root``
    (``~`` expanded); the ServerApp runs in another working directory, so a relative path
    would mean something else there."""
    out = dict(data)
    for key in PATH_KEYS:
        value = out.get(key)
        if not isinstance(value, str) or not value.strip():
            continue
        paths = [Path(v.strip()).expanduser() for v in value.split(",") if v.strip()]
        out[key] = ",".join(str(p if p.is_absolute() else root / p) for p in paths)
    return out


def _int(data: Mapping[str, Any], key: str, default: int, minimum: int) -> int:
    value = data.get(key, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"run config {key!r} must be an integer >= {minimum}, got {value!r}")
    return value


def _share(data: Mapping[str, Any], key: str, default: float) -> float:
    value = _float(data, key, default)
    if value > 1:
        raise ValueError(f"run config {key!r} must be in [0, 1], got {value}")
    return value


def _float(data: Mapping[str, Any], key: str, default: float, minimum: float = 0.0) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"run config {key!r} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"run config {key!r} must be a finite number >= {minimum}, got {value}")
    return value


def _str(data: Mapping[str, Any], key: str, default: str) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"run config {key!r} must be a string, got {value!r}")
    return value


def _list(data: Mapping[str, Any], key: str) -> tuple[str, ...]:
    """A comma-separated string as a tuple of its non-empty, stripped items."""
    return tuple(c.strip() for c in _str(data, key, "").split(",") if c.strip())


def _bool(data: Mapping[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise ValueError(f"run config {key!r} must be true or false, got {value!r}")
    return value


@dataclass(frozen=True)
class FederationConfig:
    """Typed federation settings (see the module docstring for the run-config keys).

    Attributes:
        num_server_rounds: federated rounds in total (a resumed run stops at the same total).
        strategy: ``fedavg``, ``fedprox`` or ``fedadam``.
        proximal_mu: FedProx ``mu`` (>= 0), sent to the sites in every train instruction.
        server_lr: FedAdam server learning rate (``eta``).
        fraction_train: share of connected sites sampled per round (0 < f <= 1).
        min_sites: sites to wait for, and the fewest train replies that update the model.
        round_timeout_s: the longest a round waits for replies (seconds).
        min_patients_for_metrics: sites with fewer training patients send no metrics.
        run_dir: the run folder on the coordinator (absolute path; ``""`` on a site).
        eval_cohorts: held-out site folders evaluated after every round (coordinator).
        eval_cache_dir: crop cache for the held-out cohorts (``None`` = ``run_dir/cache``).
        bootstrap_per_round, bootstrap_final: bootstrap resamples per round / at the end.
        resume: continue from ``run_dir/checkpoint`` instead of refusing an existing one.
        sim_cohort: simulation engine only: the cohort folder holding the virtual sites.
        sim_sites: simulation engine only: the site folders of ``sim_cohort`` that train
            (partition id ``i`` -> ``i``-th); empty = every site folder that is not one of
            ``eval_cohorts``, sorted by name.
        train: model, loss and optimiser settings; ``train.epochs`` = local epochs per round.
        detector_rounds: N-Net detector rounds run before the survival rounds (0 = none).
        detector_init: a detector file (or a run folder holding one) on the coordinator: the
            detector rounds start from its weights instead of a random N-Net, and with no
            detector rounds it is the run's detector as it is (proposals, ``nnet`` encoders).
            ``""`` = none.
        crop_source: ``"annotations"`` (survival crops at ``nodules.csv`` nodules) or
            ``"detector"`` (at the run's detector's top-k proposals; every usable
            patient then takes part, annotated or not).
        detector_eval_every: held-out detection metrics after every N-th detector round (and
            the last).
        detector: the detector and its local training (``epochs`` = local epochs per round);
            shares ``seed``, ``device``, ``weight-decay``, ``max-grad-norm`` and
            ``lr-final-factor`` with ``train``; its tail average is its own
            (``detector-average-last``).
    """

    num_server_rounds: int = 5
    strategy: str = "fedavg"
    proximal_mu: float = 0.0
    server_lr: float = 1e-2
    fraction_train: float = 1.0
    min_sites: int = 2
    round_timeout_s: float = 600.0
    min_patients_for_metrics: int = 10
    run_dir: str = ""
    eval_cohorts: tuple[str, ...] = ()
    eval_cache_dir: str | None = None
    bootstrap_per_round: int = 20
    bootstrap_final: int = 200
    resume: bool = False
    sim_cohort: str = ""
    sim_sites: tuple[str, ...] = ()
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1))
    detector_rounds: int = 0
    detector_init: str = ""
    crop_source: str = "annotations"
    detector_eval_every: int = 1
    detector_preset: str = "paper"
    detector: DetectorTrainConfig = field(default_factory=DetectorTrainConfig)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.strategy == "fedprox" and self.proximal_mu <= 0:
            raise ValueError("strategy 'fedprox' needs proximal-mu > 0")
        if not 0.0 < self.fraction_train <= 1.0:
            raise ValueError(f"fraction-train must be in (0, 1], got {self.fraction_train}")
        if self.round_timeout_s <= 0:
            raise ValueError(f"round-timeout-s must be > 0, got {self.round_timeout_s}")
        if self.run_dir and not Path(self.run_dir).is_absolute():
            raise ValueError(f"run-dir must be an absolute path, got {self.run_dir!r}")
        if self.crop_source not in CROP_SOURCES:
            raise ValueError(f"crop-source must be one of {CROP_SOURCES}, got {self.crop_source!r}")
        if self.detector_init and not Path(self.detector_init).is_absolute():
            raise ValueError(f"detector-init must be an absolute path, got {self.detector_init!r}")
        if self.crop_source == "detector" and not self.has_detector:
            raise ValueError("crop-source 'detector' needs detector-rounds >= 1 or detector-init")
        if self.detector_preset not in DETECTOR_PRESETS:
            raise ValueError(
                f"detector-preset must be one of {DETECTOR_PRESETS}, got {self.detector_preset!r}"
            )

    @property
    def has_detector(self) -> bool:
        """Whether the run has a detector stage (detector rounds, or a detector to start from)."""
        return self.detector_rounds > 0 or bool(self.detector_init)

    @property
    def local_epochs(self) -> int:
        """Local epochs per round (``train.epochs``)."""
        return self.train.epochs

    @property
    def run_path(self) -> Path:
        """``run_dir`` as a path; raises when it is not set (only the coordinator needs it)."""
        if not self.run_dir:
            raise ValueError("run config 'run-dir' is not set")
        return Path(self.run_dir)

    @classmethod
    def from_run_config(cls, data: Mapping[str, Any]) -> FederationConfig:
        """Parse Flower's flat run config; unknown keys are errors (typos do not pass)."""
        unknown = sorted(set(data) - KNOWN_KEYS)
        if unknown:
            raise ValueError(f"unknown run config keys {unknown}; known: {sorted(KNOWN_KEYS)}")
        base = TrainConfig()
        sections: dict[str, dict[str, Any]] = {
            "train": {},
            "model": base.model.to_dict(),
            "loss": base.loss.to_dict(),
        }
        for key, (section, name) in _TRAIN_KEYS.items():
            if key in data:
                sections[section][name] = data[key]
        if "max_grad_norm" in sections["train"]:
            norm = _float(data, "max-grad-norm", 5.0)
            sections["train"]["max_grad_norm"] = norm if norm > 0 else None
        lo = _float(data, "hu-low", base.model.hu_window[0], minimum=-math.inf)
        hi = _float(data, "hu-high", base.model.hu_window[1], minimum=-math.inf)
        sections["model"]["hu_window"] = (lo, hi)
        train = TrainConfig(
            **sections["train"],
            epochs=_int(data, "local-epochs", 1, 1),
            seed=_int(data, "seed", 0, 0),
            model=ModelConfig.from_dict(sections["model"]),
            loss=LossConfig.from_dict(sections["loss"]),
        )
        cohorts = _list(data, "eval-cohorts")
        detector_rounds = _int(data, "detector-rounds", 0, 0)
        preset = _str(data, "detector-preset", "paper").lower()
        det_fields: dict[str, Any] = {"preset": preset}
        for key, name in _DETECTOR_MODEL_KEYS.items():
            value = _float(data, key, 0.0)
            if value > 0:
                det_fields[name] = value if name == "spacing_mm" else int(value)
        det_fields["mirror_tta"] = _bool(data, "detector-mirror-tta", DetectorConfig.mirror_tta)
        samples = _int(data, "detector-samples-per-epoch", 0, 0)
        detector = DetectorTrainConfig.from_dict(
            {
                "epochs": _int(data, "detector-local-epochs", 1, 1),
                "batch_size": _int(data, "detector-batch-size", 2, 1),
                "lr": _float(data, "detector-lr", DetectorTrainConfig.lr),
                "samples_per_epoch": samples or None,
                "seed": train.seed,
                "device": train.device,
                "weight_decay": train.weight_decay,
                "max_grad_norm": train.max_grad_norm,
                "lr_final_factor": train.lr_final_factor,
                "average_last": _share(
                    data, "detector-average-last", DetectorTrainConfig.average_last
                ),
                "detector": det_fields,
            }
        )
        detector_init = _str(data, "detector-init", "")
        default_source = "detector" if detector_rounds > 0 or detector_init else "annotations"
        return cls(
            num_server_rounds=_int(data, "num-server-rounds", 5, 1),
            strategy=_str(data, "strategy", "fedavg").lower(),
            proximal_mu=_float(data, "proximal-mu", 0.0),
            server_lr=_float(data, "server-lr", 1e-2),
            fraction_train=_float(data, "fraction-train", 1.0),
            min_sites=_int(data, "min-sites", 2, 1),
            round_timeout_s=_float(data, "round-timeout-s", 600.0),
            min_patients_for_metrics=_int(data, "min-patients-for-metrics", 10, 1),
            run_dir=_str(data, "run-dir", ""),
            eval_cohorts=cohorts,
            eval_cache_dir=_str(data, "eval-cache-dir", "") or None,
            bootstrap_per_round=_int(data, "bootstrap-per-round", 20, 0),
            bootstrap_final=_int(data, "bootstrap-final", 200, 0),
            resume=_bool(data, "resume", False),
            sim_cohort=_str(data, "sim-cohort", ""),
            sim_sites=_list(data, "sim-sites"),
            train=train,
            detector_rounds=detector_rounds,
            detector_init=detector_init,
            crop_source=_str(data, "crop-source", default_source).lower(),
            detector_eval_every=_int(data, "detector-eval-every", 1, 1),
            detector_preset=preset,
            detector=detector,
        )

    def to_run_config(self) -> dict[str, Any]:
        """The flat run config that :meth:`from_run_config` reads back (TOML-able)."""
        t = self.train
        out: dict[str, Any] = {
            "num-server-rounds": self.num_server_rounds,
            "local-epochs": t.epochs,
            "strategy": self.strategy,
            "proximal-mu": self.proximal_mu,
            "server-lr": self.server_lr,
            "fraction-train": self.fraction_train,
            "min-sites": self.min_sites,
            "round-timeout-s": self.round_timeout_s,
            "min-patients-for-metrics": self.min_patients_for_metrics,
            "run-dir": self.run_dir,
            "eval-cohorts": ",".join(self.eval_cohorts),
            "eval-cache-dir": self.eval_cache_dir or "",
            "bootstrap-per-round": self.bootstrap_per_round,
            "bootstrap-final": self.bootstrap_final,
            "resume": self.resume,
            "seed": t.seed,
            "sim-cohort": self.sim_cohort,
            "sim-sites": ",".join(self.sim_sites),
            "hu-low": t.model.hu_window[0],
            "hu-high": t.model.hu_window[1],
            "detector-rounds": self.detector_rounds,
            "detector-init": self.detector_init,
            "crop-source": self.crop_source,
            "detector-eval-every": self.detector_eval_every,
            "detector-preset": self.detector_preset,
            "detector-local-epochs": self.detector.epochs,
            "detector-batch-size": self.detector.batch_size,
            "detector-lr": self.detector.lr,
            "detector-average-last": self.detector.average_last,
            "detector-samples-per-epoch": self.detector.samples_per_epoch or 0,
        }
        for key, name in _DETECTOR_MODEL_KEYS.items():
            out[key] = getattr(self.detector.detector, name)
        out["detector-mirror-tta"] = self.detector.detector.mirror_tta
        sections = {"train": t.to_dict(), "model": t.model.to_dict(), "loss": t.loss.to_dict()}
        for key, (section, name) in _TRAIN_KEYS.items():
            value = sections[section][name]
            if key == "max-grad-norm" and value is None:
                value = 0.0
            out[key] = value
        return out

    def replace(self, **changes: Any) -> FederationConfig:
        """A copy with some flat run-config keys changed (validated again)."""
        return FederationConfig.from_run_config({**self.to_run_config(), **changes})


@dataclass(frozen=True)
class SiteContext:
    """Where one site's data lives (from the SuperNode's node config).

    Attributes:
        site: the site name.
        data_dir: the site folder (clinical.csv, nodules.csv, dicom/).
        cache_dir: writable crop cache folder.
    """

    site: str
    data_dir: Path
    cache_dir: Path


def simulation_sites(fed: FederationConfig) -> list[Path]:
    """The simulation's training site folders, in partition order (see ``sim-sites``).

    Without ``sim-sites``: every folder of ``sim-cohort`` not starting with ``_`` or ``.``
    and not one of the held-out ``eval-cohorts``, sorted by name.
    """
    cohort = Path(fed.sim_cohort)
    if fed.sim_sites:
        folders = [cohort / name for name in fed.sim_sites]
        missing = [str(f) for f in folders if not f.is_dir()]
        if missing:
            raise ValueError(f"run config 'sim-sites' names missing folders: {missing}")
        return folders
    held_out = {Path(c).resolve() for c in fed.eval_cohorts}
    return sorted(
        p
        for p in cohort.iterdir()
        if p.is_dir() and not p.name.startswith(("_", ".")) and p.resolve() not in held_out
    )


def site_context(node_config: Mapping[str, Any], fed: FederationConfig) -> SiteContext:
    """The site's name and folders from ``context.node_config``.

    Deployment: the SuperNode's node config carries ``site`` and ``data-dir`` (and optionally
    ``cache-dir``). Simulation: node config has ``partition-id``; with ``sim-cohort`` set in
    the run config, partition ``i`` is the ``i``-th of :func:`simulation_sites`.
    """
    site = node_config.get("site")
    data = node_config.get("data-dir")
    if isinstance(site, str) and site and isinstance(data, str) and data:
        data_dir = Path(data)
    elif "partition-id" in node_config and fed.sim_cohort:
        folders = simulation_sites(fed)
        pid = int(node_config["partition-id"])
        if not 0 <= pid < len(folders):
            raise ValueError(
                f"partition-id {pid} has no site folder: sim-cohort {fed.sim_cohort} has "
                f"{len(folders)} training site folders"
            )
        data_dir = folders[pid]
        site = data_dir.name
    else:
        raise ValueError(
            "the node config has no 'site' and 'data-dir' (start the SuperNode with "
            "survfed-client, or set run config 'sim-cohort' for the simulation engine)"
        )
    cache = node_config.get("cache-dir")
    cache_dir = (
        Path(cache)
        if isinstance(cache, str) and cache
        else data_dir.parent / ".survfed-cache" / str(site)
    )
    return SiteContext(site=str(site), data_dir=data_dir, cache_dir=cache_dir)
