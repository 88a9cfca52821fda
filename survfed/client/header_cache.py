"""Read a site's DICOM headers on a thread or process pool, keeping them between runs.

Cataloguing a site reads one header per file: a few milliseconds each from a local disk, tens
from a network share, so a site of 1,000 patients × 300 slices spends many minutes before every
run just to learn what it already knew. :func:`read_headers` therefore

* reads the first files one by one and watches where the time goes: when most of it is spent
  blocked on storage (a network share, a cold disk), the rest is read on several threads so the
  waits overlap; when the files come fast (a local SSD, the page cache) the time is Python's own
  parsing, threads only queue for the interpreter lock (measured: about twice as slow), and the
  rest is read one by one, or on worker processes when the caller allows several
  (``processes``) and there are enough files to pay for starting them;
* keeps what it read in an SQLite file in the site's cache (``dicom-headers.sqlite``), keyed by
  each file's absolute path, size and modification time (nanoseconds), as ``make`` and
  ``rsync`` decide that a file changed. A file whose size or time changed is read again; a file
  that is gone is forgotten; headers that failed to read are never kept (the next run tries
  again and reports the problem again).

The cache holds what the catalogue needs from each header (identifiers, geometry, rescale, the
pixel-data check), not images, and stays in the site's cache folder like everything else there.
A cache file that cannot be opened or is corrupt is replaced with a warning; one that cannot be
written (a read-only folder) is skipped with a warning. ``CACHE_VERSION`` changes, and with it
every key, when :class:`~survfed.common.imaging.dicom_read.DicomHeader` or the way it is read
changes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from survfed.common.imaging.dicom_read import DicomHeader, DicomReadError, read_header
from survfed.common.worker_pool import worker_pool

__all__ = ["CACHE_FILE", "CACHE_VERSION", "read_headers"]

CACHE_FILE = "dicom-headers.sqlite"
"""Name of the header cache in a site's cache folder."""

_FIELDS = tuple(f.name for f in dataclasses.fields(DicomHeader))
CACHE_VERSION = "3-" + hashlib.sha256(",".join(_FIELDS).encode()).hexdigest()[:12]
"""Bumped by hand when reading changes; the hash follows the fields of ``DicomHeader``.

2: the pixel-data check walks the fragments of compressed pixel data (files with padding after
them were marked truncated by 1) and skips deflated files. 3: an empty (present but
blank) SOPClassUID or SOPInstanceUID is taken from the file meta.
"""

_TUPLES = {"image_type", "orientation", "position", "pixel_spacing"}

DEFAULT_THREADS = 8
"""Files read at once when reading waits on storage: enough to hide a network share's latency,
few enough for a laptop."""

PROBE_FILES = 32
"""Files read one by one before deciding whether threads would help."""

BLOCKED_FRACTION = 0.5
"""Threads are used when the probe spent more than this share of its time blocked (not running
and not waiting for a core)."""

PROCESS_MIN_FILES = 1000
"""Files left after the probe from which worker processes are started (when allowed): a
worker takes about 0.4 s to start (spawn, importing pydicom), about 500 headers' time."""

PROCESS_CHUNK_FILES = (32, 512)
"""Files per task sent to a worker (at least, at most): about eight tasks per worker, so the
progress bar moves and a slow worker does not hold the others up."""


def _encode(header: DicomHeader) -> str:
    data = {name: getattr(header, name) for name in _FIELDS}
    data["path"] = str(header.path)
    return json.dumps(data, separators=(",", ":"))


def _decode(text: str) -> DicomHeader:
    data = json.loads(text)
    data["path"] = Path(data["path"])
    for name in _TUPLES:
        if data[name] is not None:
            data[name] = tuple(data[name])
    if data["frame_positions"] is not None:
        data["frame_positions"] = tuple(tuple(p) for p in data["frame_positions"])
    return DicomHeader(**data)


