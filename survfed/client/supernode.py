"""Start and stop a Flower SuperNode (flwr 1.41) for one hospital site.

The SuperNode connects out to the coordinator's SuperLink (``--superlink HOST:PORT``; the
site opens no inbound port), verifies the SuperLink's certificate against the federation
CA (``--root-certificates``), proves its identity with the site's private key
(``--auth-supernode-private-key``) and carries the site name and data folder in its node
config. It runs under :mod:`survfed.client.app_pinning`, so it executes only the survfed
app and version installed at the site. With no retry limits (the default) it keeps
reconnecting across SuperLink restarts.

Example::

    cfg = SuperNodeConfig(site="iowa", superlink="coordinator.example.org:9093",
                          data_dir=Path("/data/iowa"), workdir=Path("/var/lib/survfed"),
                          ca_cert=Path("ca.crt"), auth_key=Path("keys/iowa"))
    with SuperNode(cfg):
        ...
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import tomli_w

from survfed.client.app_pinning import AppPolicy
from survfed.common.managed_process import ManagedProcess, child_env

INSECURE_WARNING = (
    "survfed: --insecure: this site connects WITHOUT TLS and WITHOUT authentication; "
    "for local experiments on one machine only."
)


class SuperNodeError(RuntimeError):
    """The SuperNode exited; the message carries its log tail."""


@dataclass(frozen=True)
class SuperNodeConfig:
    """How to run one site's SuperNode.

    Attributes
    ----------
    site
        Site name (node config key ``site``).
    superlink
        The SuperLink's Fleet address, ``host:port``.
    data_dir
        The site's data folder (node config key ``data-dir``); must exist.
    workdir
        Folder for the log, the node-config file and ``FLWR_HOME`` (installed FABs).
    ca_cert
        Federation CA certificate; required unless ``insecure``.
    auth_key
        The site's OpenSSH private key; required unless ``insecure``.
    runtime_port
        Port of the SuperNode's local Runtime API on 127.0.0.1 (each SuperNode on one
        host needs its own).
    max_retries, max_wait_time
        Reconnection limits; ``None`` = retry forever (survives SuperLink restarts).
    policy
        Which apps the site runs (default: installed survfed app and version).
    extra_node_config
        More node config entries (strings, ints, floats, bools).
    """

    site: str
    superlink: str
    data_dir: Path
    workdir: Path
    ca_cert: Path | None = None
    auth_key: Path | None = None
    insecure: bool = False
    runtime_port: int = 9094
    max_retries: int | None = None
    max_wait_time: float | None = None
    policy: AppPolicy | None = None
    extra_node_config: Mapping[str, str | int | float | bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from survfed.server.pki import validate_site_name  # same naming rule both sides

        validate_site_name(self.site)
        host, sep, port = self.superlink.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"superlink={self.superlink!r} must be host:port")
        if not 1 <= int(self.runtime_port) <= 65535:
            raise ValueError(f"runtime_port={self.runtime_port} must be in 1..65535")
        if self.insecure:
            if self.ca_cert is not None or self.auth_key is not None:
                raise ValueError("insecure=True cannot be combined with ca_cert/auth_key")
        elif self.ca_cert is None or self.auth_key is None:
            raise ValueError("ca_cert=... and auth_key=... are required unless insecure=True")
        reserved = {"site", "data-dir"} & set(self.extra_node_config)
        if reserved:
            raise ValueError(f"extra_node_config must not set {sorted(reserved)}")

    @property
    def log_file(self) -> Path:
        """Where the SuperNode's stdout/stderr go."""
        return Path(self.workdir) / f"supernode-{self.site}.log"

    @property
    def flwr_home(self) -> Path:
        """``FLWR_HOME`` of the SuperNode (FABs are unpacked under ``apps/``)."""
        return Path(self.workdir) / "flwr-home"

    @property
    def node_config_file(self) -> Path:
        """TOML file passed as ``--node-config`` (no shell quoting of paths)."""
        return Path(self.workdir) / f"node-config-{self.site}.toml"

    def node_config(self) -> dict[str, str | int | float | bool]:
        """The node config every ClientApp of this site sees in ``context.node_config``."""
        return {
            "site": self.site,
            "data-dir": str(Path(self.data_dir).resolve()),
            **dict(self.extra_node_config),
        }


