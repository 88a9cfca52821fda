"""Start and stop a Flower SuperLink (flwr 1.41) the way a survfed coordinator runs it.

Defaults are the safe ones: TLS on, SuperNode authentication on (only registered site keys
can connect), a SQLite state database (registered sites and runs survive a restart),
``--disable-runtime-dependency-installation`` (a FAB cannot make the coordinator
``pip``/``uv`` install anything), and the Control/Runtime APIs answering only the
coordinator host (see :mod:`survfed.server.control_guard`; in flwr 1.41 they share the
Fleet API's single HTTP listener).

Example::

    cfg = SuperLinkConfig(workdir=Path("/srv/survfed/link"), host="0.0.0.0", port=9093,
                          tls=TlsFiles.from_dir(Path("/srv/survfed/pki")))
    with SuperLink(cfg) as link:
        register_site(link.connection, "/srv/survfed/pki/keys/iowa.pub", site="iowa")
        ...
"""

from __future__ import annotations

import ipaddress
import ssl
import sys
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from survfed.common.managed_process import ManagedProcess, child_env
from survfed.server.control_guard import DEFAULT_ALLOW, ENV_ALLOW, parse_allow_list
from survfed.server.flwr_home import FlwrConnection, flwr_cli

INSECURE_WARNING = (
    "survfed: --insecure: the SuperLink runs WITHOUT TLS and WITHOUT site authentication. "
    "Model weights travel in clear text and any machine that reaches the port can join. "
    "Use this for local experiments on one machine only."
)


class SuperLinkError(RuntimeError):
    """The SuperLink did not start, or died; the message carries its log tail."""


@dataclass(frozen=True)
class TlsFiles:
    """The SuperLink's TLS material (PEM files)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def from_dir(cls, pki_dir: str | Path) -> TlsFiles:
        """The files :func:`survfed.server.pki.create_pki` wrote into ``pki_dir``."""
        d = Path(pki_dir)
        return cls(d / "ca.crt", d / "server.crt", d / "server.key")

    def check(self) -> None:
        """Raise ``FileNotFoundError`` naming the first missing file."""
        for name in ("ca_cert", "server_cert", "server_key"):
            path = getattr(self, name)
            if not Path(path).is_file():
                raise FileNotFoundError(f"tls.{name}={path} does not exist")


@dataclass(frozen=True)
class SuperLinkConfig:
    """How to run the SuperLink.

    Attributes
    ----------
    workdir
        Folder for the state database and the log file.
    host, port
        The single HTTP listener (Fleet + Control + Runtime APIs in flwr 1.41). Sites
        connect to ``<public name>:port``; use ``host="0.0.0.0"`` to accept them from
        the network. The Control/Runtime APIs still answer only ``control_allow``.
    tls
        TLS files; required unless ``insecure``.
    insecure
        No TLS and no site authentication (prints :data:`INSECURE_WARNING`).
    supernode_auth
        Only SuperNodes whose public key was registered may connect (needs TLS).
    database
        SQLite file for the SuperLink state; default ``workdir/superlink-state.db``.
        ``":flwr-in-memory:"`` keeps nothing across restarts.
    control_allow
        Peer IP addresses that may use the Control and Runtime APIs.
    simulation
        Flower's simulation engine: the SuperLink runs the ClientApps itself (virtual sites,
        no SuperNodes). Loopback only and without TLS: nothing leaves the machine.
    """

    workdir: Path
    host: str = "127.0.0.1"
    port: int = 9093
    tls: TlsFiles | None = None
    insecure: bool = False
    supernode_auth: bool = True
    database: Path | str | None = None
    control_allow: tuple[str, ...] = DEFAULT_ALLOW
    simulation: bool = False
    extra_args: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not 1 <= int(self.port) <= 65535:
            raise ValueError(f"port={self.port} must be in 1..65535")
        if self.insecure and self.tls is not None:
            raise ValueError("pass either tls=... or insecure=True, not both")
        if not self.insecure and self.tls is None:
            raise ValueError("tls=TlsFiles(...) is required unless insecure=True")
        if self.simulation and not (self.insecure and _is_loopback(self.host)):
            raise ValueError("simulation=True needs insecure=True and a loopback host")
        parse_allow_list(self.control_allow)

    @property
    def database_path(self) -> str:
        """The ``--database`` argument."""
        if self.database:
            return str(self.database)
        return str(Path(self.workdir) / "superlink-state.db")

    @property
    def log_file(self) -> Path:
        """Where the SuperLink's stdout/stderr go."""
        return Path(self.workdir) / "superlink.log"

    @property
    def local_address(self) -> str:
        """Address for clients on the coordinator host (Control API, health probe)."""
        host = self.host
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return f"{host}:{self.port}"
        if ip.is_unspecified:
            host = "127.0.0.1" if ip.version == 4 else "::1"
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def superlink_args(cfg: SuperLinkConfig) -> list[str]:
    """The ``flower-superlink`` arguments for ``cfg`` (flwr 1.41 flags)."""
    args = ["--host", cfg.host, "--port", str(cfg.port), "--database", cfg.database_path]
    args += ["--disable-runtime-dependency-installation"]
    if cfg.simulation:
        args += ["--simulation"]
    if cfg.insecure:
        args += ["--insecure"]
    else:
        assert cfg.tls is not None
        args += [
            "--ssl-ca-certfile",
            str(cfg.tls.ca_cert),
            "--ssl-certfile",
            str(cfg.tls.server_cert),
            "--ssl-keyfile",
            str(cfg.tls.server_key),
        ]
        if cfg.supernode_auth:
            args += ["--enable-supernode-auth"]
    return args + list(cfg.extra_args)


