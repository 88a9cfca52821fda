"""``survfed-server start``: run a federation at the coordinator, from a ``server.toml``.

Steps: check the PKI (or warn loudly with ``insecure``), start the SuperLink (TLS, site
authentication, state database, Control API only from the coordinator host), register the
configured site keys, write the Flower app folder (a bare ``pyproject.toml`` whose components
point into the installed ``survfed.app``), submit the run with ``flwr run``, then show progress
(sites connected, one line per round from the run folder's ``metrics.csv``) until the run
finishes. Ctrl-C stops the run and the SuperLink.

``server.toml``::

    [server]
    workdir = "/srv/survfed"            # SuperLink state, logs, app folder
    pki-dir = "/srv/survfed/pki"        # ca.crt, server.crt, server.key (survfed-server certs)
    host = "0.0.0.0"                    # listen address of the single Flower port
    port = 9093
    control-allow = ["127.0.0.1", "::1"]
    run-dir = "/srv/survfed/runs/r1"     # the run folder (absolute, or relative to workdir)
    run-timeout-s = 86400

    [sites]                             # site name -> its OpenSSH public key
    iowa = "/srv/survfed/pki/keys/iowa.pub"

    [federation]                        # run config keys (survfed.app.config)
    num-server-rounds = 20
    min-sites = 2
    eval-cohorts = "/data/heldout"
"""

from __future__ import annotations

import csv
import json
import math
import re
import signal
import sys
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from survfed import __version__
from survfed.app.config import FederationConfig, resolve_path_keys
from survfed.server.control_guard import DEFAULT_ALLOW
from survfed.server.fed_training import SITES_FILE
from survfed.server.flwr_home import (
    FlwrCliError,
    FlwrConnection,
    flwr_cli,
    run_logs,
    run_status,
    submit_run,
)
from survfed.server.pki import validate_site_name
from survfed.server.superlink import (
    SuperLink,
    SuperLinkConfig,
    TlsFiles,
    list_sites,
    register_site,
)

__all__ = [
    "APP_ID",
    "RunOutcome",
    "ServerSettings",
    "admit_sites",
    "install_stop_signals",
    "read_settings",
    "run_federation",
    "write_app_dir",
]

APP_ID = "survfed/survfed"
REGISTRY_FILE = "registered-sites.json"


@dataclass(frozen=True)
class ServerSettings:
    """The coordinator's settings (``server.toml``; see the module docstring).

    Attributes:
        workdir: SuperLink state, logs and the app folder.
        pki_dir: TLS files (``ca.crt``, ``server.crt``, ``server.key``).
        host, port: the Flower listener.
        control_allow: peers allowed on the Control/Runtime APIs.
        run_dir: the run folder.
        run_timeout_s: give up waiting for the run after this long.
        sites: site name -> public key file.
        federation: the run config (flat keys).
        insecure: no TLS, no site authentication (local experiments only).
    """

    workdir: Path
    pki_dir: Path
    run_dir: Path
    host: str = "127.0.0.1"
    port: int = 9093
    control_allow: tuple[str, ...] = DEFAULT_ALLOW
    run_timeout_s: float = 86400.0
    sites: Mapping[str, Path] = field(default_factory=dict)
    federation: Mapping[str, Any] = field(default_factory=dict)
    insecure: bool = False

    def __post_init__(self) -> None:
        for site in self.sites:
            validate_site_name(site, argument="[sites] key")
        if not Path(self.run_dir).is_absolute():
            raise ValueError(f"run-dir must be absolute, got {self.run_dir}")
        self.federation_config()  # validate early, with the run-config key names

    def federation_config(self) -> FederationConfig:
        """The run config with ``run-dir`` filled in, parsed."""
        return FederationConfig.from_run_config(
            {**dict(self.federation), "run-dir": str(self.run_dir)}
        )

    def superlink_config(self) -> SuperLinkConfig:
        """How to run the SuperLink."""
        return SuperLinkConfig(
            workdir=self.workdir / "superlink",
            host=self.host,
            port=self.port,
            tls=None if self.insecure else TlsFiles.from_dir(self.pki_dir),
            insecure=self.insecure,
            control_allow=self.control_allow,
        )


