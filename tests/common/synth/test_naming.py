"""UIDs, patient IDs and file layouts."""

from __future__ import annotations

import re

import numpy as np
import pytest
from pydicom.uid import UID

from survfed.common.synth.naming import make_uid, patient_ids, series_file_names


def test_uids_are_valid_and_deterministic():
    a, b = make_uid(0, "iowa", "IOW-0001", "study", 0), make_uid(0, "iowa", "IOW-0001", "study", 0)
    assert a == b and UID(a).is_valid and len(a) <= 64
    assert make_uid(1, "iowa", "IOW-0001", "study", 0) != a


def test_patient_ids_are_opaque_and_unique():
    ids = patient_ids(np.random.default_rng(0), "IOW", 500)
    assert len(set(ids)) == 500
    assert all(re.fullmatch(r"IOW-\d{4}", i) for i in ids)
    numbers = [int(i.split("-")[1]) for i in ids]
    assert numbers != sorted(numbers)  # not sequential
    assert patient_ids(np.random.default_rng(0), "IOW", 500) == ids
    big = patient_ids(np.random.default_rng(0), "X", 5000)
    assert len(set(big)) == 5000 and all(re.fullmatch(r"X-\d{5}", i) for i in big)


@pytest.mark.parametrize(
    ("layout", "pattern", "depth"),
    [
        ("nested_random", r"[0-9A-F]{10}/[0-9A-F]{8}/IM\d{6}", 3),
        ("flat_random", r"[0-9A-F]{20}\.dcm", 1),
        ("patient_study_series", r"P-1/20200131-[0-9A-F]{6}/SE002/IMG\d{5}\.dcm", 4),
    ],
)
def test_file_layouts_are_shuffled(layout, pattern, depth):
    names = series_file_names(
        np.random.default_rng(1),
        layout,
        60,
        patient_id="P-1",
        study_date="20200131",
        series_number=2,
        study_token="0123456789",
    )
    assert len(set(names)) == 60
    assert all(re.fullmatch(pattern, n) and n.count("/") == depth - 1 for n in names)
    if layout != "flat_random":
        numbers = [int(re.findall(r"\d+", n.rsplit("/", 1)[1])[0]) for n in names]
        assert numbers != sorted(numbers)
    with pytest.raises(ValueError, match="layout"):
        series_file_names(
            np.random.default_rng(1),
            "bad",
            3,
            patient_id="P",
            study_date="x",
            series_number=1,
            study_token="0" * 10,
        )