class SuperLink:
    """A running ``flower-superlink`` (guarded Control API), as a context manager."""

    def __init__(self, cfg: SuperLinkConfig, *, flwr_home: str | Path | None = None) -> None:
        self.cfg = cfg
        self.flwr_home = Path(flwr_home) if flwr_home else Path(cfg.workdir) / "flwr-home"
        argv = [sys.executable, "-m", "survfed.server.control_guard", *superlink_args(cfg)]
        env = child_env({ENV_ALLOW: ",".join(cfg.control_allow), "FLWR_HOME": str(self.flwr_home)})
        self.process = ManagedProcess(argv, cfg.log_file, env=env, name="SuperLink")

    @property
    def connection(self) -> FlwrConnection:
        """A CLI connection to this SuperLink's Control API from the coordinator host."""
        return FlwrConnection(
            name="survfed-local",
            address=self.cfg.local_address,
            root_certificates=None if self.cfg.insecure else self.cfg.tls.ca_cert,  # type: ignore[union-attr]
            insecure=self.cfg.insecure,
            flwr_home=self.flwr_home,
        )

    def start(self, timeout_s: float = 60.0) -> SuperLink:
        """Start the process and wait until its health endpoint answers."""
        if self.cfg.insecure and not self.cfg.simulation:
            warnings.warn(INSECURE_WARNING, stacklevel=2)
            print(INSECURE_WARNING, file=sys.stderr)
        elif not self.cfg.insecure:
            assert self.cfg.tls is not None
            self.cfg.tls.check()
        Path(self.cfg.workdir).mkdir(parents=True, exist_ok=True)
        self.process.start()
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.process.stop()
            raise
        return self

    def _health_ok(self) -> bool:
        scheme = "http" if self.cfg.insecure else "https"
        url = f"{scheme}://{self.cfg.local_address}/health"
        ctx = None
        if not self.cfg.insecure:
            assert self.cfg.tls is not None
            ctx = ssl.create_default_context(cafile=str(self.cfg.tls.ca_cert))
            ctx.check_hostname = False  # the probe goes to the local address
        try:
            with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until ``/health`` answers 200; raise :class:`SuperLinkError` otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.process.is_running():
                raise SuperLinkError(
                    f"SuperLink exited with status {self.process.returncode()}; log "
                    f"{self.cfg.log_file}:\n{self.process.log_text(4000)}"
                )
            if self._health_ok():
                return
            time.sleep(0.3)
        raise SuperLinkError(
            f"SuperLink not ready after {timeout_s:.0f} s; log {self.cfg.log_file}:\n"
            f"{self.process.log_text(4000)}"
        )

    def stop(self, grace_s: float = 10.0) -> int | None:
        """Stop the SuperLink and everything it started (SuperExec, ServerApp)."""
        return self.process.stop(grace_s)

    def __enter__(self) -> SuperLink:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def register_site(
    connection: FlwrConnection, public_key: str | Path, *, site: str | None = None
) -> int:
    """Admit a site: register its OpenSSH public key with the SuperLink; return its node id.

    Runs ``flwr supernode register <public_key> <connection> [--name site] --format json``
    against the Control API (flwr 1.41 keeps registered keys in the SuperLink's state
    database, so a registration survives restarts when ``--database`` is a file).
    """
    key = Path(public_key)
    if not key.is_file():
        raise FileNotFoundError(f"public_key={key} does not exist")
    args = ["supernode", "register", str(key), connection.name, "--format", "json"]
    if site:
        args += ["--name", site]
    data = flwr_cli(connection, args)
    if not data.get("success") or "node-id" not in data:
        raise RuntimeError(f"registering {key} failed: {data}")
    return int(data["node-id"])


def list_sites(connection: FlwrConnection) -> list[dict[str, object]]:
    """The SuperNodes the SuperLink knows (``flwr supernode ls --format json``)."""
    data = flwr_cli(connection, ["supernode", "ls", connection.name, "--format", "json"])
    return list(data.get("nodes", []))


def unregister_site(connection: FlwrConnection, node_id: int) -> None:
    """Revoke a site (``flwr supernode unregister <node_id>``)."""
    data = flwr_cli(
        connection, ["supernode", "unregister", str(node_id), connection.name, "--format", "json"]
    )
    if not data.get("success"):
        raise RuntimeError(f"unregistering node {node_id} failed: {data}")
