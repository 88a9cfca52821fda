"""Model and detector files that are missing, truncated or not torch at all: errors name them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from survfed.common.detection.config import cpu_preset
from survfed.common.detection.nnet import build_nnet
from survfed.common.detection.train import load_detector, save_detector
from survfed.common.survival.model import load_model
from survfed.common.torch_files import load_payload


def test_missing_corrupt_and_truncated_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no detector file at .*nothing\.pt"):
        load_payload(tmp_path / "nothing.pt", what="detector")
    garbage = tmp_path / "garbage.pt"
    garbage.write_text("not a torch file\n")
    with pytest.raises(ValueError, match=r"garbage\.pt is not a readable N-Net detector file"):
        load_detector(garbage)
    with pytest.raises(ValueError, match=r"garbage\.pt is not a readable crop-survival model"):
        load_model(garbage)
    good = save_detector(tmp_path / "d.pt", build_nnet(cpu_preset()), cpu_preset())
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # a copy that stopped halfway
    with pytest.raises(ValueError, match=r"cut\.pt is not a readable N-Net detector file"):
        load_detector(cut)
    model, _ = load_detector(good)  # the intact file still loads
    assert isinstance(next(model.parameters()), torch.Tensor)
