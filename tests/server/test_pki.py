"""Tests for survfed.server.pki: chain, SANs, key formats, permissions, fingerprints."""

from __future__ import annotations

import ipaddress
import shutil
import ssl
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_ssh_private_key,
)
from cryptography.x509.verification import PolicyBuilder, Store

from survfed.server.pki import (
    create_pki,
    create_site_key,
    fingerprint,
    issue_server_cert,
    validate_site_name,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("pki")
    return create_pki(out, "coordinator.example.org", ["iowa", "stanford"])


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_chain_verifies_for_every_san(pki) -> None:
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    leaf = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    store = Store([ca])
    for name in ("coordinator.example.org", "localhost"):
        verifier = PolicyBuilder().store(store).build_server_verifier(x509.DNSName(name))
        chain = verifier.verify(leaf, [])
        assert chain[-1] == ca
    ip_verifier = (
        PolicyBuilder()
        .store(store)
        .build_server_verifier(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    )
    ip_verifier.verify(leaf, [])
    wrong = PolicyBuilder().store(store).build_server_verifier(x509.DNSName("evil.example"))
    with pytest.raises(Exception, match=r"(?i)name|san|match"):
        wrong.verify(leaf, [])


def test_server_certificate_fields(pki) -> None:
    leaf = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["coordinator.example.org", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    assert leaf.public_key().curve.name == "secp384r1"
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_python_ssl_accepts_the_pair(pki) -> None:
    """The same stdlib ssl that uvicorn (SuperLink) and httpx (SuperNode) use."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pki.server_cert, pki.server_key)
    client_ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    assert client_ctx.verify_mode == ssl.CERT_REQUIRED
    assert len(client_ctx.get_ca_certs()) == 1


def test_private_keys_are_0600_and_loadable(pki) -> None:
    for path in (pki.ca_key, pki.server_key):
        assert _mode(path) == 0o600
        assert isinstance(load_pem_private_key(path.read_bytes(), None), ec.EllipticCurvePrivateKey)
    assert _mode(pki.ca_cert) == 0o644
    for site, paths in pki.site_keys.items():
        assert _mode(paths.private_key) == 0o600
        key = load_ssh_private_key(paths.private_key.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert key.curve.name == "secp384r1"
        assert paths.public_key.read_text().startswith("ecdsa-sha2-nistp384 ")
        assert paths.public_key.read_text().rstrip().endswith(f"survfed-site-{site}")


def test_site_keys_are_what_flwr_cli_accepts(pki) -> None:
    """flwr's own loaders for `flwr supernode register` and the SuperNode's key."""
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    paths = pki.site_keys["iowa"]
    registered = try_load_public_key(paths.public_key)
    private = load_ssh_private_key(paths.private_key.read_bytes(), None)
    assert registered == public_key_to_bytes(private.public_key())
    other = try_load_public_key(pki.site_keys["stanford"].public_key)
    assert other != registered


def test_refuses_to_overwrite(pki, tmp_path: Path) -> None:
    out = pki.ca_cert.parent
    before = pki.ca_key.read_bytes()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        create_pki(out, "coordinator.example.org", ["iowa"])
    assert pki.ca_key.read_bytes() == before
    with pytest.raises(FileExistsError):
        create_site_key(out / "keys", "iowa")
    first_ca_key = create_pki(tmp_path, "10.0.0.5", []).ca_key.read_bytes()
    again = create_pki(tmp_path, "10.0.0.5", ["maastro"], overwrite=True)
    assert again.ca_key.read_bytes() != first_ca_key
    assert _mode(again.ca_key) == 0o600


def test_input_checks(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sites="):
        create_pki(tmp_path, "host", ["Iowa City"])
    with pytest.raises(ValueError, match="duplicates"):
        create_pki(tmp_path, "host", ["iowa", "iowa"])
    with pytest.raises(ValueError, match="server_name"):
        create_pki(tmp_path, " ", ["iowa"])
    assert validate_site_name("iowa_2") == "iowa_2"
    assert not (tmp_path / "ca.key").exists()


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")
def test_public_key_fingerprint_matches_ssh_keygen(pki) -> None:
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(pki.site_keys["iowa"].public_key)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert fingerprint(pki.site_keys["iowa"].public_key) == out[1]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_certificate_fingerprint_matches_openssl(pki) -> None:
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(pki.server_cert)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert fingerprint(pki.server_cert) == "SHA256:" + out.split("=", 1)[1]
    with pytest.raises(ValueError, match="neither"):
        fingerprint(pki.ca_key)


def test_issue_server_cert_renews_from_the_same_ca(pki, tmp_path: Path) -> None:
    cert_path, key_path = issue_server_cert(
        pki.ca_cert, pki.ca_key, tmp_path, "new-host.example.org", extra_hosts=("10.0.0.5",)
    )
    assert _mode(key_path) == 0o600
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    leaf = x509.load_pem_x509_certificate(cert_path.read_bytes())
    verifier = (
        PolicyBuilder()
        .store(Store([ca]))
        .build_server_verifier(x509.DNSName("new-host.example.org"))
    )
    assert verifier.verify(leaf, [])[-1] == ca
    with pytest.raises(FileExistsError):
        issue_server_cert(pki.ca_cert, pki.ca_key, tmp_path, "new-host.example.org")
    with pytest.raises(ValueError, match="not the private key"):
        issue_server_cert(pki.ca_cert, pki.server_key, tmp_path / "x", "h")
