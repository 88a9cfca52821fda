"""Spawned worker processes that stop quietly and promptly on Ctrl-C.

A terminal sends Ctrl-C (SIGINT) to the whole foreground process group, so every worker gets it
too. Left alone, each worker prints a ``KeyboardInterrupt`` traceback (dozens of lines per worker)
and the pool, on leaving its ``with`` block, still runs every task not yet started. Here each
worker turns SIGINT into ``SystemExit``, which ends its current task (its ``finally`` blocks run,
so temporary files are removed) and exits without a traceback, and the parent, which gets its
own ``KeyboardInterrupt``, drops the tasks not started.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from types import FrameType

__all__ = ["worker_pool"]

_INTERRUPTED = 130  # the shell's exit status after SIGINT


def _exit_on_ctrl_c(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(_INTERRUPTED)


def _install_handler() -> None:
    """Worker initializer."""
    signal.signal(signal.SIGINT, _exit_on_ctrl_c)


@contextmanager
def worker_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A ``ProcessPoolExecutor`` of ``workers`` spawned processes (see the module docstring).

    Spawned, not forked: workers start from a fresh interpreter, safe with threads and CUDA in
    the parent; a script that uses this needs an ``if __name__ == "__main__":`` guard.
    """
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_install_handler,
    )
    try:
        yield pool
    except BaseException:
        pool.shutdown(cancel_futures=True)
        raise
    finally:
        pool.shutdown()