class _Store:
    """The SQLite file; every method degrades to "no cache" with one warning."""

    def __init__(self, path: Path, warn: Callable[[str], object]) -> None:
        self.path = path
        self.warn = warn
        self.conn: sqlite3.Connection | None = None
        existed = path.exists()
        try:
            self.conn = self._open()
        except (sqlite3.Error, OSError) as exc:
            if not existed:
                self._give_up(exc)
                return
            self.warn(f"DICOM header cache {path} is unreadable ({exc}); rebuilding it")
            self._remove()
            try:
                self.conn = self._open()
            except (sqlite3.Error, OSError) as exc2:
                self._give_up(exc2)

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            row = conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
            if row is None or row[0] != CACHE_VERSION:
                with conn:
                    conn.execute("DROP TABLE IF EXISTS headers")
                    conn.execute(
                        "INSERT OR REPLACE INTO meta VALUES ('version', ?)", (CACHE_VERSION,)
                    )
            conn.execute(
                "CREATE TABLE IF NOT EXISTS headers "
                "(path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, data TEXT)"
            )
            conn.execute("SELECT count(*) FROM headers").fetchone()  # fails when corrupt
        except BaseException:
            conn.close()
            raise
        return conn

    def _remove(self) -> None:
        for suffix in ("", "-journal", "-wal", "-shm"):
            try:
                os.remove(f"{self.path}{suffix}")
            except OSError:
                pass

    def _give_up(self, exc: BaseException) -> None:
        self.warn(f"DICOM header cache {self.path} cannot be used ({exc}); reading every header")
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def load(self) -> dict[str, tuple[int, int, str]]:
        if self.conn is None:
            return {}
        try:
            rows = self.conn.execute("SELECT path, size, mtime_ns, data FROM headers").fetchall()
        except sqlite3.Error as exc:
            self._give_up(exc)
            return {}
        return {p: (s, m, d) for p, s, m, d in rows}

    def save(self, new: list[tuple[str, int, int, str]], gone: list[str]) -> None:
        if self.conn is None or not (new or gone):
            return
        try:
            with self.conn:
                self.conn.executemany("DELETE FROM headers WHERE path = ?", [(p,) for p in gone])
                self.conn.executemany("INSERT OR REPLACE INTO headers VALUES (?, ?, ?, ?)", new)
        except sqlite3.Error as exc:
            self._give_up(exc)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class _BlockedClock:
    """Share of a stretch of this thread's time spent blocked (on storage), not computing.

    Blocked time is wall time less CPU time less time spent runnable but waiting for a core
    (``/proc/thread-self/schedstat`` on Linux), so busy cores are not taken for a slow disk.
    Where the scheduler statistics are missing, the run-queue wait counts as blocked.
    """

    def __enter__(self) -> _BlockedClock:
        self._wall = time.perf_counter()
        self._cpu = time.thread_time()
        self._queued = _run_queue_s()
        self.blocked_fraction = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._wall
        cpu = time.thread_time() - self._cpu
        queued = _run_queue_s() - self._queued
        if wall > 0:
            self.blocked_fraction = max(0.0, wall - cpu - queued) / wall


