"""The site's optimiser moments survive a resumed run (same run folder) and nothing else."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from survfed.client.optimizer_store import OptimizerStore


def test_state_of_an_earlier_round_of_the_same_run_folder_is_used(tmp_path: Path) -> None:
    store = OptimizerStore(tmp_path, "/srv/runs/r1")
    assert store.load(1) is None  # nothing yet
    arrays = {"0.exp_avg": np.arange(6.0).reshape(2, 3), "0.step": np.asarray(4.0)}
    store.save(3, arrays)
    again = OptimizerStore(tmp_path, "/srv/runs/r1")  # a new ClientApp process
    loaded = again.load(4)
    assert loaded is not None and set(loaded) == set(arrays)
    np.testing.assert_array_equal(loaded["0.exp_avg"], arrays["0.exp_avg"])
    # a resumed run's next round is later: used; the same or an earlier round: not
    assert again.load(9) is not None
    assert again.load(3) is None and again.load(1) is None


def test_other_runs_and_models_do_not_share_a_file(tmp_path: Path) -> None:
    OptimizerStore(tmp_path, "/srv/runs/r1").save(1, {"a": np.ones(2)})
    assert OptimizerStore(tmp_path, "/srv/runs/r2").load(5) is None
    assert OptimizerStore(tmp_path, "/srv/runs/r1", kind="detector").load(5) is None


def test_a_damaged_file_means_fresh_moments(tmp_path: Path) -> None:
    store = OptimizerStore(tmp_path, "run")
    store.save(1, {"a": np.ones(2)})
    store.path(1).write_bytes(b"not an npz")
    assert store.load(2) is None
    store.save(2, {"a": np.zeros(2)})  # and it is simply overwritten
    assert store.load(3) is not None


def test_a_round_trained_again_after_a_restart_uses_the_round_before(tmp_path: Path) -> None:
    """The site finished round 3 of a coordinator killed during round 3; the resumed run trains
    round 3 again from round 2's checkpoint and must get round 2's moments, not none."""
    store = OptimizerStore(tmp_path, "run")
    for r in (1, 2, 3):
        store.save(r, {"0.step": np.asarray(float(2 * r))})
    assert store.saved_rounds() == [2, 3]  # only the last two rounds are kept
    again = store.load(3)
    assert again is not None and float(again["0.step"]) == 4.0
    store.save(3, {"0.step": np.asarray(6.0)})  # the resumed round 3 overwrites the stale one
    assert float(store.load(4)["0.step"]) == 6.0
