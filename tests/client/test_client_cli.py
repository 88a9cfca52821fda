"""``survfed-client``: refuses with a clear reason before anything connects anywhere.

The federation path itself (SuperNode with an unregistered key) is exercised against a real
SuperLink in ``tests/server/test_federation.py``.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from survfed.client.cli import main


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client's default cache is ./survfed-cache: keep it out of the checkout."""
    monkeypatch.chdir(tmp_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_check_only_reports_and_exits_zero(site_factory, tmp_path: Path, capsys) -> None:
    site = site_factory.make_site(tmp_path / "iowa")
    assert main(["--site", "iowa", "--data", str(site), "--check"]) == 0
    assert "usable" in capsys.readouterr().out.lower()
    assert (tmp_path / "survfed-cache" / "iowa").is_dir()  # the header cache, by default here


def test_refuses_a_site_with_no_usable_patient(site_factory, tmp_path: Path, capsys) -> None:
    site = site_factory.make_site(tmp_path / "iowa", ["P1"])
    for dcm in (site / "dicom").rglob("*"):
        if dcm.is_file():
            dcm.write_bytes(b"not dicom")
    code = main(["--site", "iowa", "--data", str(site), "--server", "h:1", "--insecure"])
    assert code == 1
    assert "refusing to start: no usable patient" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--server", "nohostport"], "must be HOST:PORT"),
        (["--server", "h:9093"], "--ca and --key are required"),
        (["--server", "h:9093", "--ca", "/no/ca.crt", "--key", "/no/key"], "does not exist"),
        (["--server", "h:9093", "--insecure", "--ca", "/x"], "cannot be combined"),
        (["--server", "h:9093", "--insecure", "--runtime-port", "0"], "--runtime-port 0"),
    ],
)
def test_bad_federation_arguments_are_refused(
    tmp_path: Path, capsys, extra: list[str], message: str
) -> None:
    code = main(["--site", "iowa", "--data", str(tmp_path), *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_bad_site_name_is_refused(tmp_path: Path, capsys) -> None:
    assert main(["--site", "Iowa City!", "--data", str(tmp_path)]) == 2
    assert "--site" in capsys.readouterr().err


def test_prepares_crops_then_refuses_when_the_supernode_cannot_start(
    site_factory, tmp_path: Path, capsys
) -> None:
    """Data ready, crops cached, manifest written; the key file exists but the address is
    not a SuperLink: the client exits 1 with the SuperNode's log named (no retry limit is
    hit here, so use a key the SuperNode cannot even parse)."""
    site = site_factory.make_site(tmp_path / "iowa", ["P1", "P2", "P3", "P4"])
    ca = tmp_path / "ca.crt"
    key = tmp_path / "iowa.key"
    ca.write_text("not a certificate")
    key.write_text("not a key")
    code = main(
        [
            "--site", "iowa", "--data", str(site), "--server", "127.0.0.1:9",
            "--ca", str(ca), "--key", str(key), "--cache", str(tmp_path / "cache"),
            "--workdir", str(tmp_path / "work"), "--runtime-port", str(_free_port()),
        ]
    )  # fmt: skip
    out = capsys.readouterr()
    assert code == 1, out
    assert "patients ready for training" in out.out
    assert list((tmp_path / "cache" / "iowa").glob("site-manifest-*.json"))
    assert "SuperNode exited" in out.err
