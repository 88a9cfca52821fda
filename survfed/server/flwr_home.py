"""Drive the ``flwr`` CLI (flwr 1.41) against a SuperLink's Control API.

``flwr`` reads its connections from ``$FLWR_HOME/config.toml``::

    [superlink]
    default = "survfed-local"

    [superlink.survfed-local]
    address = "127.0.0.1:9093"
    root-certificates = "/srv/survfed/pki/ca.crt"   # or: insecure = true

:func:`write_flwr_config` writes that file; :func:`submit_run` runs ``flwr run <app-dir>
<connection> --format json --run-config <overrides.toml>`` and returns the run id;
:func:`run_status` / :func:`wait_for_run` poll ``flwr ls --run-id``; :func:`run_logs` reads
``flwr log``. All commands go through :func:`flwr_cli`, which parses the JSON output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from survfed.common.managed_process import child_env

FINISHED_PREFIX = "finished"


class FlwrCliError(RuntimeError):
    """A ``flwr`` command failed; the message carries its output."""


@dataclass(frozen=True)
class FlwrConnection:
    """One ``[superlink.<name>]`` entry of ``$FLWR_HOME/config.toml``."""

    name: str
    address: str
    flwr_home: Path
    root_certificates: Path | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in " .[]\"'"):
            raise ValueError(f"name={self.name!r} must be a plain TOML key (no spaces or dots)")
        if self.insecure == (self.root_certificates is not None):
            raise ValueError("give exactly one of root_certificates=... or insecure=True")

    def toml_table(self) -> dict[str, Any]:
        """The connection's table in ``config.toml``."""
        table: dict[str, Any] = {"address": self.address}
        if self.insecure:
            table["insecure"] = True
        else:
            table["root-certificates"] = str(Path(self.root_certificates).resolve())  # type: ignore[arg-type]
        return table


def write_flwr_config(connection: FlwrConnection, *, make_default: bool = True) -> Path:
    """Add/replace ``connection`` in ``$FLWR_HOME/config.toml``; return the file's path.

    Other connections in an existing file are kept.
    """
    home = Path(connection.flwr_home)
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    config: dict[str, Any] = tomllib.loads(path.read_text()) if path.exists() else {}
    superlink = config.setdefault("superlink", {})
    superlink[connection.name] = connection.toml_table()
    if make_default or "default" not in superlink:
        superlink["default"] = connection.name
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(tomli_w.dumps(config))
    os.replace(tmp, path)
    return path


def _flwr_executable() -> str:
    candidate = Path(sys.executable).parent / "flwr"
    return str(candidate) if candidate.exists() else "flwr"


def _parse_json_output(stdout: str) -> dict[str, Any] | None:
    start = stdout.find("{")
    if start < 0:
        return None
    try:
        obj, _ = json.JSONDecoder().raw_decode(stdout[start:])
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def flwr_cli(
    connection: FlwrConnection,
    args: Sequence[str],
    *,
    timeout_s: float = 120.0,
    expect_json: bool = True,
) -> dict[str, Any]:
    """Run ``flwr <args>`` with ``FLWR_HOME`` set to the connection's home.

    Returns the parsed JSON output (``{"stdout": ...}`` when ``expect_json`` is false).
    Raises :class:`FlwrCliError` on a non-zero exit, a timeout, or ``"success": false``.
    """
    write_flwr_config(connection, make_default=False)
    env = child_env({"FLWR_HOME": str(Path(connection.flwr_home).resolve())})
    cmd = [_flwr_executable(), *args]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as err:
        raise FlwrCliError(f"`flwr {' '.join(args)}` timed out after {timeout_s:.0f} s") from err
    if not expect_json:
        if proc.returncode != 0:
            raise FlwrCliError(
                f"`flwr {' '.join(args)}` exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            )
        return {"stdout": proc.stdout}
    data = _parse_json_output(proc.stdout)
    if proc.returncode != 0 or data is None or data.get("success") is False:
        raise FlwrCliError(
            f"`flwr {' '.join(args)}` failed (exit {proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return data


def submit_run(
    connection: FlwrConnection,
    app_dir: str | Path,
    run_config: Mapping[str, Any] | None = None,
    *,
    federation_config: Mapping[str, Any] | None = None,
    timeout_s: float = 120.0,
) -> int:
    """Submit the Flower app in ``app_dir`` as a new run; return the run id.

    ``run_config`` overrides ``[tool.flwr.app.config]`` keys; it is written to a TOML file
    next to ``config.toml`` and passed as ``--run-config <file>`` (no shell quoting).
    ``federation_config`` (simulation SuperLinks: ``num-supernodes``,
    ``client-resources-num-cpus``, ...) goes the same way to ``--federation-config``.
    """
    app = Path(app_dir)
    if not (app / "pyproject.toml").is_file():
        raise FileNotFoundError(f"app_dir={app} has no pyproject.toml")
    args = ["run", str(app.resolve()), connection.name, "--format", "json"]
    if run_config:
        overrides = Path(connection.flwr_home) / "run-config-overrides.toml"
        overrides.parent.mkdir(parents=True, exist_ok=True)
        overrides.write_text(tomli_w.dumps(dict(run_config)))
        args += ["--run-config", str(overrides.resolve())]
    if federation_config:
        options = Path(connection.flwr_home) / "federation-config.toml"
        options.parent.mkdir(parents=True, exist_ok=True)
        options.write_text(tomli_w.dumps(dict(federation_config)))
        args += ["--federation-config", str(options.resolve())]
    data = flwr_cli(connection, args, timeout_s=timeout_s)
    return int(data["run-id"])


def run_status(connection: FlwrConnection, run_id: int) -> dict[str, Any]:
    """The run's entry from ``flwr ls --run-id`` (keys ``status``, ``elapsed``, ...)."""
    data = flwr_cli(
        connection, ["ls", connection.name, "--run-id", str(run_id), "--format", "json"]
    )
    runs = data.get("runs", [])
    if not runs:
        raise FlwrCliError(f"run {run_id} is unknown to the SuperLink")
    return dict(runs[0])


def wait_for_run(
    connection: FlwrConnection, run_id: int, *, timeout_s: float = 600.0, poll_s: float = 2.0
) -> dict[str, Any]:
    """Poll until the run's status starts with ``finished``; return its last entry.

    Raises ``TimeoutError`` after ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        entry = run_status(connection, run_id)
        if str(entry.get("status", "")).startswith(FINISHED_PREFIX):
            return entry
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} still {entry.get('status')!r} after {timeout_s} s")
        time.sleep(poll_s)


def run_logs(connection: FlwrConnection, run_id: int) -> str:
    """The ServerApp log of a run (``flwr log <run_id> <connection> --show``)."""
    out = flwr_cli(connection, ["log", str(run_id), connection.name, "--show"], expect_json=False)
    return str(out["stdout"])
