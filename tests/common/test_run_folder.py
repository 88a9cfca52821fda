"""metrics.csv keeps every value under its own column, also when later rows add columns."""

from __future__ import annotations

from pathlib import Path

from survfed.common.run_folder import RunFolder


def test_rows_with_new_columns_widen_the_file(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    run.append_metrics({"round": 0, "loss": 1.5})  # round 0: not evaluated
    run.append_metrics({"round": 1, "loss": 1.2, "cpm": 0.4})  # the first evaluation
    run.append_metrics({"round": 2, "cpm": 0.6})  # a column missing: left empty
    assert run.read_metrics() == [
        {"round": "0", "loss": "1.5", "cpm": ""},
        {"round": "1", "loss": "1.2", "cpm": "0.4"},
        {"round": "2", "loss": "", "cpm": "0.6"},
    ]
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == "round,loss,cpm"
