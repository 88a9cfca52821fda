"""``ManagedProcess.stop``: the whole tree goes, including grandchildren that left the group."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from survfed.common.managed_process import ManagedProcess, descendants

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc")

# A parent that starts a grandchild in a session of its own which ignores SIGTERM (as Flower's
# SuperExec leaves the SuperLink's group, and Ray's agents outlive their raylet).
PARENT = textwrap.dedent(
    """
    import subprocess, sys, time
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"],
        start_new_session=True,
    )
    open(sys.argv[1], "w").write(str(child.pid))
    time.sleep(600)
    """
)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_stop_also_ends_a_grandchild_in_another_session(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    proc = ManagedProcess([sys.executable, "-c", PARENT, str(pid_file)], tmp_path / "log.txt")
    proc.start()
    deadline = time.monotonic() + 30
    while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    assert grandchild in [pid for pid, _ in descendants(proc.pid)]
    assert os.getpgid(grandchild) != proc.pid  # not reachable through the process group
    started = time.monotonic()
    proc.stop(grace_s=1.0)
    assert time.monotonic() - started < 5
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)
    assert not proc.is_running()
