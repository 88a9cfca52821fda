"""The export folder's index.html: failed patients first, then warned ones, pictures linked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from survfed.client.clinical import Problem
from survfed.client.preprocess_cache import PatientOutcome, SitePreprocessResult
from survfed.client.qc_index import INDEX_FILE, write_qc_index


def _result(export: Path | None, outcomes: list[PatientOutcome]) -> SitePreprocessResult:
    return SitePreprocessResult(
        site_dir=Path("/data/iowa"),
        folder=Path("cache"),
        fingerprint="29e8fc6e43ded337",
        device="cpu",
        workers=1,
        outcomes=tuple(outcomes),
        seconds=1.0,
        export_dir=export,
    )


def test_failed_then_warned_then_the_rest_with_their_pictures(tmp_path: Path) -> None:
    outcomes = [
        PatientOutcome("A-1", "built", "1.2", "dicom/A-1", lung_volume_ml=4200.0),
        PatientOutcome("B 2", "reused", "1.3", "dicom/B", lung_volume_ml=2500.0, warnings=("w",)),
        PatientOutcome("C-3", "failed", "1.4", "dicom/C", reason="no lung found: <1 L>"),
        PatientOutcome("D-4", "built", "1.5", "dicom/D", lung_volume_ml=3900.0),
    ]
    for stem in ("A-1", "B_2"):  # C-3 failed and D-4's picture could not be written
        (tmp_path / f"{stem}_qc.png").write_bytes(b"png")
    problems = [
        Problem("E-5", "dicom/E/IM1", "compressed pixel data truncated"),
        Problem(None, "notes.txt", "not a DICOM file", "warning"),
    ]
    page = write_qc_index(_result(tmp_path, outcomes), problems).read_text()
    assert (tmp_path / INDEX_FILE).is_file()
    rows = re.findall(r'<tr class="(\w+)"><td>([^<]+)</td>', page.split("<h2>Site")[0])
    assert rows == [("failed", "C-3"), ("warned", "B 2"), ("ok", "A-1"), ("ok", "D-4")]
    assert "no lung found: &lt;1 L&gt;" in page  # the reason, escaped
    assert page.count("<img") == 2 and '<img src="B_2_qc.png"' in page
    assert "<td>4.20</td>" in page and "1 failed, 1 with warnings" in page
    assert "Site problems found before preprocessing (2)" in page
    assert "<td>E-5</td><td>dicom/E/IM1</td><td>compressed pixel data truncated</td>" in page
    assert "<script" not in page and "http" not in page  # offline, nothing fetched


def test_needs_an_export_folder() -> None:
    with pytest.raises(ValueError, match="export_dir"):
        write_qc_index(_result(None, []))
