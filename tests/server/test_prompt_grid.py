"""PromptGrid: the same send_and_receive contract as Flower's grid, with a short reply poll."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from survfed.server.prompt_grid import PromptGrid


class _SlowSites:
    """A stand-in for the SuperLink side: reply i becomes available ``delays[i]`` s after push."""

    def __init__(self, delays: list[float]) -> None:
        self.delays = delays
        self.pushed_at = 0.0
        self.pulls = 0

    def push_messages(self, messages):
        self.pushed_at = time.monotonic()
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, message_ids):
        self.pulls += 1
        now = time.monotonic() - self.pushed_at
        ready = [m for m in message_ids if now >= self.delays[int(m[1:])]]
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=m)) for m in ready]


def test_returns_soon_after_the_last_reply() -> None:
    sites = _SlowSites([0.1, 0.5])
    grid = PromptGrid(sites, poll_s=0.05)  # type: ignore[arg-type]
    t0 = time.monotonic()
    replies = list(grid.send_and_receive(["a", "b"], timeout=10))
    elapsed = time.monotonic() - t0
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1"]
    assert 0.5 <= elapsed < 0.8  # flwr 1.41's own grid would take up to 3 s longer


def test_timeout_returns_the_replies_that_came() -> None:
    sites = _SlowSites([0.0, 60.0])  # the second site never answers in time
    grid = PromptGrid(sites, poll_s=0.05)  # type: ignore[arg-type]
    t0 = time.monotonic()
    replies = list(grid.send_and_receive(["a", "b"], timeout=0.4))
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"]
    assert time.monotonic() - t0 < 1.0


def test_poll_interval_is_checked() -> None:
    with pytest.raises(ValueError, match="poll_s"):
        PromptGrid(_SlowSites([]), poll_s=0)  # type: ignore[arg-type]
