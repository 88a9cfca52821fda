"""The detector stage's starting weights: a fresh N-Net, or ``detector-init``'s file checked
against the run's detector settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from survfed.app.config import FederationConfig
from survfed.common.detection.config import cpu_preset
from survfed.common.detection.nnet import build_nnet
from survfed.common.detection.train import save_detector
from survfed.server.fed_detector import initial_detector_state

CPU = {"detector-preset": "cpu", "detector-rounds": 1}


def _saved(path: Path, seed: int = 3, **overrides: object) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    config = cpu_preset(**overrides)
    net = build_nnet(config)
    save_detector(path, net, config)
    return net.state_dict()


def test_without_init_the_stage_starts_from_the_seeded_fresh_network() -> None:
    fed = FederationConfig.from_run_config({**CPU, "seed": 5})
    state, init = initial_detector_state(fed)
    again, _ = initial_detector_state(fed)
    torch.manual_seed(6)
    other = build_nnet(cpu_preset()).state_dict()
    assert init is None
    assert all(torch.equal(state[k], again[k]) for k in state)  # reproducible
    assert not all(torch.equal(state[k], other[k]) for k in state)  # and seeded


@pytest.mark.parametrize("name", ["detector.pt", "detector/detector.pt"])
def test_init_reads_the_file_or_a_run_folder_holding_it(tmp_path: Path, name: str) -> None:
    saved = _saved(tmp_path / "run" / name)
    given = tmp_path / "run" if name.startswith("detector/") else tmp_path / "run" / name
    fed = FederationConfig.from_run_config({**CPU, "detector-init": str(given)})
    state, init = initial_detector_state(fed)
    assert init == str(tmp_path / "run" / name)
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[k], saved[k]) for k in saved)


def test_a_detector_of_another_width_or_grid_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "detector.pt"
    _saved(path, width=12, spacing_mm=2.0)
    fed = FederationConfig.from_run_config({**CPU, "detector-init": str(path)})
    with pytest.raises(ValueError, match="does not fit") as err:
        initial_detector_state(fed)
    message = str(err.value)
    assert str(path) in message
    assert "width: file 12, run 8" in message and "spacing_mm: file 2.0, run 2.5" in message
    fits = fed.replace(**{"detector-width": 12, "detector-spacing-mm": 2.0})
    assert initial_detector_state(fits)[1] == str(path)


def test_a_missing_or_foreign_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = FederationConfig.from_run_config({**CPU, "detector-init": str(tmp_path / "run")})
    (tmp_path / "run").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a detector file nor a run folder"):
        initial_detector_state(missing)
    other = tmp_path / "model.pt"
    torch.save({"state_dict": {}}, other)
    foreign = FederationConfig.from_run_config({**CPU, "detector-init": str(other)})
    with pytest.raises(ValueError, match="not a survfed N-Net detector"):
        initial_detector_state(foreign)