def read_settings(
    path: str | Path, *, run_dir: str | Path | None = None, insecure: bool = False
) -> ServerSettings:
    """Read ``server.toml``; relative paths are relative to the file's folder."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"--config {path}: cannot read: {exc}") from exc
    unknown = sorted(set(data) - {"server", "sites", "federation"})
    if unknown:
        raise ValueError(f"--config {path}: unknown tables {unknown}")
    server = dict(data.get("server", {}))
    known = {"workdir", "pki-dir", "host", "port", "control-allow", "run-dir", "run-timeout-s"}
    bad = sorted(set(server) - known)
    if bad:
        raise ValueError(f"--config {path}: unknown [server] keys {bad}; known {sorted(known)}")
    base = path.resolve().parent

    def resolve(value: str | Path, root: Path = base) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else root / p

    workdir = resolve(server.get("workdir", "survfed-server"))
    chosen = run_dir if run_dir is not None else server.get("run-dir", "runs/run")
    return ServerSettings(
        workdir=workdir,
        pki_dir=resolve(server.get("pki-dir", workdir / "pki")),
        run_dir=resolve(chosen, Path.cwd() if run_dir is not None else workdir),
        host=str(server.get("host", "127.0.0.1")),
        port=int(server.get("port", 9093)),
        control_allow=tuple(server.get("control-allow", DEFAULT_ALLOW)),
        run_timeout_s=float(server.get("run-timeout-s", 86400.0)),
        sites={str(k): resolve(v) for k, v in dict(data.get("sites", {})).items()},
        federation=resolve_path_keys(dict(data.get("federation", {})), base),
        insecure=insecure,
    )


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def install_stop_signals() -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so every started process is stopped.

    (Python ignores SIGINT when it starts with SIGINT ignored, as in a background job of a
    non-interactive shell; SIGINT is then re-enabled too.)
    """
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _raise_interrupt)


def write_app_dir(app_dir: str | Path, run_config: Mapping[str, Any]) -> Path:
    """Write the Flower app folder: only a ``pyproject.toml`` pointing into ``survfed.app``.

    The sites accept exactly this shape (:mod:`survfed.client.app_pinning`): app id
    ``survfed/survfed`` at the installed survfed version, no code in the FAB.
    """
    app = Path(app_dir)
    app.mkdir(parents=True, exist_ok=True)
    for child in app.iterdir():
        if child.name != "pyproject.toml":
            raise ValueError(f"app_dir {app} must hold only pyproject.toml, found {child.name}")
    project = {
        "build-system": {"requires": ["setuptools>=69"], "build-backend": "setuptools.build_meta"},
        "project": {
            "name": "survfed",
            "version": __version__,
            "description": "survfed federated survival training (code from the installed survfed)",
            "license": "Apache-2.0",
            "dependencies": [],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "survfed",
                    "components": {
                        "serverapp": "survfed.app.server_app:app",
                        "clientapp": "survfed.app.client_app:app",
                    },
                    "config": dict(run_config),
                }
            }
        },
    }
    path = app / "pyproject.toml"
    path.write_text(tomli_w.dumps(project))
    return path


def admit_sites(
    connection: FlwrConnection, sites: Mapping[str, Path], registry: Path
) -> dict[str, int]:
    """Register each site's public key (once); return site -> node id.

    The SuperLink keeps registrations in its state database; ``registry`` (a JSON file next to
    it) remembers which node id each site name got, so a restart does not register twice.
    """
    known: dict[str, int] = json.loads(registry.read_text()) if registry.is_file() else {}
    listed = {int(n["node-id"]) for n in list_sites(connection)} if known else set()
    for site, key in sites.items():
        if site in known and known[site] in listed:
            continue
        try:
            known[site] = register_site(connection, key, site=site)
        except FlwrCliError as exc:
            raise RuntimeError(f"site {site}: registering {key} failed: {exc}") from exc
    registry.parent.mkdir(parents=True, exist_ok=True)
    registry.write_text(json.dumps(known, indent=1))
    return {s: known[s] for s in sites}


@dataclass(frozen=True)
class RunOutcome:
    """How a federation run ended.

    Attributes:
        run_id: Flower's run id.
        status: Flower's final status (``finished:completed`` when it worked).
        run_dir: the run folder.
        summary: ``summary.json`` of the run folder (empty if it was not written).
        seconds: wall time from submission to the end.
    """

    run_id: int
    status: str
    run_dir: Path
    summary: dict[str, Any]
    seconds: float


def _new_rows(run_dir: Path, seen: int) -> list[dict[str, str]]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    return rows[seen:]


def _num(row: Mapping[str, str], key: str, fmt: str = ".3f") -> str:
    value = row.get(key) or ""
    try:
        return format(float(value), fmt)
    except ValueError:
        return "n/a"


def _fmt_detector_row(row: Mapping[str, str], total: int) -> str:
    return (
        f"detector round {row.get('round')}/{total}: held-out CPM {_num(row, 'cpm')}, top-5 "
        f"recall {_num(row, 'recall_top5')} (nodules >= 6 mm), sites {row.get('sites')}, "
        f"annotated patients {row.get('n_patients')}, train loss {_num(row, 'det_loss')}, "
        f"round {_num(row, 'round_seconds', '.1f')} s"
    )


