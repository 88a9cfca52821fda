"""Per-round checkpoints: round trip, latest wins, and a half-written file never counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from survfed.server.checkpoint import checkpoint_dir, load_checkpoint, save_checkpoint


def test_round_trip_with_strategy_state(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    w = {"encoder.0.weight": rng.normal(size=(4, 3)).astype(np.float32), "out.bias": np.ones(1)}
    state = {"m_t": {k: v * 2 for k, v in w.items()}, "v_t": {k: v**2 for k, v in w.items()}}
    history = [{"round": 1, "c_index": 0.61}, {"round": 2, "c_index": None}]
    save_checkpoint(tmp_path, 2, w, strategy_state=state, history=history, meta={"s": "fedadam"})
    ck = load_checkpoint(tmp_path)
    assert ck is not None and ck.round == 2
    for k, v in w.items():
        np.testing.assert_array_equal(ck.arrays[k], v)
        assert ck.arrays[k].dtype == v.dtype
    np.testing.assert_array_equal(ck.strategy_state["v_t"]["out.bias"], np.ones(1))
    assert ck.history == history and ck.meta == {"s": "fedadam"}


def test_latest_round_wins_and_old_files_can_be_pruned(tmp_path: Path) -> None:
    for r in (1, 2, 3):
        save_checkpoint(tmp_path, r, {"w": np.full(2, float(r))}, keep=2)
    ck = load_checkpoint(tmp_path)
    assert ck is not None and ck.round == 3
    np.testing.assert_array_equal(ck.arrays["w"], [3.0, 3.0])
    files = sorted(p.name for p in checkpoint_dir(tmp_path).glob("round-*.npz"))
    assert files == ["round-0002.npz", "round-0003.npz"]


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 1, {"w": np.zeros(3)})
    # a server killed mid-write leaves only a temporary file behind
    (checkpoint_dir(tmp_path) / "round-0002.npz.abc.tmp").write_bytes(b"partial")
    ck = load_checkpoint(tmp_path)
    assert ck is not None and ck.round == 1


def test_no_checkpoint_and_bad_arguments(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path) is None
    with pytest.raises(ValueError, match="round_ must be an integer >= 1"):
        save_checkpoint(tmp_path, 0, {"w": np.zeros(1)})
    with pytest.raises(ValueError, match="arrays must hold"):
        save_checkpoint(tmp_path, 1, {})


def test_final_model_is_the_mean_of_the_last_rounds(tmp_path) -> None:
    """average-last = 0.5 of 4 rounds: rounds 3 and 4; a missing round file is left out."""
    import torch
    from flwr.app import ArrayRecord

    from survfed.app.config import FederationConfig
    from survfed.server.checkpoint import load_round_arrays
    from survfed.server.rounds import tail_average

    for rnd in (1, 2, 3, 4):
        save_checkpoint(tmp_path, rnd, {"w": np.full(3, float(rnd), dtype=np.float32)})
    assert load_round_arrays(tmp_path, 9) is None
    fed = FederationConfig.from_run_config({"num-server-rounds": 4, "average-last": 0.5})
    last = ArrayRecord({"w": torch.zeros(3)})
    state, used = tail_average(tmp_path, 4, fed.train, last)
    assert used == [3, 4]
    torch.testing.assert_close(state["w"], torch.full((3,), 3.5))
    (tmp_path / "checkpoint" / "round-0004.npz").unlink()
    state, used = tail_average(tmp_path, 4, fed.train, last)
    assert used == [3] and float(state["w"][0]) == 3.0
    off = fed.replace(**{"average-last": 0.0})
    assert tail_average(tmp_path, 4, off.train, last)[1] == []  # round 4 is gone: last weights


def test_the_detector_keeps_its_last_round_unless_told_to_average(tmp_path) -> None:
    """detector-average-last (default 0.1) is the detector's; average-last the survival model's."""
    import torch
    from flwr.app import ArrayRecord

    from survfed.app.config import FederationConfig
    from survfed.server.rounds import tail_average

    for rnd in (1, 2, 3, 4):
        save_checkpoint(tmp_path, rnd, {"w": np.full(3, float(rnd), dtype=np.float32)})
    last = ArrayRecord({"w": torch.zeros(3)})
    fed = FederationConfig.from_run_config({"detector-rounds": 4, "average-last": 0.5})
    state, used = tail_average(tmp_path, 4, fed.detector, last)
    assert used == [4] and float(state["w"][0]) == 4.0  # 10 % of 4 rounds: the last one
    assert tail_average(tmp_path, 4, fed.train, last)[1] == [3, 4]
    tail = fed.replace(**{"detector-average-last": 0.75})
    state, used = tail_average(tmp_path, 4, tail.detector, last)
    assert used == [2, 3, 4] and float(state["w"][0]) == 3.0
