"""Many virtual sites on one machine: the same survfed apps on Flower's simulation engine.

For experiments (how does FedAvg behave with 20 small sites? with FedProx?), not for patients:
every virtual site reads its folder of one cohort on this machine. What runs is exactly what a
real federation runs — the survfed ServerApp and ClientApp, the run config, the checkpoints and
the run folder — only the transport differs: a SuperLink started with ``--simulation`` runs the
ClientApps itself (Ray actors, ``num-supernodes`` virtual sites) instead of waiting for
SuperNodes. Partition ``i`` is the ``i``-th training site folder
(:func:`survfed.app.config.simulation_sites`).

The SuperLink listens on loopback only, without TLS (nothing leaves the machine) and with the
Control API guarded like the real one.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from survfed.app.config import FederationConfig, simulation_sites
from survfed.server.federation import RunOutcome, log_tail, watch_run, write_app_dir
from survfed.server.flwr_home import submit_run
from survfed.server.superlink import SuperLink, SuperLinkConfig

__all__ = ["SimulationSettings", "run_simulation"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class SimulationSettings:
    """A simulated federation.

    Attributes:
        workdir: SuperLink state, logs and the app folder.
        federation: the run config (``run-dir``, ``sim-cohort`` and ``eval-cohorts`` at least;
            see :mod:`survfed.app.config`).
        cpus_per_site, gpus_per_site: resources one virtual site's ClientApp reserves (Ray);
            with 2 CPUs and 1 CPU per site, two sites train at a time.
        timeout_s: the longest the whole run may take (a day, as ``run-timeout-s`` of a real
            federation; a standard-preset run with detector rounds takes over an hour on two
            CPU cores).
    """

    workdir: Path
    federation: Mapping[str, Any]
    cpus_per_site: int = 1
    gpus_per_site: float = 0.0
    timeout_s: float = 86400.0

    def __post_init__(self) -> None:
        if isinstance(self.cpus_per_site, bool) or int(self.cpus_per_site) != self.cpus_per_site:
            raise ValueError(f"cpus_per_site must be a whole number, got {self.cpus_per_site!r}")
        if self.cpus_per_site < 1 or self.gpus_per_site < 0:
            raise ValueError("cpus_per_site must be >= 1 and gpus_per_site >= 0")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s (--run-timeout-s) must be > 0, got {self.timeout_s!r}")

    def federation_config(self) -> FederationConfig:
        """The typed run config; ``min-sites`` defaults to every virtual site."""
        fed = FederationConfig.from_run_config(dict(self.federation))
        if not fed.sim_cohort:
            raise ValueError("the simulation needs run config 'sim-cohort' (the cohort folder)")
        if "min-sites" not in self.federation:
            fed = fed.replace(**{"min-sites": len(simulation_sites(fed))})
        return fed


def run_simulation(
    settings: SimulationSettings, *, log: Callable[[str], None] = print
) -> RunOutcome:
    """Start a simulation SuperLink, run the federation to the end, stop everything."""
    fed = settings.federation_config()
    if fed.detector_init:  # a wrong file fails now, not after the sites' first round
        from survfed.server.fed_detector import check_detector_init

        check_detector_init(fed, log)
    sites = simulation_sites(fed)
    if not sites:
        raise ValueError(f"sim-cohort {fed.sim_cohort} holds no training site folder")
    workdir = Path(settings.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    link_cfg = SuperLinkConfig(
        workdir=workdir / "superlink",
        host="127.0.0.1",
        port=_free_port(),
        insecure=True,
        database=":flwr-in-memory:",
        simulation=True,
    )
    log(
        f"simulation: {len(sites)} virtual sites ({', '.join(s.name for s in sites[:6])}"
        f"{', ...' if len(sites) > 6 else ''}) from {fed.sim_cohort}, "
        f"{fed.num_server_rounds} rounds of {fed.strategy}"
    )
    with SuperLink(link_cfg) as link:
        app_dir = workdir / "app"
        write_app_dir(app_dir, fed.to_run_config())
        started = time.monotonic()
        run_id = submit_run(
            link.connection,
            app_dir,
            fed.to_run_config(),
            federation_config={
                "num-supernodes": len(sites),
                "client-resources-num-cpus": int(settings.cpus_per_site),
                "client-resources-num-gpus": float(settings.gpus_per_site),
            },
        )
        log(f"run {run_id} submitted (SuperLink log {link_cfg.log_file})")
        status, kept = watch_run(
            link.connection, run_id, fed, timeout_s=settings.timeout_s, log=log, watch_sites=False
        )
        if not status.endswith("completed"):
            log_tail(kept, log)
    summary_path = fed.run_path / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return RunOutcome(run_id, status, fed.run_path, summary, time.monotonic() - started)
