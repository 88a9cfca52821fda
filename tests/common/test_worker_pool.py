"""Ctrl-C on a pool of spawned workers, as a terminal sends it: to the whole process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from concurrent.futures import as_completed
    from survfed.common.worker_pool import worker_pool

    def task(folder, k):
        marker = Path(folder) / f"{k}.tmp"  # a temporary file the task removes when it ends
        marker.touch()
        try:
            time.sleep(0.3)
        finally:
            marker.unlink()
        return k

    if __name__ == "__main__":
        try:
            with worker_pool(2) as pool:
                futures = [pool.submit(task, sys.argv[1], k) for k in range(60)]
                for n, future in enumerate(as_completed(futures)):
                    future.result()
                    if n == 1:
                        print("running", flush=True)
            print("finished", flush=True)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(130)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="process groups and SIGINT are POSIX")
def test_ctrl_c_stops_the_pool_quietly_and_promptly(tmp_path: Path) -> None:
    script = tmp_path / "pool.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "running"
    start = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    # the 56 tasks not started are dropped (running them would take about 8 s more)
    assert time.monotonic() - start < 3.0
    assert proc.returncode == 130 and out.strip() == "interrupted"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err  # workers stay quiet
    assert list(tmp_path.glob("*.tmp")) == []  # the interrupted tasks' finally blocks ran
