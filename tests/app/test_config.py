"""FederationConfig: Flower's flat run config <-> typed settings, and the site's folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from survfed.app.config import FederationConfig, site_context


def test_round_trip_keeps_every_setting() -> None:
    cfg = FederationConfig.from_run_config(
        {
            "num-server-rounds": 7,
            "local-epochs": 3,
            "strategy": "fedprox",
            "proximal-mu": 0.05,
            "min-sites": 3,
            "run-dir": "/srv/run",
            "eval-cohorts": "/data/a, /data/b",
            "batch-size": 8,
            "lr": 0.002,
            "encoder": "small",
            "crop-size": 24,
            "max-grad-norm": 0.0,
            "hu-low": -1000.0,
            "ties": "breslow",
            "seed": 4,
            "detector-rounds": 2,
            "detector-preset": "cpu",
            "detector-spacing-mm": 2.0,
            "detector-mirror-tta": "true",
            "average-last": 0.5,
            "detector-average-last": 0.2,
        }
    )
    assert cfg.num_server_rounds == 7 and cfg.local_epochs == 3
    assert cfg.strategy == "fedprox" and cfg.proximal_mu == 0.05
    assert cfg.eval_cohorts == ("/data/a", "/data/b")
    assert cfg.train.batch_size == 8 and cfg.train.lr == 0.002 and cfg.train.seed == 4
    assert cfg.train.model.crop_size == 24
    assert cfg.train.model.hu_window == (-1000.0, 600.0)
    assert cfg.train.max_grad_norm is None  # 0 = off
    assert cfg.train.loss.ties == "breslow"
    det = cfg.detector.detector
    assert (det.width, det.spacing_mm, det.mirror_tta) == (8, 2.0, True)  # the CPU preset's width
    assert cfg.train.average_last == 0.5 and cfg.detector.average_last == 0.2
    again = FederationConfig.from_run_config(cfg.to_run_config())
    assert again == cfg


def test_defaults_match_the_pooled_train_config() -> None:
    from survfed.common.config import TrainConfig

    cfg = FederationConfig.from_run_config({})
    assert cfg.strategy == "fedavg" and cfg.min_patients_for_metrics == 10
    assert cfg.train.replace(epochs=30) == TrainConfig()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"num-server-round": 3}, "unknown run config keys"),
        ({"strategy": "fedsgd"}, "strategy must be one of"),
        ({"strategy": "fedprox"}, "needs proximal-mu > 0"),
        ({"run-dir": "relative/run"}, "absolute"),
        ({"min-sites": 0}, "'min-sites' must be an integer >= 1"),
        ({"fraction-train": 1.5}, "fraction-train"),
        ({"lr": "fast"}, "lr"),
        ({"detector-mirror-tta": "yes"}, "'detector-mirror-tta' must be true or false"),
        ({"detector-init": "runs/fed"}, "detector-init must be an absolute path"),
        ({"crop-source": "detector"}, "needs detector-rounds >= 1 or detector-init"),
        ({"detector-average-last": 1.5}, "'detector-average-last' must be in \\[0, 1\\]"),
    ],
)
def test_bad_values_are_refused_with_the_key_name(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FederationConfig.from_run_config(data)


def test_the_detector_has_its_own_tail_average() -> None:
    """``average-last`` is the survival model's; the detector's tail is its own, shorter one."""
    cfg = FederationConfig.from_run_config({"average-last": 0.5, "detector-rounds": 30})
    assert cfg.train.average_last == 0.5
    assert cfg.detector.average_last == 0.1
    assert cfg.detector.averaged_snapshots(30) == 3  # rounds 28-30
    last = cfg.replace(**{"detector-average-last": 0.0})
    assert last.detector.averaged_snapshots(30) == 1  # round 30 alone


def test_a_detector_to_start_from_makes_a_detector_stage_without_rounds() -> None:
    cfg = FederationConfig.from_run_config({"detector-init": "/srv/runs/pooled"})
    assert cfg.has_detector and cfg.detector_rounds == 0
    assert cfg.crop_source == "detector"  # the default once there is a detector
    assert FederationConfig.from_run_config(cfg.to_run_config()) == cfg
    plain = FederationConfig.from_run_config({})
    assert not plain.has_detector and plain.crop_source == "annotations"


def test_site_context_from_deployment_node_config(tmp_path: Path) -> None:
    fed = FederationConfig()
    ctx = site_context({"site": "iowa", "data-dir": str(tmp_path / "iowa")}, fed)
    assert ctx.site == "iowa" and ctx.data_dir == tmp_path / "iowa"
    assert ctx.cache_dir == tmp_path / ".survfed-cache" / "iowa"
    ctx = site_context(
        {"site": "iowa", "data-dir": str(tmp_path / "iowa"), "cache-dir": "/c/iowa"}, fed
    )
    assert ctx.cache_dir == Path("/c/iowa")


def test_simulation_maps_partition_ids_to_sorted_site_folders(tmp_path: Path) -> None:
    for name in ("zeta", "alpha", "_truth", "mid"):
        (tmp_path / name).mkdir()
    fed = FederationConfig(sim_cohort=str(tmp_path))
    names = [site_context({"partition-id": i}, fed).site for i in range(3)]
    assert names == ["alpha", "mid", "zeta"]
    with pytest.raises(ValueError, match="partition-id 3 has no site folder"):
        site_context({"partition-id": 3}, fed)
    with pytest.raises(ValueError, match="no 'site' and 'data-dir'"):
        site_context({"partition-id": 0}, FederationConfig())