def _fmt_row(row: Mapping[str, str], total: int) -> str:
    def num(key: str, fmt: str = ".3f") -> str:
        return _num(row, key, fmt)

    ci = f"[{num('c_index_low')}, {num('c_index_high')}]"
    kb = num("bytes_up_per_site", ".0f")
    return (
        f"round {row.get('round')}/{total}: held-out C-index {num('c_index')} {ci}, "
        f"AUC {num('auc')}, sites {row.get('sites')}, patients {row.get('n_patients')}, "
        f"train loss {num('train_loss')}, up {kb} B/site, round {num('round_seconds', '.1f')} s"
    )


def _audit_lines(run_dir: Path) -> int:
    path = run_dir / "replies.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _report_failed_replies(run_dir: Path, seen: int, log: Callable[[str], None]) -> int:
    """Print the sites whose replies failed or were rejected since line ``seen``."""
    path = run_dir / "replies.jsonl"
    if not path.is_file():
        return seen
    lines = path.read_text().splitlines()
    for line in lines[seen:]:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            return seen  # a line being written; read it next time
        problem = entry.get("error") or entry.get("rejected")
        if problem:
            log(f"round {entry.get('round')}: site {entry.get('site')} failed: {problem}")
        seen += 1
    return seen


def monitor_run(
    connection: FlwrConnection,
    run_id: int,
    fed: FederationConfig,
    *,
    timeout_s: float,
    log: Callable[[str], None] = print,
    poll_s: float = 1.0,
    status_every_s: float = 10.0,
    watch_sites: bool = True,
) -> str:
    """Print sites connected and one line per finished round until the run ends.

    Rounds are read from the run folder every ``poll_s``; the run's status and the sites online
    come from the ``flwr`` CLI, whose every call is a Python process of about a CPU-second, so
    they are asked only every ``status_every_s`` (and at once when the run folder says the run
    wrote its summary). ``watch_sites=False`` skips the sites (the simulation has no
    SuperNodes).
    """
    deadline = time.monotonic() + timeout_s
    seen = len(_new_rows(fed.run_path, 0)) if fed.resume else 0
    online_before = -1
    audit_seen = _audit_lines(fed.run_path) if fed.resume else 0
    summary = fed.run_path / "summary.json"
    detector_dir = fed.run_path / "detector"
    seen_det = len(_new_rows(detector_dir, 0)) if fed.resume else 0
    asked = -math.inf
    while True:
        for row in _new_rows(detector_dir, seen_det):
            if row.get("round") != "0":
                log(_fmt_detector_row(row, fed.detector_rounds))
            seen_det += 1
        for row in _new_rows(fed.run_path, seen):
            log(_fmt_row(row, fed.num_server_rounds))
            seen += 1
        audit_seen = _report_failed_replies(fed.run_path, audit_seen, log)
        now = time.monotonic()
        if now - asked >= status_every_s or summary.is_file():
            asked = now
            try:
                status = str(run_status(connection, run_id).get("status", ""))
            except FlwrCliError as exc:
                log(f"survfed-server: cannot read the run status yet: {str(exc)[:200]}")
                status = ""
            if status.startswith("finished"):
                for row in _new_rows(fed.run_path, seen):
                    log(_fmt_row(row, fed.num_server_rounds))
                _report_failed_replies(fed.run_path, audit_seen, log)
                return status
            if watch_sites:
                try:
                    online = sum(1 for n in list_sites(connection) if n.get("status") == "online")
                except FlwrCliError:
                    online = online_before
                if online != online_before:
                    log(f"sites online: {online} (the run needs {fed.min_sites})")
                    online_before = online
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} not finished after {timeout_s:.0f} s")
        time.sleep(poll_s if not summary.is_file() else min(poll_s, 1.0))


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

SERVERAPP_LOG = "serverapp-{run_id}.log"
"""The ServerApp log of each run (a resumed run is a new run id), kept in the run folder."""


def keep_run_log(
    connection: FlwrConnection, run_id: int, run_dir: Path, log: Callable[[str], None]
) -> Path | None:
    """Copy the run's ServerApp log into the run folder while the SuperLink still holds it.

    ``flwr log`` needs a running SuperLink, and ``survfed-server start`` / ``survfed simulate``
    stop theirs when the run ends (the simulation's state is in memory), so the log is saved
    before: ``<run folder>/serverapp-<run id>.log``, without terminal colour codes.

    Returns the file, or ``None`` (with one line said) when the log could not be read or
    written; a missing log never fails the run.
    """
    try:
        text = run_logs(connection, run_id)
    except (FlwrCliError, OSError) as exc:
        log(f"(the ServerApp log of run {run_id} could not be read: {str(exc)[:200]})")
        return None
    path = Path(run_dir) / SERVERAPP_LOG.format(run_id=run_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_ANSI.sub("", text), encoding="utf-8")
    except OSError as exc:
        log(f"(the ServerApp log of run {run_id} could not be written to {path}: {exc})")
        return None
    return path


