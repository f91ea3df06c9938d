"""Who may call which route: bearer tokens (the API key, the admin key) and the
loopback-only rule for admin routes on a server without keys."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from fastapi import Request

from rlserve.server.errors import APIError

if TYPE_CHECKING:
    from rlserve.server.config import ServerConfig

Guard = Callable[[Request], Awaitable[None]]


def is_loopback(host: str | None) -> bool:
    """Whether `host` (an address or "localhost") can only be reached from this machine."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False  # another host name: it may resolve to any interface
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def bearer_guard(key: str, what: str) -> Guard:
    """A dependency refusing requests without `Authorization: Bearer <key>` (401);
    `what` names the key in the message ("API key", "admin key")."""
    expected = f"Bearer {key}".encode()

    async def check(request: Request) -> None:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise APIError(401, f"missing or wrong {what} (send 'Authorization: Bearer <{what}>')")

    return check


def admin_guard(config: ServerConfig) -> Guard:
    """The dependency guarding the admin routes: the admin key (or the API key) as bearer
    token (401), else loopback clients only (403), else (`allow_open_admin`) nothing."""
    if config.admin_key:
        return bearer_guard(config.admin_key, "admin key")
    if config.api_key:
        return bearer_guard(config.api_key, "API key")
    if config.allow_open_admin:
        return _open_guard
    return _loopback_guard


async def _open_guard(request: Request) -> None:
    return None


async def _loopback_guard(request: Request) -> None:
    host = request.client.host if request.client else None
    if not is_loopback(host):
        raise APIError(
            403,
            "admin routes only answer loopback clients when the server has "
            "no --admin-key or --api-key",
        )
