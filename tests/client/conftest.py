"""Make ``tests/client/site_factory.py`` importable as ``site_factory``.

The suite runs with ``--import-mode=importlib``, which does not put test folders on
``sys.path``; this conftest (imported before the test modules of this folder) loads the helper
module by path once, so tests can write ``from site_factory import make_site``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest


def _load_site_factory() -> ModuleType:
    if "site_factory" in sys.modules:
        return sys.modules["site_factory"]
    spec = importlib.util.spec_from_file_location(
        "site_factory", Path(__file__).with_name("site_factory.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["site_factory"] = module
    spec.loader.exec_module(module)
    return module


SITE_FACTORY = _load_site_factory()


@pytest.fixture
def site_factory() -> ModuleType:
    """The :mod:`site_factory` helpers (``make_site``, ``write_series``, ...)."""
    return SITE_FACTORY
