"""Certificates and keys for a survfed federation (TLS for the SuperLink, site keys).

Layout written by :func:`create_pki` under ``out_dir``::

    ca.crt            CA certificate (PEM)  -> every site gets a copy (``--ca``)
    ca.key            CA private key (PEM, 0600) -> stays offline at the coordinator
    server.crt        SuperLink TLS certificate signed by the CA, with SANs (PEM)
    server.key        SuperLink TLS private key (PEM, 0600)
    keys/<site>       site authentication private key (OpenSSH, ECDSA P-384, 0600)
    keys/<site>.pub   site authentication public key (OpenSSH) -> ``register-site``

The site key format is the one flwr 1.41 reads: ``flower-supernode
--auth-supernode-private-key`` loads an unencrypted OpenSSH EC private key
(``load_ssh_private_key``) and ``flwr supernode register`` loads an OpenSSH public key on
a NIST curve (``load_ssh_public_key``); P-384 is the curve Flower's documentation uses.

A site should preferably create its own key pair with :func:`create_site_key` and send
only the ``.pub`` file to the coordinator; :func:`create_pki` can also create them
centrally for a quick start.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SITE_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
"""Site names: lower-case letters, digits, ``-`` and ``_``; 1 to 63 characters."""

CA_VALID_DAYS = 3650
SERVER_VALID_DAYS = 825
_CURVE = ec.SECP384R1


@dataclass(frozen=True)
class SiteKeyPaths:
    """Paths of one site's authentication key pair."""

    private_key: Path
    public_key: Path


@dataclass(frozen=True)
class PkiPaths:
    """Paths of everything :func:`create_pki` wrote."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    site_keys: dict[str, SiteKeyPaths] = field(default_factory=dict)


def validate_site_name(site: str, *, argument: str = "site") -> str:
    """Return ``site`` if it is a valid site name, else raise ``ValueError`` naming it."""
    if not isinstance(site, str) or not SITE_NAME_PATTERN.match(site):
        raise ValueError(
            f"{argument}={site!r} is not a valid site name: use 1-63 lower-case letters, "
            "digits, '-' or '_', starting with a letter or digit"
        )
    return site


def _write_new(path: Path, data: bytes, *, private: bool, overwrite: bool) -> None:
    """Write ``data`` to ``path``; private files get mode 0600 from creation on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    mode = 0o600 if private else 0o644
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow it
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _san_entries(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """DNS names and IP addresses for the subjectAltName extension, de-duplicated."""
    entries: list[x509.GeneralName] = []
    seen: set[str] = set()
    for host in hosts:
        host = host.strip()
        if not host or host in seen:
            continue
        seen.add(host)
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return entries


def _make_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(_CURVE())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def _make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    server_name: str,
    hosts: Sequence[str],
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(_CURVE())
    now = _now()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_san_entries([server_name, *hosts])), False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False
        )
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def _pem_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _site_key_bytes(site: str) -> tuple[bytes, bytes]:
    """A fresh P-384 key pair as (OpenSSH private key, OpenSSH public key line)."""
    key = ec.generate_private_key(_CURVE())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public + f" survfed-site-{site}\n".encode()


def site_key_paths(keys_dir: str | Path, site: str) -> SiteKeyPaths:
    """Where the key pair of ``site`` lives inside ``keys_dir``."""
    validate_site_name(site)
    keys_dir = Path(keys_dir)
    return SiteKeyPaths(private_key=keys_dir / site, public_key=keys_dir / f"{site}.pub")


def create_site_key(keys_dir: str | Path, site: str, *, overwrite: bool = False) -> SiteKeyPaths:
    """Create the authentication key pair of ``site`` in ``keys_dir`` (run at the site).

    Writes ``keys_dir/<site>`` (OpenSSH private key, mode 0600) and
    ``keys_dir/<site>.pub`` (OpenSSH public key, to send to the coordinator).
    Raises ``FileExistsError`` if either file exists and ``overwrite`` is false.
    """
    paths = site_key_paths(keys_dir, site)
    if not overwrite:
        for path in (paths.private_key, paths.public_key):
            if path.exists():
                raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    private, public = _site_key_bytes(site)
    _write_new(paths.private_key, private, private=True, overwrite=overwrite)
    _write_new(paths.public_key, public, private=False, overwrite=overwrite)
    return paths


