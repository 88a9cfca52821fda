"""Tests for survfed.app.identity: app/version check and the reply egress policy."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

import survfed
from survfed.app.identity import (
    AppMismatchError,
    EgressPolicyError,
    app_identity,
    check_app_identity,
    check_reply_content,
    describe_content,
)


def test_matching_identity_passes_and_mismatch_is_refused() -> None:
    check_app_identity(ConfigRecord(app_identity("survfed")), "survfed")
    with pytest.raises(AppMismatchError, match="app 'other'"):
        check_app_identity(app_identity("other"), "survfed")
    with pytest.raises(AppMismatchError, match=r"survfed '9\.9\.9'.*installed"):
        check_app_identity(app_identity("survfed", "9.9.9"), "survfed")
    with pytest.raises(AppMismatchError):
        check_app_identity({}, "survfed")
    assert app_identity("survfed")["survfed-version"] == survfed.__version__


def test_arrays_and_whitelisted_scalars_pass() -> None:
    content = RecordDict(
        {
            "arrays": ArrayRecord([np.zeros(3), np.arange(4, dtype=np.int32)]),
            "metrics": MetricRecord({"num-examples": 12, "train-loss": 0.5}),
        }
    )
    check_reply_content(content, ["num-examples", "train-loss"])
    desc = describe_content(content)
    assert desc["arrays"] == {"kind": "ArrayRecord", "items": {"0": "float64[3]", "1": "int32[4]"}}
    assert desc["metrics"]["items"] == {"num-examples": "int", "train-loss": "float"}


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (RecordDict({"c": ConfigRecord({"patient": "P-001"})}), "ConfigRecord"),
        (RecordDict({"m": MetricRecord({"patient-age": 71.0})}), "not whitelisted"),
        (RecordDict({"m": MetricRecord({"train-loss": [0.1, 0.2]})}), "scalar"),
        (RecordDict({"m": MetricRecord({"train-loss": float("nan")})}), "nan"),
    ],
)
def test_anything_else_is_refused(content: RecordDict, match: str) -> None:
    with pytest.raises(EgressPolicyError, match=match):
        check_reply_content(content, ["num-examples", "train-loss"])
