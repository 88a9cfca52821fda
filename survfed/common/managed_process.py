"""A long-running child process in its own process group, with a log file and clean stop.

Used for ``flower-superlink`` and ``flower-supernode``: both spawn grandchildren
(SuperExec, ServerApp/ClientApp processes), so stopping signals the whole process group:
SIGTERM first (Flower's handlers shut down gracefully), SIGKILL after a grace period. Some
grandchildren leave the group (Flower starts SuperExec in a session of its own, and Ray's agents
under a simulation outlive their raylet), so :meth:`ManagedProcess.stop` also remembers every
descendant before signalling and stops those that are still there afterwards (Linux ``/proc``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for Flower children: this interpreter's ``bin`` first on PATH.

    Flower starts ``flower-superexec``, ``flwr-serverapp`` and ``flwr-clientapp`` by name,
    so they must resolve to the same installation as the running survfed.
    """
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


def _proc_stat(pid: int) -> tuple[int, str, int] | None:
    """``(parent pid, state, start time in clock ticks)`` of ``pid`` from ``/proc``, or
    ``None`` when it is gone (or there is no ``/proc``)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # the name may hold spaces and parentheses
    return int(fields[1]), fields[0], int(fields[19])


def descendants(pid: int) -> list[tuple[int, int]]:
    """Every live descendant of ``pid`` as ``(pid, start time)``; empty without ``/proc``.

    The start time tells a descendant from a later process that got its recycled pid.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if stat is not None and stat[1] != "Z":
            children.setdefault(stat[0], []).append((int(entry.name), stat[2]))
    out: list[tuple[int, int]] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child[0])
    return out


def _still_there(processes: Sequence[tuple[int, int]]) -> list[int]:
    alive = []
    for pid, started in processes:
        stat = _proc_stat(pid)
        if stat is not None and stat[1] != "Z" and stat[2] == started:
            alive.append(pid)
    return alive


def _signal_each(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


class ManagedProcess:
    """Start ``argv`` in a new session; stdout+stderr go to ``log_file``.

    Use as a context manager: the process group is stopped on exit, including on
    exceptions and Ctrl-C (``KeyboardInterrupt`` unwinds through ``__exit__``).
    """

    def __init__(
        self,
        argv: Sequence[str],
        log_file: str | Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        name: str = "process",
    ) -> None:
        if not argv:
            raise ValueError("argv must name a program")
        self.argv = [str(a) for a in argv]
        self.log_file = Path(log_file)
        self.env = dict(env) if env is not None else child_env()
        self.cwd = Path(cwd) if cwd is not None else None
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """Process id (also the process-group id), or ``None`` before :meth:`start`."""
        return self.proc.pid if self.proc is not None else None

    def start(self) -> ManagedProcess:
        """Start the process (once)."""
        if self.proc is not None:
            raise RuntimeError(f"{self.name} already started (pid {self.proc.pid})")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        return self

    def is_running(self) -> bool:
        """Whether the main process is still alive."""
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> int | None:
        """Exit status of the main process, ``None`` while it runs."""
        return None if self.proc is None else self.proc.poll()

    def log_text(self, tail_chars: int | None = None) -> str:
        """The log so far (the last ``tail_chars`` characters if given)."""
        if not self.log_file.exists():
            return ""
        text = self.log_file.read_text(errors="replace")
        return text[-tail_chars:] if tail_chars else text

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _group_alive(self) -> bool:
        if self.proc is None:
            return False
        try:
            os.killpg(self.proc.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM the process group and every descendant that left it, SIGKILL what is left
        after ``grace_s`` seconds.

        Returns the main process's exit status (``None`` if it was never started).
        """
        if self.proc is None:
            return None
        tree = descendants(self.proc.pid)
        self._signal_group(signal.SIGTERM)
        _signal_each(_still_there(tree), signal.SIGTERM)  # those that left the group too
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            self.proc.poll()
            if not self._group_alive() and not _still_there(tree):
                break
            time.sleep(0.1)
        if self._group_alive():
            self._signal_group(signal.SIGKILL)
        _signal_each(_still_there(tree), signal.SIGKILL)
        try:
            return self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None

    def __enter__(self) -> ManagedProcess:
        if self.proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
