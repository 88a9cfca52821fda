"""Fixtures shared across the test suite."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Under pytest-xdist every worker (and every SuperNode/ClientApp process a test starts) would
# otherwise run torch and BLAS with one thread per core, and N workers on N cores thrash: the
# detector's learning test took 4x its single-process time. One thread each when parallel.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, "1")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic cohort written by the real generator: 3 sites, 6 patients each."""
    from survfed.common.synth.cohort import make_cohort

    out = tmp_path_factory.mktemp("cohort") / "cohort"
    make_cohort(out, {"iowa": 6, "maastro": 6, "stanford": 6}, seed=11, progress=False)
    return out
