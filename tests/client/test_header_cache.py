"""The DICOM header cache: unchanged files are not read again, changed ones are, and a broken
cache never changes what the catalogue says."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
import warnings
from pathlib import Path

import pytest

import survfed.client.header_cache as hc
from survfed.client.catalogue import catalogue_site
from survfed.common.imaging.dicom_read import DicomHeader, DicomReadError, read_header


@pytest.fixture(scope="module")
def site_template(tmp_path_factory) -> Path:
    from survfed.common.synth.cohort import make_cohort

    root = tmp_path_factory.mktemp("headers")
    make_cohort(root / "c", {"iowa": 3}, seed=2041, progress=False)
    return root / "c" / "iowa"


@pytest.fixture
def site(site_template: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(site_template, tmp_path / "iowa"))


@pytest.fixture
def reads(monkeypatch) -> list[Path]:
    """Every file whose header is actually read from disk."""
    seen: list[Path] = []

    def counting(path):
        seen.append(Path(path))
        return read_header(path)

    monkeypatch.setattr(hc, "read_header", counting)
    return seen


def _files(site: Path) -> list[Path]:
    return sorted(p for p in (site / "dicom").rglob("*") if p.is_file())


def _summary(catalogue) -> tuple:
    return (
        sorted((p.patient_id, p.series_instance_uid) for p in catalogue.usable_patients),
        [(s.series_instance_uid, s.n_files, s.status, s.shape) for s in catalogue.series],
        sorted((p.patient_id, p.reason) for p in catalogue.problems),
    )


def test_second_run_reads_no_header_and_gives_the_same_catalogue(site, tmp_path, reads):
    cache = tmp_path / "cache" / hc.CACHE_FILE
    first = catalogue_site(site, header_cache=cache)
    n = len(_files(site))
    assert len(reads) == n > 30 and cache.is_file()
    reads.clear()
    second = catalogue_site(site, header_cache=cache)
    assert reads == []
    assert _summary(second) == _summary(first) == _summary(catalogue_site(site))
    assert len(first.usable_patients) == 3


def test_cached_headers_equal_fresh_ones_in_order(site, tmp_path):
    files = _files(site)
    cache = tmp_path / hc.CACHE_FILE
    fresh = hc.read_headers(files, threads=1)
    hc.read_headers(files, cache=cache, threads=4)  # fills the cache on 4 threads
    cached = hc.read_headers(files, cache=cache)
    assert fresh == cached == [read_header(f) for f in files]
    assert all(isinstance(h, DicomHeader) for h in cached)
    assert isinstance(cached[0].image_type, tuple) and isinstance(cached[0].position, tuple)


def test_a_changed_file_is_read_again_a_removed_one_forgotten(site, tmp_path, reads):
    files = _files(site)
    cache = tmp_path / hc.CACHE_FILE
    hc.read_headers(files, cache=cache)
    reads.clear()
    changed, removed = files[3], files[7]
    st = os.stat(changed)
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    removed.unlink()
    out = hc.read_headers(files, cache=cache)
    assert reads == [changed]
    assert isinstance(out[7], DicomReadError) and "cannot read file" in out[7].reason
    with sqlite3.connect(cache) as conn:
        kept = {row[0] for row in conn.execute("SELECT path FROM headers")}
    assert os.path.abspath(removed) not in kept and os.path.abspath(changed) in kept
    assert len(kept) == len(files) - 1


def test_unreadable_files_are_reported_every_time_and_never_cached(site, tmp_path, reads):
    junk = site / "dicom" / "notes.txt"
    junk.write_text("not a DICOM file\n")
    cache = tmp_path / hc.CACHE_FILE
    for _ in range(2):
        reads.clear()
        out = hc.read_headers([junk, *_files(site)[:2]], cache=cache)
        assert isinstance(out[0], DicomReadError) and out[0].reason == "not a DICOM file"
    assert reads == [junk]  # the two good files came from the cache the second time


def test_a_corrupt_cache_is_rebuilt_with_a_warning(site, tmp_path, reads):
    files = _files(site)[:5]
    cache = tmp_path / hc.CACHE_FILE
    cache.write_bytes(b"garbage, not SQLite" * 100)
    with pytest.warns(UserWarning, match="unreadable .*rebuilding"):
        first = hc.read_headers(files, cache=cache)
    assert first == [read_header(f) for f in files]
    reads.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hc.read_headers(files, cache=cache) == first
    assert reads == []


def test_a_cache_of_another_version_is_dropped(site, tmp_path, reads, monkeypatch):
    files = _files(site)[:4]
    cache = tmp_path / hc.CACHE_FILE
    hc.read_headers(files, cache=cache)
    monkeypatch.setattr(hc, "CACHE_VERSION", "2-other")
    reads.clear()
    hc.read_headers(files, cache=cache)
    assert reads == files


def test_a_missing_cache_folder_that_cannot_be_made_warns_once(site, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match="cannot be used") as caught:
        out = hc.read_headers(_files(site)[:3], cache=blocker / hc.CACHE_FILE)
    assert len(caught) == 1 and all(isinstance(h, DicomHeader) for h in out)


def _threads_used(monkeypatch, delay_s: float = 0.0) -> set[int]:
    """Threads that read a header; ``delay_s`` makes each read wait first, as a slow share."""
    used: set[int] = set()

    def reading(path):
        used.add(threading.get_ident())
        if delay_s:
            time.sleep(delay_s)
        return read_header(path)

    monkeypatch.setattr(hc, "read_header", reading)
    return used


@pytest.mark.skipif(
    not os.path.exists("/proc/thread-self/schedstat"),
    reason="needs Linux scheduler statistics (else waiting for a busy core looks like I/O)",
)
def test_files_that_come_fast_are_read_on_one_thread(site, monkeypatch):
    files = _files(site)
    assert len(files) > hc.PROBE_FILES
    used = _threads_used(monkeypatch)
    assert hc.read_headers(files) == [read_header(f) for f in files]
    assert used == {threading.get_ident()}


def test_files_that_keep_the_reader_waiting_are_read_on_threads(site, monkeypatch):
    files = _files(site)
    used = _threads_used(monkeypatch, delay_s=0.01)  # 10 ms a file: a network share
    assert hc.read_headers(files) == [read_header(f) for f in files]  # same order
    assert len(used - {threading.get_ident()}) > 1


def test_the_blocked_clock_tells_waiting_from_computing():
    with hc._BlockedClock() as waiting:
        time.sleep(0.2)
    with hc._BlockedClock() as computing:
        end = time.thread_time() + 0.2
        while time.thread_time() < end:
            pass
    assert waiting.blocked_fraction > 0.8
    if os.path.exists("/proc/thread-self/schedstat"):  # else waiting for a busy core counts
        assert computing.blocked_fraction < 0.3


def test_threads_must_be_positive(site):
    with pytest.raises(ValueError, match="threads must be at least 1"):
        hc.read_headers(_files(site)[:1], threads=0)


def test_the_catalogue_lists_a_broken_cache_as_a_warning(site, tmp_path):
    cache = tmp_path / hc.CACHE_FILE
    cache.write_bytes(b"\x00" * 4096)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said in the catalogue, not as a Python warning
        catalogue = catalogue_site(site, header_cache=cache)
    notes = [p for p in catalogue.problems if p.path == str(cache)]
    assert [(n.severity, "rebuilding" in n.reason) for n in notes] == [("warning", True)]
    assert len(catalogue.usable_patients) == 3


def test_files_that_come_fast_can_be_read_on_processes(site, monkeypatch, reads):
    """``processes=2`` on one thread: the same headers and errors in the same order, every
    file counted once, and none read in this process (the workers read them)."""
    monkeypatch.setattr(hc, "PROCESS_MIN_FILES", 10)
    (site / "dicom" / "junk.txt").write_text("not DICOM")
    files = _files(site)
    done: list[int] = []
    got = hc.read_headers(files, threads=1, processes=2, on_file=lambda: done.append(1))
    assert reads == [] and len(done) == len(files)
    for path, header in zip(files, got, strict=True):
        if path.name == "junk.txt":
            assert isinstance(header, DicomReadError) and header.path == path
            assert "not a DICOM file" in header.reason
        else:
            assert header == read_header(path)
    serial = hc.read_headers(files, threads=1)
    assert [h.reason if isinstance(h, DicomReadError) else h for h in got] == [
        h.reason if isinstance(h, DicomReadError) else h for h in serial
    ]
    with pytest.raises(ValueError, match="processes must be at least 1"):
        hc.read_headers(files[:1], processes=0)


def test_the_catalogue_reads_on_worker_processes(site, tmp_path, monkeypatch):
    monkeypatch.setattr(hc, "PROCESS_MIN_FILES", 10)
    cache = tmp_path / hc.CACHE_FILE
    assert _summary(catalogue_site(site, header_cache=cache, workers=2)) == _summary(
        catalogue_site(site)
    )
    assert cache.is_file()  # what the workers read is cached
