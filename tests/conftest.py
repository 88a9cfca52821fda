"""Fixtures shared across the test suite."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

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


@pytest.fixture(scope="session")
def real_ct_fetch() -> ModuleType:
    """``benchmarks/fetch_real_ct.py`` (a script, not a package): the real scans' list and the
    writer of their site."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fetch_real_ct.py"
    spec = importlib.util.spec_from_file_location("fetch_real_ct", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def real_ct_dir(real_ct_fetch: ModuleType) -> Path:
    """The folder of the real CT files: ``$SURVFED_REAL_CT`` (set by ``make test``) or
    ``.cache/real-ct``.

    Without the files (fetched by ``make real-ct``; offline it cannot) the tests that use them
    are skipped, unless ``SURVFED_REQUIRE_REAL_CT=1`` (CI) makes that a failure.
    """
    folder = Path(os.environ.get("SURVFED_REAL_CT") or real_ct_fetch.DEFAULT_OUT)
    absent = [name for name in real_ct_fetch.FILES if not (folder / name).exists()]
    if absent:
        message = f"real CT not in {folder} (lacks {', '.join(absent)}): run `make real-ct`"
        if os.environ.get("SURVFED_REQUIRE_REAL_CT") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return folder