def _run_queue_s() -> float:
    """Seconds this thread has waited runnable for a core (0 where Linux does not say)."""
    try:
        with open("/proc/thread-self/schedstat", encoding="ascii") as fh:
            return int(fh.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def _read_one(path: Path) -> DicomHeader | DicomReadError:
    """The file's header, or the error saying why it cannot be read."""
    try:
        return read_header(path)
    except DicomReadError as exc:
        return exc


def _read_chunk(paths: list[Path]) -> list[DicomHeader | DicomReadError]:
    """A worker process's task: the headers of ``paths``, in order."""
    return [_read_one(path) for path in paths]


def _read_on_processes(
    paths: list[Path], processes: int, on_file: Callable[[], object] | None
) -> list[DicomHeader | DicomReadError]:
    """:func:`_read_chunk` over ``paths`` on ``processes`` spawned workers, in order."""
    lo, hi = PROCESS_CHUNK_FILES
    size = max(lo, min(hi, len(paths) // (8 * processes) or lo))
    chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
    results: list[list[DicomHeader | DicomReadError]] = [[] for _ in chunks]
    with worker_pool(processes) as pool:
        futures = {pool.submit(_read_chunk, chunk): k for k, chunk in enumerate(chunks)}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            if on_file:
                for _ in results[futures[future]]:
                    on_file()
    return [header for chunk in results for header in chunk]


def read_headers(
    files: Sequence[Path],
    *,
    cache: Path | None = None,
    threads: int | None = None,
    processes: int = 1,
    on_file: Callable[[], object] | None = None,
    warn: Callable[[str], object] | None = None,
) -> list[DicomHeader | DicomReadError]:
    """The header of every file, in the order of ``files``.

    Args:
        files: DICOM file paths.
        cache: the SQLite header cache (see the module docstring); ``None`` reads every file.
        threads: files read at once (at least 1); ``None`` (default) decides from the first
            :data:`PROBE_FILES` files: :data:`DEFAULT_THREADS` when reading them was mostly
            waiting on storage, else one.
        processes: worker processes allowed (at least 1). With more than one, when reading
            is on one thread (``threads`` 1, given or decided), the files are read on that
            many spawned processes instead, if at least :data:`PROCESS_MIN_FILES` are left
            (after the probe); called from a script, that script needs an
            ``if __name__ == "__main__":`` guard.
        on_file: called once per file done (a progress bar's update).
        warn: receives the message when the cache is rebuilt or cannot be used (default:
            :func:`warnings.warn`).

    Returns:
        per file its :class:`DicomHeader`, or the :class:`DicomReadError` saying why it could
        not be read (a file that vanished or cannot be opened included).
    """
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if processes < 1:
        raise ValueError(f"processes must be at least 1, got {processes}")
    if warn is None:

        def warn(message: str) -> None:
            warnings.warn(message, stacklevel=3)

    store = _Store(cache, warn) if cache is not None else None
    known = store.load() if store is not None else {}
    out: list[DicomHeader | DicomReadError | None] = [None] * len(files)
    todo: list[tuple[int, str, int, int]] = []
    seen: set[str] = set()
    for i, path in enumerate(files):
        key = os.path.abspath(path)
        try:
            st = os.stat(path)
        except OSError as exc:  # gone: forgotten below
            out[i] = DicomReadError(path, f"cannot read file: {exc.strerror or exc}")
            if on_file:
                on_file()
            continue
        seen.add(key)
        hit = known.get(key)
        if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            try:
                out[i] = dataclasses.replace(_decode(hit[2]), path=Path(path))
            except (ValueError, TypeError, KeyError):
                out[i] = None  # an unreadable row: read the file again
            else:
                if on_file:
                    on_file()
                continue
        todo.append((i, key, st.st_size, st.st_mtime_ns))

    def one(item: tuple[int, str, int, int]) -> DicomHeader | DicomReadError:
        try:
            return _read_one(files[item[0]])
        finally:
            if on_file:
                on_file()

    new: list[tuple[str, int, int, str]] = []
    if todo:
        results: list[DicomHeader | DicomReadError] = []
        if threads is None:
            probe = todo[:PROBE_FILES]
            with _BlockedClock() as clock:
                results = [one(item) for item in probe]
            threads = DEFAULT_THREADS if clock.blocked_fraction > BLOCKED_FRACTION else 1
        rest = todo[len(results) :]
        if threads == 1 and processes > 1 and len(rest) >= PROCESS_MIN_FILES:
            results += _read_on_processes([files[item[0]] for item in rest], processes, on_file)
        elif threads == 1 or len(rest) <= 1:
            results += [one(item) for item in rest]
        else:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                results += list(pool.map(one, rest))
        for (i, key, size, mtime), result in zip(todo, results, strict=True):
            out[i] = result
            if isinstance(result, DicomHeader):
                new.append((key, size, mtime, _encode(result)))
    if store is not None:
        store.save(new, [k for k in known if k not in seen])
        store.close()
    return out  # type: ignore[return-value]
