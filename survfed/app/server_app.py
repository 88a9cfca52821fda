"""The survfed ServerApp: translate Flower's run into :func:`run_federated_training`.

Components (referenced from the FAB's pyproject)::

    serverapp = "survfed.app.server_app:app"

The run config (``[tool.flwr.app.config]`` + ``flwr run --run-config``) is parsed once into a
:class:`~survfed.app.config.FederationConfig`; the rounds, checkpoints, central evaluation and
report live in :mod:`survfed.server.fed_training` (the loop itself is a Flower strategy).
"""

from __future__ import annotations

from logging import INFO

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from survfed.app.config import FederationConfig
from survfed.server.fed_training import run_federated_training
from survfed.server.prompt_grid import PromptGrid

__all__ = ["app"]

app = ServerApp()


def _log(message: str) -> None:
    log(INFO, "survfed: %s", message)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run (or resume) the federated survival training described by the run config."""
    fed = FederationConfig.from_run_config(dict(context.run_config))
    run_federated_training(PromptGrid(grid), fed, log=_log)