def supernode_args(cfg: SuperNodeConfig) -> list[str]:
    """The ``flower-supernode`` arguments for ``cfg`` (flwr 1.41 flags)."""
    args = ["--superlink", cfg.superlink, "--node-config", str(cfg.node_config_file)]
    args += ["--host", "127.0.0.1", "--port", str(cfg.runtime_port)]
    if cfg.insecure:
        args += ["--insecure"]
    else:
        args += ["--root-certificates", str(cfg.ca_cert)]
        args += ["--auth-supernode-private-key", str(cfg.auth_key)]
    if cfg.max_retries is not None:
        args += ["--max-retries", str(cfg.max_retries)]
    if cfg.max_wait_time is not None:
        args += ["--max-wait-time", str(cfg.max_wait_time)]
    return args


class SuperNode:
    """A running, app-pinned ``flower-supernode`` for one site, as a context manager."""

    def __init__(self, cfg: SuperNodeConfig) -> None:
        self.cfg = cfg
        policy = cfg.policy or AppPolicy.default()
        argv = [sys.executable, "-m", "survfed.client.app_pinning", *supernode_args(cfg)]
        env = child_env(
            {
                "FLWR_HOME": str(cfg.flwr_home),
                # the SuperNode's executor looks for new work every 1 s by default; a site
                # waits on nothing else, so look 10 times a second (a local call, no traffic)
                "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
                **policy.to_env(),
            }
        )
        self.process = ManagedProcess(argv, cfg.log_file, env=env, name=f"SuperNode {cfg.site}")

    def start(self) -> SuperNode:
        """Write the node config and start the process (it connects in the background)."""
        cfg = self.cfg
        if cfg.insecure:
            warnings.warn(INSECURE_WARNING, stacklevel=2)
            print(INSECURE_WARNING, file=sys.stderr)
        else:
            for name in ("ca_cert", "auth_key"):
                path = Path(getattr(cfg, name))
                if not path.is_file():
                    raise FileNotFoundError(f"{name}={path} does not exist")
        if not Path(cfg.data_dir).is_dir():
            raise FileNotFoundError(f"data_dir={cfg.data_dir} is not a folder")
        Path(cfg.workdir).mkdir(parents=True, exist_ok=True)
        cfg.flwr_home.mkdir(parents=True, exist_ok=True)
        cfg.node_config_file.write_text(tomli_w.dumps(cfg.node_config()))
        self.process.start()
        return self

    def wait_connected(self, timeout_s: float = 60.0) -> int:
        """Block until the log shows the SuperNode's node id; return it.

        Raises :class:`SuperNodeError` if the process exits first (e.g. its key is not
        registered, or TLS fails) and ``TimeoutError`` after ``timeout_s``.
        """
        marker = "SuperNode ID: "
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.process.log_text()
            if marker in text:
                tail = text.rsplit(marker, 1)[1].split()[0]
                return int(tail)
            if not self.process.is_running():
                raise SuperNodeError(
                    f"SuperNode {self.cfg.site} exited with status "
                    f"{self.process.returncode()}; log {self.cfg.log_file}:\n"
                    f"{self.process.log_text(4000)}"
                )
            time.sleep(0.3)
        raise TimeoutError(f"SuperNode {self.cfg.site} not connected after {timeout_s} s")

    def stop(self, grace_s: float = 10.0) -> int | None:
        """Stop the SuperNode and its SuperExec/ClientApp children."""
        return self.process.stop(grace_s)

    def __enter__(self) -> SuperNode:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
