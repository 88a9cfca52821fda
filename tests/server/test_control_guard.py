"""Tests for survfed.server.control_guard's middleware (in-process ASGI, no sockets)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from survfed.server.control_guard import (
    ControlGuardMiddleware,
    install,
    is_public_path,
    parse_allow_list,
)


async def _inner(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _status(path: str, peer: str | None, allow: tuple[str, ...] = ("127.0.0.1", "::1")) -> int:
    sent: list[dict[str, Any]] = []

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "path": path, "client": (peer, 5555) if peer else None}
    asyncio.run(ControlGuardMiddleware(_inner, allow)(scope, receive, send))
    return int(sent[0]["status"])


@pytest.mark.parametrize(
    ("path", "peer", "status"),
    [
        ("/v1/control/start-run", "203.0.113.7", 403),
        ("/v1/control/register-node", "10.1.2.3", 403),
        ("/v1/runtime/acquire-task", "203.0.113.7", 403),
        ("/docs", "203.0.113.7", 403),
        ("/v1/control/start-run", None, 403),
        ("/v1/fleet/pull-messages", "203.0.113.7", 200),
        ("/health", "203.0.113.7", 200),
        ("/v1/control/start-run", "127.0.0.1", 200),
        ("/v1/runtime/acquire-task", "::1", 200),
        ("/v1/control/start-run", "::ffff:127.0.0.1", 200),
        ("/v1/control/start-run", "127.0.0.2", 403),
    ],
)
def test_only_fleet_and_health_are_public(path: str, peer: str | None, status: int) -> None:
    assert _status(path, peer) == status


def test_allow_list_parsing() -> None:
    assert parse_allow_list(" 127.0.0.1, ::1 ,") == frozenset({"127.0.0.1", "::1"})
    with pytest.raises(ValueError, match="not an IP"):
        parse_allow_list("localhost")
    with pytest.raises(ValueError, match="at least one"):
        parse_allow_list("")
    assert is_public_path("/v1/fleet/x") and not is_public_path("/v1/fleetx")


def test_install_prepends_the_guard() -> None:
    import flwr.superlink.main as superlink_main

    original = superlink_main._get_middleware
    try:
        install(["127.0.0.1"])
        install(["127.0.0.1"])  # idempotent
        stack = superlink_main._get_middleware()
        assert stack[0].cls is ControlGuardMiddleware
        assert sum(m.cls is ControlGuardMiddleware for m in stack) == 1
    finally:
        superlink_main._get_middleware = original