def log_tail(path: Path | None, log: Callable[[str], None], lines: int = 40) -> None:
    """Say the last ``lines`` lines of a kept ServerApp log, and where the rest is."""
    if path is None:
        return
    tail = path.read_text(encoding="utf-8").splitlines()[-lines:]
    log(f"end of the ServerApp log ({path}):\n" + "\n".join(tail))


def watch_run(
    connection: FlwrConnection,
    run_id: int,
    fed: FederationConfig,
    *,
    timeout_s: float,
    log: Callable[[str], None],
    watch_sites: bool = True,
) -> tuple[str, Path | None]:
    """:func:`monitor_run` to the end, then :func:`keep_run_log`: (final status, kept log).

    A run that does not end normally (the timeout, Ctrl-C) is stopped and its log kept before
    the error goes on.
    """
    try:
        status = monitor_run(
            connection, run_id, fed, timeout_s=timeout_s, log=log, watch_sites=watch_sites
        )
    except BaseException:
        stop_run(connection, run_id)
        keep_run_log(connection, run_id, fed.run_path, log)
        raise
    return status, keep_run_log(connection, run_id, fed.run_path, log)


def stop_run(connection: FlwrConnection, run_id: int) -> None:
    """Ask the SuperLink to stop a run (``flwr stop``); errors are ignored (best effort)."""
    try:
        flwr_cli(connection, ["stop", str(run_id), connection.name, "--format", "json"])
    except (FlwrCliError, OSError):
        pass


def submit_federated_run(
    link: SuperLink,
    settings: ServerSettings,
    node_ids: Mapping[str, int],
    *,
    resume: bool = False,
) -> tuple[int, FederationConfig]:
    """Write ``sites.json`` and the app folder, submit the run; return (run id, config)."""
    fed = settings.federation_config()
    if resume:
        fed = fed.replace(resume=True)
    run_dir = fed.run_path
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / SITES_FILE).write_text(
        json.dumps({str(nid): site for site, nid in node_ids.items()}, indent=1)
    )
    app_dir = settings.workdir / "app"
    write_app_dir(app_dir, fed.to_run_config())
    return submit_run(link.connection, app_dir, fed.to_run_config()), fed


def run_federation(
    settings: ServerSettings,
    *,
    resume: bool = False,
    log: Callable[[str], None] = print,
    on_started: Callable[[SuperLink, dict[str, int]], None] | None = None,
) -> RunOutcome:
    """Start the SuperLink, admit the sites, run the federation to the end; stop everything.

    Args:
        settings: the coordinator's settings.
        resume: continue the run folder's last checkpoint.
        log: where progress lines go.
        on_started: called with the running SuperLink and the site node ids before the run
            is submitted (the demo starts its SuperNodes there).
    """
    if settings.insecure:
        log("WARNING: --insecure: no TLS and no site authentication; local experiments only")
    else:
        TlsFiles.from_dir(settings.pki_dir).check()
    fed = settings.federation_config()
    if fed.detector_init:  # a wrong file fails now, not after the sites' first round
        from survfed.server.fed_detector import check_detector_init

        check_detector_init(fed, log)
    if not resume and (fed.run_path / "checkpoint" / "latest.json").exists():
        raise FileExistsError(
            f"run folder {fed.run_path} already holds a checkpoint: pass --resume "
            f"{fed.run_path} to continue it, or choose another run-dir"
        )
    settings.workdir.mkdir(parents=True, exist_ok=True)
    with SuperLink(settings.superlink_config()) as link:
        log(f"SuperLink listening on {settings.host}:{settings.port} (log {link.cfg.log_file})")
        node_ids = (
            {}
            if settings.insecure
            else admit_sites(link.connection, settings.sites, settings.workdir / REGISTRY_FILE)
        )
        for site, nid in node_ids.items():
            log(f"site {site} admitted (node id {nid})")
        if on_started is not None:
            on_started(link, node_ids)
        started = time.monotonic()
        run_id, fed = submit_federated_run(link, settings, node_ids, resume=resume)
        log(f"run {run_id} submitted: {fed.num_server_rounds} rounds of {fed.strategy}")
        status, kept = watch_run(
            link.connection, run_id, fed, timeout_s=settings.run_timeout_s, log=log
        )
        summary_path = fed.run_path / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        if not status.endswith("completed"):
            log_tail(kept, lambda line: print(line, file=sys.stderr))
            print(f"survfed-server: run {run_id} ended with status {status}", file=sys.stderr)
        elif kept is not None:
            log(f"ServerApp log: {kept}")
        return RunOutcome(run_id, status, fed.run_path, summary, time.monotonic() - started)
