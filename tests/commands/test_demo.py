"""``survfed demo`` pieces that need no processes (the federation itself is tested in
``tests/server/test_federation.py``; the full demo is measured, not unit-tested)."""

from __future__ import annotations

import pytest

from survfed.commands.demo import format_table, parse_train_sites


def test_site_count_or_explicit_sites() -> None:
    assert parse_train_sites("3") == {"iowa": 40, "maastro": 50, "stanford": 30}
    assert parse_train_sites("a:6,b:7") == {"a": 6, "b": 7}
    with pytest.raises(ValueError, match=r"--sites must be 1\.\.4"):
        parse_train_sites("9")
    with pytest.raises(ValueError, match="held-out"):
        parse_train_sites("heldout:5,a:6")


def test_table_shows_all_three_models_and_the_gap() -> None:
    def ev(c: float, auc: float | None) -> dict:
        return {"c_index": c, "c_index_ci": [c - 0.1, c + 0.1], "auc": auc, "auc_ci": None}

    result = {
        "federated": ev(0.70, 0.9),
        "pooled": ev(0.72, 0.91),
        "oracle": {"c_index": 0.78, "c_index_ci": [0.7, 0.85]},
        "gap_closed": 0.2 / 0.22,
        "rounds": 6,
        "local_epochs": 2,
        "sites": {"a": 40, "b": 50},
        "n_train_patients": 90,
        "n_heldout": 55,
        "bytes_per_round": {"sent_per_site": 776906, "received_per_site": 776803,
                            "model_bytes": 775428},
        "seconds": {"cohort": 60, "federated": 300, "pooled": 90, "total": 460},
    }  # fmt: skip
    text = format_table(result)
    assert "federated  0.700 [0.600, 0.800]  0.900" in text
    assert "oracle     0.780 [0.700, 0.850]" in text
    assert "closed by federated vs pooled: 91%" in text
    assert "(model 775428; 1.002x)" in text
    assert "nodule detector" not in text  # no detector stage, no detector lines

    def det(cpm: float, top5: int) -> dict:
        bins = [{"low": 6, "high": 8, "n": 10, "top_k": top5, "any": top5},
                {"low": 30, "high": None, "n": 2, "top_k": 2, "any": 2}]  # fmt: skip
        return {"cpm": cpm, "recall_top_k": (top5 + 2) / 12, "n_nodules": 12, "n_scans": 9,
                "by_size_mm": bins}  # fmt: skip

    result["detector"] = {"federated": det(0.3, 4), "pooled": det(0.4, 6), "cpm_ratio": 0.75,
                          "rounds": 10, "local_epochs": 3}  # fmt: skip
    text = format_table(result)
    assert "federated  CPM 0.300  top-5 recall 0.500  (12 nodules in 9 scans)" in text
    assert "pooled     top-5 hits by size (mm): 6-8 6/10, >=30 2/2" in text
    assert "federated CPM / pooled CPM: 75%; 10 rounds x 3 local epochs" in text
