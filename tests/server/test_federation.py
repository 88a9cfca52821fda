"""The real federation on loopback: SuperLink + SuperNodes over TLS with site authentication,
the survfed ServerApp/ClientApp, a site that crashes mid-run, a coordinator killed after a round
and resumed, an unregistered site, and an audit of every reply the sites sent.

One scenario (real processes are the slow part): sites iowa and maastro train, stanford is the
held-out cohort; one detector round (the N-Net, CPU preset), the proposal step, then 3 survival
rounds on the detector's proposal crops, min-sites 1. After survival round 1 maastro's SuperNode
is SIGKILLed; after round 2 the whole SuperLink process group (with the ServerApp) is SIGKILLed;
the run is resumed on a new SuperLink over the same state database, reloads the finished
detector stage and finishes round 3.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from survfed.client.local_training import TRAIN_METRICS
from survfed.client.optimizer_store import OptimizerStore
from survfed.client.supernode import SuperNode, SuperNodeConfig
from survfed.common.survival.model import load_model
from survfed.server.checkpoint import load_checkpoint
from survfed.server.federation import (
    REGISTRY_FILE,
    ServerSettings,
    admit_sites,
    submit_federated_run,
)
from survfed.server.flwr_home import wait_for_run
from survfed.server.pki import create_pki
from survfed.server.superlink import SuperLink

SITES = ("iowa", "maastro")
ROUNDS = 3
SMALL_MODEL = {"crop-size": 16, "k": 2, "feature-dim": 16, "hidden": 8, "batch-size": 3}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kill_group(process: Any) -> None:
    """SIGKILL a ManagedProcess's whole process group: a crash, not a clean stop."""
    pid = process.proc.pid
    os.killpg(os.getpgid(pid), signal.SIGKILL)
    process.proc.wait(timeout=30)