def create_pki(
    out_dir: str | Path,
    server_name: str,
    sites: Iterable[str] = (),
    *,
    extra_hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    overwrite: bool = False,
    ca_common_name: str = "survfed federation CA",
) -> PkiPaths:
    """Create a CA, the SuperLink's TLS certificate and one key pair per site.

    Parameters
    ----------
    out_dir
        Folder to write into (created if missing); layout in the module docstring.
    server_name
        Host name or IP address the sites use to reach the SuperLink (``--server
        HOST:PORT``); it becomes the certificate's common name and first SAN.
    sites
        Site names (see :data:`SITE_NAME_PATTERN`); one key pair each under ``keys/``.
    extra_hosts
        More SANs for the server certificate (DNS names or IP addresses), e.g. for
        connecting from the coordinator host itself.
    overwrite
        Replace existing files. Without it nothing is written if any target exists.

    Returns
    -------
    PkiPaths
        Paths of the files written.
    """
    if not isinstance(server_name, str) or not server_name.strip():
        raise ValueError(f"server_name={server_name!r} must be a non-empty host name or IP")
    if isinstance(extra_hosts, str):
        raise TypeError("extra_hosts must be a sequence of host names, not a single string")
    site_list = [validate_site_name(s, argument="sites") for s in sites]
    if len(set(site_list)) != len(site_list):
        raise ValueError(f"sites={site_list!r} contains duplicates")

    out = Path(out_dir)
    keys_dir = out / "keys"
    paths = PkiPaths(
        ca_cert=out / "ca.crt",
        ca_key=out / "ca.key",
        server_cert=out / "server.crt",
        server_key=out / "server.key",
        site_keys={s: site_key_paths(keys_dir, s) for s in site_list},
    )
    targets = [paths.ca_cert, paths.ca_key, paths.server_cert, paths.server_key]
    for sk in paths.site_keys.values():
        targets += [sk.private_key, sk.public_key]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"refusing to overwrite existing keys/certificates: {', '.join(existing)} "
            "(pass overwrite=True / --force to replace them)"
        )

    ca_key, ca_cert = _make_ca(ca_common_name)
    srv_key, srv_cert = _make_server_cert(ca_key, ca_cert, server_name.strip(), extra_hosts)
    pem = serialization.Encoding.PEM
    _write_new(paths.ca_key, _pem_private(ca_key), private=True, overwrite=overwrite)
    _write_new(paths.ca_cert, ca_cert.public_bytes(pem), private=False, overwrite=overwrite)
    _write_new(paths.server_key, _pem_private(srv_key), private=True, overwrite=overwrite)
    _write_new(paths.server_cert, srv_cert.public_bytes(pem), private=False, overwrite=overwrite)
    for site in site_list:
        create_site_key(keys_dir, site, overwrite=overwrite)
    return paths


def issue_server_cert(
    ca_cert: str | Path,
    ca_key: str | Path,
    out_dir: str | Path,
    server_name: str,
    *,
    extra_hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Issue a new SuperLink certificate from an existing CA (renewal, new host name).

    Writes ``out_dir/server.crt`` and ``out_dir/server.key`` (0600); returns their paths.
    """
    if not isinstance(server_name, str) or not server_name.strip():
        raise ValueError(f"server_name={server_name!r} must be a non-empty host name or IP")
    ca = x509.load_pem_x509_certificate(Path(ca_cert).read_bytes())
    key = serialization.load_pem_private_key(Path(ca_key).read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != ca.public_key():
        raise ValueError(f"ca_key={ca_key} is not the private key of ca_cert={ca_cert}")
    out = Path(out_dir)
    cert_path, key_path = out / "server.crt", out / "server.key"
    existing = [str(p) for p in (cert_path, key_path) if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"refusing to overwrite {', '.join(existing)}")
    srv_key, srv_cert = _make_server_cert(key, ca, server_name.strip(), extra_hosts)
    _write_new(key_path, _pem_private(srv_key), private=True, overwrite=overwrite)
    pem = serialization.Encoding.PEM
    _write_new(cert_path, srv_cert.public_bytes(pem), private=False, overwrite=overwrite)
    return cert_path, key_path


def fingerprint(path: str | Path) -> str:
    """SHA-256 fingerprint of a certificate or public key file, for printing and comparing.

    * PEM certificate -> ``SHA256:AB:CD:...`` over the DER encoding (what ``openssl x509
      -fingerprint -sha256`` prints).
    * OpenSSH public key -> ``SHA256:<base64>`` over the key blob (what ``ssh-keygen -lf``
      prints).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path={path} is not a file")
    data = path.read_bytes()
    if b"-----BEGIN CERTIFICATE-----" in data:
        cert = x509.load_pem_x509_certificate(data)
        digest = cert.fingerprint(hashes.SHA256())
        return "SHA256:" + ":".join(f"{b:02X}" for b in digest)
    parts = data.split()
    if len(parts) >= 2 and parts[0].startswith((b"ecdsa-sha2-", b"ssh-")):
        serialization.load_ssh_public_key(b" ".join(parts[:2]))  # validates the key
        digest = hashlib.sha256(base64.b64decode(parts[1])).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
    raise ValueError(f"path={path} is neither a PEM certificate nor an OpenSSH public key")
