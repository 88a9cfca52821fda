"""Sub-commands of the ``survfed`` CLI, one module each; ``register_all`` wires them."""

from __future__ import annotations

import argparse


def register_all(sub: argparse._SubParsersAction) -> None:
    """Add every available sub-command to ``sub``."""
    from survfed.commands import (
        demo,
        detect,
        inspect_site,
        make_cohort,
        preprocess,
        simulate,
        train_detector,
        train_pooled,
    )

    modules = (
        make_cohort,
        inspect_site,
        preprocess,
        train_pooled,
        train_detector,
        detect,
        simulate,
        demo,
    )
    for module in modules:
        module.register(sub)
