"""Fixtures shared across the test suite."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic cohort written by the real generator: 3 sites, 6 patients each."""
    from survfed.common.synth.cohort import make_cohort

    out = tmp_path_factory.mktemp("cohort") / "cohort"
    make_cohort(out, {"iowa": 6, "maastro": 6, "stanford": 6}, seed=11, progress=False)
    return out
