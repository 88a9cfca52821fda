"""Real Flower processes on loopback: SuperLink + SuperNodes over TLS with site auth.

One federation is started per module (it is the slow part): a guarded SuperLink with
TLS, SuperNode authentication and a state database; two registered sites (iowa,
stanford); one unregistered site (rogue); one site holding a different CA (noca). The toy
app (``survfed.app.toy``, FAB = ``tests/server/flower_toy_app/pyproject.toml`` only) runs
2 rounds of FedAvg; a second app that ships its own code is refused by the sites.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from survfed.app.toy import EVAL_METRICS, TRAIN_METRICS, local_train
from survfed.client.app_pinning import AppPolicy
from survfed.client.supernode import SuperNode, SuperNodeConfig
from survfed.server.flwr_home import run_logs, submit_run, wait_for_run
from survfed.server.pki import create_pki
from survfed.server.superlink import (
    SuperLink,
    SuperLinkConfig,
    TlsFiles,
    list_sites,
    register_site,
)

TOY_APP = Path(__file__).parent / "flower_toy_app"
TOY_POLICY = AppPolicy(apps={"survfed/survfed-toy": "0.1.0"})
SITES = ("iowa", "stanford")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _site(
    tmp: Path,
    pki: Any,
    site: str,
    link_port: int,
    *,
    ca: Path | None = None,
    max_retries: int | None = None,
) -> SuperNode:
    data = tmp / "data" / site
    data.mkdir(parents=True, exist_ok=True)
    keys = pki.site_keys[site]
    return SuperNode(
        SuperNodeConfig(
            site=site,
            superlink=f"127.0.0.1:{link_port}",
            data_dir=data,
            workdir=tmp / "sites" / site,
            ca_cert=ca or pki.ca_cert,
            auth_key=keys.private_key,
            runtime_port=_free_port(),
            max_retries=max_retries,
            policy=TOY_POLICY,
        )
    )


def _evil_app(tmp: Path) -> Path:
    """An app that ships its own ClientApp module, which would drop a marker on import."""
    app = tmp / "evil-app"
    app.mkdir()
    marker = tmp / "evil-code-ran"
    (app / "evil_client.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('pwned')\n"
        "from survfed.app import toy\nclient_app = toy.client_app\n"
    )
    (app / "pyproject.toml").write_text(
        (TOY_APP / "pyproject.toml")
        .read_text()
        .replace('clientapp = "survfed.app.toy:client_app"', 'clientapp = "evil_client:client_app"')
    )
    return app


def _run_federation(tmp: Path) -> Iterator[dict[str, Any]]:
    """Start everything, run both apps, yield what the checks need; stop all on exit."""
    pki = create_pki(tmp / "pki", "localhost", [*SITES, "rogue", "noca"])
    other_ca = create_pki(tmp / "other-pki", "localhost", []).ca_cert
    port = _free_port()
    out: dict[str, Any] = {"tmp": tmp, "pki": pki, "port": port}
    with ExitStack() as stack:
        link = SuperLink(
            SuperLinkConfig(workdir=tmp / "link", port=port, tls=TlsFiles.from_dir(tmp / "pki"))
        )
        stack.enter_context(link)
        out["link"] = link
        out["node_ids"] = {
            s: register_site(link.connection, pki.site_keys[s].public_key, site=s) for s in SITES
        }
        nodes = {s: stack.enter_context(_site(tmp, pki, s, port)) for s in SITES}
        rogue = stack.enter_context(_site(tmp, pki, "rogue", port))
        noca = stack.enter_context(_site(tmp, pki, "noca", port, ca=other_ca, max_retries=1))
        out.update(nodes=nodes, rogue=rogue, noca=noca)
        for s in SITES:
            nodes[s].wait_connected(60)

        t0 = time.monotonic()
        run_dir = tmp / "run-toy"
        run_id = submit_run(
            link.connection,
            TOY_APP,
            {"out-dir": str(run_dir), "num-server-rounds": 2, "min-nodes": 2},
        )
        out["status"] = wait_for_run(link.connection, run_id, timeout_s=240, poll_s=1)
        out["wall_s"] = time.monotonic() - t0
        out["run_dir"] = run_dir
        out["run_id"] = run_id

        evil_dir = tmp / "run-evil"
        evil_id = submit_run(
            link.connection,
            _evil_app(tmp),
            {
                "out-dir": str(evil_dir),
                "num-server-rounds": 1,
                "min-nodes": 2,
                "fraction-evaluate": 0.0,
            },
        )
        out["evil_status"] = wait_for_run(link.connection, evil_id, timeout_s=120, poll_s=1)
        out["evil_dir"] = evil_dir
        out["evil_logs"] = run_logs(link.connection, evil_id)
        out["sites_listed"] = list_sites(link.connection)
        yield out


@pytest.mark.slow  # ~60-70 s on 2 shared cores: real processes, 3 s SuperNode poll interval
def test_federation_on_loopback(tmp_path: Path) -> None:
    """One federation for all checks (under pytest-xdist a module fixture could start it
    once per worker); every process is stopped by the ExitStack even when a check fails."""
    runner = _run_federation(tmp_path)
    federation = next(runner)
    try:
        check_two_rounds_of_fedavg_give_the_patient_weighted_mean(federation)
        check_replies_hold_only_arrays_and_whitelisted_metrics(federation)
        check_unregistered_site_is_rejected(federation)
        check_site_without_the_ca_cannot_connect(federation)
        check_sites_refuse_an_app_that_ships_code(federation)
        check_control_api_answers_only_the_coordinator_host(federation)
    finally:
        runner.close()


def check_two_rounds_of_fedavg_give_the_patient_weighted_mean(federation) -> None:
    assert federation["status"]["status"] == "finished:completed", federation["status"]
    assert federation["status"]["fab-id"] == "survfed/survfed-toy"
    got = np.load(federation["run_dir"] / "final.npz")["w"]
    w = np.zeros(3)
    for _ in range(2):
        updates = [local_train(w, s) for s in SITES]
        w = np.average([u[0] for u in updates], axis=0, weights=[u[2] for u in updates])
    np.testing.assert_allclose(got, w, rtol=1e-12)
    # an unweighted mean differs, so the weighting really is by number of examples
    updates = [local_train(np.zeros(3), s) for s in SITES]
    assert updates[0][2] != updates[1][2]
    print(f"2-round loopback run: {federation['wall_s']:.1f} s wall")


def check_replies_hold_only_arrays_and_whitelisted_metrics(federation) -> None:
    audit = json.loads((federation["run_dir"] / "replies.json").read_text())
    node_ids = set(federation["node_ids"].values())
    assert len(audit) == 2 * 2 * 2  # rounds x stages x sites
    assert {e["node_id"] for e in audit} == node_ids
    for entry in audit:
        assert "error" not in entry, entry
        content = entry["content"]
        allowed = TRAIN_METRICS if entry["stage"] == "train" else EVAL_METRICS
        kinds = {name: rec["kind"] for name, rec in content.items()}
        assert set(kinds.values()) <= {"ArrayRecord", "MetricRecord"}, kinds
        for rec in content.values():
            if rec["kind"] == "MetricRecord":
                assert set(rec["items"]) <= set(allowed)
                assert set(rec["items"].values()) <= {"int", "float"}
            else:
                assert rec["items"] == {"0": "float64[3]"}
        if entry["stage"] == "train":
            assert kinds == {"arrays": "ArrayRecord", "metrics": "MetricRecord"}


def check_unregistered_site_is_rejected(federation) -> None:
    rogue: SuperNode = federation["rogue"]
    assert not rogue.process.is_running()
    assert rogue.process.returncode() != 0
    assert "Failed to activate SuperNode" in rogue.process.log_text()
    link_log = federation["link"].process.log_text()
    assert "No SuperNode found with the given public key" in link_log
    listed = {int(n["node-id"]) for n in federation["sites_listed"]}
    assert listed == set(federation["node_ids"].values())


def check_site_without_the_ca_cannot_connect(federation) -> None:
    noca: SuperNode = federation["noca"]
    deadline = time.monotonic() + 30
    while noca.process.is_running() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not noca.process.is_running()
    log = noca.process.log_text()
    assert "CERTIFICATE_VERIFY_FAILED" in log or "SSL/TLS handshake error" in log, log[-2000:]
    assert "SuperNode ID" not in log


def check_sites_refuse_an_app_that_ships_code(federation) -> None:
    tmp: Path = federation["tmp"]
    assert not (tmp / "evil-code-ran").exists()
    replies = federation["evil_dir"] / "replies.json"
    assert replies.exists(), federation["evil_logs"][-3000:]
    audit = json.loads(replies.read_text())
    assert len(audit) == 2
    assert all("error" in e and "could not be verified" in e["error"] for e in audit), audit
    for site in SITES:
        log = federation["nodes"][site].process.log_text()
        assert "survfed: refusing run" in log and "evil_client.py" in log
    assert federation["evil_status"]["status"].startswith("finished")


def check_control_api_answers_only_the_coordinator_host(federation) -> None:
    port = federation["port"]
    ca = str(federation["pki"].ca_cert)
    body = b""
    headers = {"content-type": "application/protobuf"}

    def post(path: str, source: str) -> int:
        transport = httpx.HTTPTransport(local_address=source, verify=ca)
        with httpx.Client(transport=transport, timeout=10) as client:
            url = f"https://localhost:{port}{path}"
            return client.post(url, content=body, headers=headers).status_code

    assert post("/v1/control/list-runs", "127.0.0.2") == 403
    assert post("/v1/runtime/acquire-task", "127.0.0.2") == 403
    assert post("/v1/control/list-runs", "127.0.0.1") != 403
    assert post("/v1/fleet/pull-messages", "127.0.0.2") != 403
