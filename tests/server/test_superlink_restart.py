"""A site keeps running across a SuperLink restart and comes back with the same node id."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from survfed.client.app_pinning import AppPolicy
from survfed.client.supernode import SuperNode, SuperNodeConfig
from survfed.server.pki import create_pki
from survfed.server.superlink import (
    SuperLink,
    SuperLinkConfig,
    TlsFiles,
    list_sites,
    register_site,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow  # ~30-40 s: two SuperLink start-ups and a reconnect
def test_site_survives_superlink_restart(tmp_path: Path) -> None:
    pki = create_pki(tmp_path / "pki", "localhost", ["iowa"])
    port = _free_port()
    cfg = SuperLinkConfig(
        workdir=tmp_path / "link", port=port, tls=TlsFiles.from_dir(pki.ca_cert.parent)
    )
    (tmp_path / "data").mkdir()
    node = SuperNode(
        SuperNodeConfig(
            site="iowa",
            superlink=f"127.0.0.1:{port}",
            data_dir=tmp_path / "data",
            workdir=tmp_path / "site",
            ca_cert=pki.ca_cert,
            auth_key=pki.site_keys["iowa"].private_key,
            runtime_port=_free_port(),
            policy=AppPolicy({"survfed/survfed-toy": "0.1.0"}),
        )
    )
    try:
        with SuperLink(cfg) as link:
            registered = register_site(link.connection, pki.site_keys["iowa"].public_key)
            node.start()  # after registration: an unknown key is refused at once
            assert node.wait_connected(60) == registered
        time.sleep(4)  # SuperLink down: the site retries instead of exiting
        assert node.process.is_running()
        with SuperLink(cfg) as link:  # same state database
            deadline = time.monotonic() + 60
            sites = list_sites(link.connection)
            while time.monotonic() < deadline and sites[0].get("status") != "online":
                time.sleep(1)
                sites = list_sites(link.connection)
            assert [int(s["node-id"]) for s in sites] == [registered]
            assert sites[0]["status"] == "online"
            assert node.process.is_running()
    finally:
        node.stop()