def _wait_for_round(run_dir: Path, rnd: int, timeout_s: float, link: SuperLink) -> None:
    """Wait for the run's checkpoint of round ``rnd``. The generous timeouts only matter on
    loaded machines (round 1 includes the sites' preprocessing); a quiet run returns early."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ck = load_checkpoint(run_dir)
        if ck is not None and ck.round >= rnd:
            return
        assert link.process.is_running(), link.process.log_text(3000)
        time.sleep(1.0)
    raise TimeoutError(f"no checkpoint of round {rnd} after {timeout_s} s")


@pytest.mark.slow  # ~2.5-4 min on 2 shared cores: 2 SuperLink starts, 3 rounds, a lost site
def test_federation_survives_a_site_crash_and_a_server_restart(
    tiny_cohort: Path, tmp_path: Path
) -> None:
    pki = create_pki(tmp_path / "pki", "localhost", [*SITES, "rogue"])
    port = _free_port()
    settings = ServerSettings(
        workdir=tmp_path / "server",
        pki_dir=tmp_path / "pki",
        run_dir=tmp_path / "run",
        port=port,
        sites={s: pki.site_keys[s].public_key for s in SITES},
        federation={
            "num-server-rounds": ROUNDS,
            "min-sites": 1,
            "round-timeout-s": 180.0,  # stale work of the killed run can delay a site
            "min-patients-for-metrics": 3,
            "eval-cohorts": str(tiny_cohort / "stanford"),
            "bootstrap-per-round": 5,
            "bootstrap-final": 20,
            "detector-rounds": 1,
            "detector-preset": "cpu",
            "detector-patch-size": 48,
            "detector-samples-per-epoch": 4,
            "device": "cpu",
            **SMALL_MODEL,
        },
    )
    nodes = {
        s: SuperNode(
            SuperNodeConfig(
                site=s,
                superlink=f"127.0.0.1:{port}",
                data_dir=tiny_cohort / s,
                workdir=tmp_path / "sites" / s,
                ca_cert=pki.ca_cert,
                auth_key=pki.site_keys[s].private_key,
                runtime_port=_free_port(),
                extra_node_config={"cache-dir": str(tmp_path / "cache" / s)},
            )
        )
        for s in SITES
    }
    link = SuperLink(settings.superlink_config())
    link2 = SuperLink(settings.superlink_config())
    try:
        link.start()
        node_ids = admit_sites(link.connection, settings.sites, settings.workdir / REGISTRY_FILE)
        for node in nodes.values():
            node.start()
        for node in nodes.values():
            node.wait_connected(60)
        submit_federated_run(link, settings, node_ids)

        _wait_for_round(settings.run_dir, 1, 600, link)
        _kill_group(nodes["maastro"].process)  # a site crashes mid-run
        _wait_for_round(settings.run_dir, 2, 600, link)
        _kill_group(link.process)  # the coordinator dies (ServerApp with it)
        assert not (settings.run_dir / "summary.json").exists()
        assert load_checkpoint(settings.run_dir).round == 2  # type: ignore[union-attr]

        link2.start()  # same port and state database: iowa reconnects on its own
        node_ids = admit_sites(link2.connection, settings.sites, settings.workdir / REGISTRY_FILE)
        run_id, _ = submit_federated_run(link2, settings, node_ids, resume=True)
        status = wait_for_run(link2.connection, run_id, timeout_s=600, poll_s=2)
        rogue = _unregistered_site_is_refused(tiny_cohort, tmp_path, pki, port)
    finally:
        for node in nodes.values():
            node.stop()
        link.stop()
        link2.stop()

    assert status["status"] == "finished:completed", status
    assert rogue.returncode == 1 and "SuperNode exited" in rogue.stderr, rogue.stderr
    _check_run_folder(settings.run_dir, node_ids)
    # the detector stage ran once: its round is not repeated by the resumed run
    with (settings.run_dir / "detector" / "metrics.csv").open() as fh:
        assert [int(r["round"]) for r in csv.DictReader(fh)] == [0, 1]
    summary = json.loads((settings.run_dir / "summary.json").read_text())
    assert summary["crop_source"] == "detector-" + summary["detector"]["detector_id"]
    assert (settings.run_dir / "detector" / "eval-stanford" / "report.md").is_file()
    # the site's own log says what it answered, round by round (what left it: sizes, metrics)
    site_log = nodes["iowa"].cfg.log_file.read_text()
    for what in ("detector round 1/1", "proposal crops", "survival round 1/3", "Breslow sums"):
        assert f"survfed site iowa: {what}" in site_log, what
    assert "survival round 3/3 answered" in site_log and "arrays 0.73 MB" in site_log
    # iowa trained in rounds 1, 2 and (after the coordinator's restart) 3; its AdamW moments
    # went on across the restart: round 3 started from round 2's step count, not from zero
    store = OptimizerStore(tmp_path / "cache" / "iowa", str(settings.run_dir))
    state = store.load(4)
    assert state is not None
    steps = {float(v) for k, v in state.items() if k.endswith(".step")}
    batches = _batches_per_epoch(tmp_path / "cache" / "iowa", tiny_cohort / "iowa", summary)
    assert len(steps) == 1 and steps.pop() == 3 * batches


def _batches_per_epoch(cache: Path, site_dir: Path, summary: dict[str, Any]) -> int:
    """Batches of one local epoch at iowa (its proposal-crop patients, batch size 3)."""
    from survfed.client.site_snapshot import read_manifest
    from survfed.common.survival.batching import SiteStratifiedBatchSampler
    from survfed.common.survival.model import ModelConfig

    model = ModelConfig.from_dict({"encoder": "small", "crop_size": 16, "k": 2})
    ds = read_manifest(cache, model, "iowa", site_dir, summary["crop_source"])
    assert ds is not None
    sampler = SiteStratifiedBatchSampler(ds.sites, ds.events, 3, cox_only=False)
    return len(list(sampler))


def _unregistered_site_is_refused(
    cohort: Path, tmp_path: Path, pki: Any, port: int
) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable, "-m", "survfed.client.cli",
        "--site", "rogue", "--data", str(cohort / "stanford"),
        "--server", f"127.0.0.1:{port}", "--ca", str(pki.ca_cert),
        "--key", str(pki.site_keys["rogue"].private_key),
        "--cache", str(tmp_path / "rogue-cache"), "--workdir", str(tmp_path / "rogue"),
        "--runtime-port", str(_free_port()),
        # the refusal is what is tested: lung-preprocessing the scans first only costs time
        # (minutes on loaded cores, where it once ran past the timeout)
        "--no-preprocess",
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)


def _check_run_folder(run_dir: Path, node_ids: dict[str, int]) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    history = summary["history"]
    assert [r["round"] for r in history] == [0, 1, 2, 3]
    assert summary["resumed_from_round"] == 2
    assert history[1]["sites"] == 2 and history[1]["n_patients"] == 12
    assert history[2]["sites"] == 1 and history[2]["n_patients"] == 6  # maastro crashed
    assert history[3]["sites"] == 1
    for row in history[1:]:
        assert 0.0 <= row["c_index"] <= 1.0
        assert row["bytes_up_per_site"] < 1.05 * row["model_bytes"]
    with (run_dir / "metrics.csv").open() as fh:
        assert [int(r["round"]) for r in csv.DictReader(fh)] == [0, 1, 2, 3]

    model, config = load_model(run_dir / "model.pt")
    assert config.crop_size == 16 and config.k == 2
    assert (run_dir / "baseline.json").is_file()
    assert summary["baseline_sites"] == 1
    assert (run_dir / "eval-stanford" / "report.md").is_file()
    assert (run_dir / "report" / "heldout_metrics_per_round.png").is_file()
    final = summary["evaluations"]["stanford"]
    assert final["n"] == 6 and "oracle_c_index" in final
    with (run_dir / "eval-stanford" / "predictions.csv").open() as fh:  # the held-out patients
        assert len(list(csv.DictReader(fh))) == 6

    # every reply the sites sent: only arrays (the model's own tensors) + whitelisted scalars
    names = set(model.state_dict())
    audit = [json.loads(line) for line in (run_dir / "replies.jsonl").read_text().splitlines()]
    assert {e["round"] for e in audit} == {1, 2, 3}
    assert {e["site"] for e in audit if "content" in e} == set(SITES)
    # maastro's missing round-2 reply is either the SuperLink's "Node Unavailable" error
    # (heartbeat expired) or nothing (round timeout first); either way it is attributed to
    # a registered site, never to a made-up node
    assert {e["node_id"] for e in audit} <= set(node_ids.values())
    assert all(e["round"] == 2 and e["site"] == "maastro" for e in audit if "error" in e)
    for entry in audit:
        if "error" in entry:
            continue
        content = entry["content"]
        assert {k: v["kind"] for k, v in content.items()} == {
            "arrays": "ArrayRecord",
            "metrics": "MetricRecord",
        }
        assert set(content["arrays"]["items"]) == names
        assert all(t.startswith("float32[") for t in content["arrays"]["items"].values())
        items = content["metrics"]["items"]
        assert set(items) <= set(TRAIN_METRICS) and "num-examples" in items
        assert set(items.values()) <= {"int", "float"}
