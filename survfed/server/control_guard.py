"""Keep the SuperLink's Control and Runtime APIs off the network; leave the Fleet API open.

Why this exists (flwr 1.41): ``flower-superlink`` serves the Fleet API (sites), the Control
API (``flwr run``, ``flwr supernode register``, ...) and the Runtime API (the ServerApp
process) on ONE HTTP listener, ``--host``/``--port``. The open-source SuperLink has no
account authentication on the Control API, so whoever can reach the Fleet port could also
submit runs (i.e. ship code to every site) and register nodes. There is no flag that binds
the Control API separately any more (``--control-api-address`` is deprecated and ignored).

This module runs ``flower-superlink`` in-process with one extra, outermost ASGI middleware:
requests whose peer address is not in an allow-list (default: loopback, i.e. the
coordinator host itself) may only reach ``/v1/fleet/*`` and ``/health``; everything else
gets ``403``. The middleware is installed through ``flwr.superlink.main._get_middleware``;
flwr is pinned to 1.41.0 and :func:`install` refuses to run on anything it does not
recognise, so an upgrade cannot silently drop the guard.

Usage (what :mod:`survfed.server.superlink` runs)::

    SURVFED_CONTROL_ALLOW=127.0.0.1,::1 \
        python -m survfed.server.control_guard <flower-superlink args>
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

ENV_ALLOW = "SURVFED_CONTROL_ALLOW"
DEFAULT_ALLOW = ("127.0.0.1", "::1")
PUBLIC_PATH_PREFIXES = ("/v1/fleet/",)
PUBLIC_PATHS = frozenset({"/health"})
SUPPORTED_FLWR = ("1.41.",)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def parse_allow_list(value: str | Iterable[str]) -> frozenset[str]:
    """Normalise a comma-separated string (or iterable) of IP addresses.

    Raises ``ValueError`` naming the entry that is not an IP address.
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    out: set[str] = set()
    for item in items:
        item = item.strip()
        if not item:
            continue
        try:
            out.add(str(ipaddress.ip_address(item)))
        except ValueError as err:
            raise ValueError(f"{ENV_ALLOW}: {item!r} is not an IP address") from err
    if not out:
        raise ValueError(f"{ENV_ALLOW} must name at least one IP address")
    return frozenset(out)


def is_public_path(path: str) -> bool:
    """Whether any peer may call ``path`` (the Fleet API and the health probe)."""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PATH_PREFIXES)


class ControlGuardMiddleware:
    """ASGI middleware: non-allow-listed peers reach only the Fleet API and ``/health``."""

    def __init__(self, app: ASGIApp, allow: Iterable[str] = DEFAULT_ALLOW) -> None:
        self.app = app
        self.allow = parse_allow_list(allow)

    def _peer_allowed(self, scope: Scope) -> bool:
        client = scope.get("client")
        if not client:
            return False
        try:
            peer = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
            peer = peer.ipv4_mapped
        return str(peer) in self.allow

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or is_public_path(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        if self._peer_allowed(scope):
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {
                "detail": "survfed: the Control and Runtime APIs only accept connections "
                "from the coordinator host"
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def install(allow: Iterable[str]) -> None:
    """Make every SuperLink app built in this process use :class:`ControlGuardMiddleware`."""
    import flwr
    import flwr.superlink.main as superlink_main
    from starlette.middleware import Middleware

    version = getattr(flwr, "__version__", "")
    original = getattr(superlink_main, "_get_middleware", None)
    if not version.startswith(SUPPORTED_FLWR) or original is None:
        raise RuntimeError(
            f"survfed's SuperLink guard supports flwr {SUPPORTED_FLWR}, found {version!r}; "
            "refusing to start a SuperLink whose Control API would be unprotected"
        )
    allow_set = parse_allow_list(allow)
    if getattr(original, "_survfed_guard", False):
        return

    def guarded() -> list[Middleware]:
        return [Middleware(ControlGuardMiddleware, allow=allow_set), *original()]

    guarded._survfed_guard = True  # type: ignore[attr-defined]
    superlink_main._get_middleware = guarded


def main(argv: list[str] | None = None) -> None:
    """Run ``flower-superlink`` with the guard; arguments are flower-superlink's own."""
    from flwr.superlink.cli import flower_superlink

    allow = os.environ.get(ENV_ALLOW, ",".join(DEFAULT_ALLOW))
    install(parse_allow_list(allow))
    sys.argv = ["flower-superlink", *(sys.argv[1:] if argv is None else argv)]
    flower_superlink()


if __name__ == "__main__":
    main()
