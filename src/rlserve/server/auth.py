"""Who may call which route: one dependency, `Access`, for every router.

The OpenAI and RL routes need the API key as bearer token when the server has one. The
admin routes need the admin key (or else the API key); with neither key they answer
loopback clients only, unless `allow_open_admin` opens them to every client.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request

from rlserve.server.errors import APIError

if TYPE_CHECKING:
    from rlserve.server.config import ServerConfig


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


@dataclass(frozen=True)
class Access:
    """A FastAPI dependency: `Authorization: Bearer <key>` when `key` is set (401, naming
    the key as `key_name`), else loopback clients only when `loopback_only` (403)."""

    key: str | None = None
    key_name: str = "API key"
    loopback_only: bool = False

    @property
    def checks(self) -> bool:
        """Whether it refuses anyone (else a router need not depend on it)."""
        return self.key is not None or self.loopback_only

    async def __call__(self, request: Request) -> None:
        if self.key is not None:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, f"Bearer {self.key}".encode()):
                name = self.key_name
                raise APIError(
                    401, f"missing or wrong {name} (send 'Authorization: Bearer <{name}>')"
                )
            return
        host = request.client.host if request.client else None
        if self.loopback_only and not is_loopback(host):
            raise APIError(
                403,
                "admin routes only answer loopback clients when the server has "
                "no --admin-key or --api-key",
            )


def api_access(config: ServerConfig) -> Access:
    """The OpenAI and RL routes: the API key, if the server has one."""
    return Access(config.api_key or None)


def admin_access(config: ServerConfig) -> Access:
    """The admin routes: the admin key (or the API key) as bearer token, else loopback
    clients only, else (`allow_open_admin`) everyone."""
    if config.admin_key:
        return Access(config.admin_key, "admin key")
    if config.api_key:
        return Access(config.api_key)
    return Access(loopback_only=not config.allow_open_admin)
