"""App identity checks and the egress policy of a site's replies (no Flower transport here).

Two checks every survfed ClientApp runs:

* :func:`check_app_identity` — the ServerApp stamps each instruction's config with the app
  name and survfed version it runs; a site refuses instructions from another app or from a
  different survfed version than the one it installed (clear error, nothing computed).
* :func:`check_reply_content` — before a reply leaves the site, it must hold only
  ``ArrayRecord``\\ s of numeric arrays and ``MetricRecord``\\ s whose keys are whitelisted
  and whose values are finite scalars. Anything else (config records, strings, lists,
  unknown metric names) raises, so patient-level data cannot leak through a typo.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

import survfed

APP_NAME_KEY = "survfed-app"
APP_VERSION_KEY = "survfed-version"


class AppMismatchError(RuntimeError):
    """An instruction came from an app or survfed version this site did not install."""


class EgressPolicyError(RuntimeError):
    """A reply would carry something other than arrays and whitelisted scalar metrics."""


def app_identity(app_name: str, version: str | None = None) -> dict[str, str]:
    """The config entries the ServerApp adds to every instruction it sends."""
    if not app_name:
        raise ValueError("app_name must be a non-empty string")
    return {APP_NAME_KEY: app_name, APP_VERSION_KEY: version or survfed.__version__}


def check_app_identity(
    config: ConfigRecord | Mapping[str, Any],
    expected_app: str,
    installed_version: str | None = None,
) -> None:
    """Raise :class:`AppMismatchError` unless ``config`` names this app and version.

    ``installed_version`` defaults to ``survfed.__version__`` of the installed package.
    """
    installed = installed_version or survfed.__version__
    app = config.get(APP_NAME_KEY)
    version = config.get(APP_VERSION_KEY)
    if app != expected_app:
        raise AppMismatchError(
            f"refusing instruction: it is for app {app!r}, this site runs {expected_app!r} "
            f"(config key {APP_NAME_KEY!r})"
        )
    if version != installed:
        raise AppMismatchError(
            f"refusing instruction: the server runs survfed {version!r} but this site "
            f"installed survfed {installed!r}; install the same version on both sides"
        )


def _check_array_record(name: str, record: ArrayRecord) -> None:
    for key, array in record.items():
        dtype = np.dtype(array.dtype)
        if dtype.kind not in "fiub":
            raise EgressPolicyError(
                f"reply record {name!r} array {key!r} has dtype {dtype}: only numeric "
                "arrays may leave a site"
            )


def _check_metric_record(name: str, record: MetricRecord, allowed: frozenset[str]) -> None:
    for key, value in record.items():
        if key not in allowed:
            raise EgressPolicyError(
                f"reply record {name!r} has metric {key!r}, which is not whitelisted "
                f"(allowed: {sorted(allowed)})"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EgressPolicyError(
                f"reply record {name!r} metric {key!r} is {type(value).__name__}: only "
                "scalar int/float metrics may leave a site"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise EgressPolicyError(f"reply record {name!r} metric {key!r} is {value}")


def check_reply_content(content: RecordDict, allowed_metrics: Iterable[str]) -> None:
    """Raise :class:`EgressPolicyError` unless ``content`` is arrays + whitelisted scalars."""
    allowed = frozenset(allowed_metrics)
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            _check_array_record(name, record)
        elif isinstance(record, MetricRecord):
            _check_metric_record(name, record, allowed)
        else:
            raise EgressPolicyError(
                f"reply record {name!r} is a {type(record).__name__}: a site may send only "
                "ArrayRecord and MetricRecord"
            )


def describe_content(content: RecordDict) -> dict[str, Any]:
    """A JSON-able description of a message's content (record kinds, keys, value types).

    Used to audit what sites actually sent: ``{"arrays": {"kind": "ArrayRecord",
    "items": {"0": "float64[3]"}}, "metrics": {"kind": "MetricRecord", "items":
    {"num-examples": "int"}}}``.
    """
    out: dict[str, Any] = {}
    for name, record in content.items():
        items: dict[str, str] = {}
        if isinstance(record, ArrayRecord):
            for key, array in record.items():
                items[key] = f"{np.dtype(array.dtype)}{list(array.shape)}"
        else:
            for key, value in record.items():
                items[key] = type(value).__name__
        out[name] = {"kind": type(record).__name__, "items": items}
    return out
