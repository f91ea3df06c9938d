"""`RouterConfig`: how the router's own HTTP server runs (the cluster is `ClusterConfig`)."""

from __future__ import annotations

from dataclasses import dataclass

from rlserve._checks import ParamError, check_int, check_positive_int
from rlserve.server.auth import is_loopback
from rlserve.server.config import LOG_LEVELS


@dataclass
class RouterConfig:
    """The router's bind address, body limits and admin exposure.

    `max_request_bytes`: largest body of a proxied route (more gets a 413, as a replica
    would answer). `max_update_bytes`: largest `/update_weights` or `/upload_adapter`
    body the router holds to fan out. `allow_open_admin`: as `rlserve serve`'s flag, needed
    to serve on a non-loopback host when the cluster has neither an api nor an admin key.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    allow_open_admin: bool = False
    max_request_bytes: int = 32 * 2**20
    max_update_bytes: int = 16 * 2**30
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ParamError("host", "host must be a non-empty address")
        check_int("port", self.port, minimum=0, maximum=65535)
        check_positive_int("max_request_bytes", self.max_request_bytes)
        check_positive_int("max_update_bytes", self.max_update_bytes)
        if not isinstance(self.allow_open_admin, bool):
            raise ParamError("allow_open_admin", "allow_open_admin must be a bool")
        self.log_level = str(self.log_level).upper()
        if self.log_level not in LOG_LEVELS:
            raise ParamError("log_level", f"log_level must be one of {LOG_LEVELS}")

    def check_exposure(self, api_key: str | None, admin_key: str | None) -> None:
        """Refuse (ValueError) admin routes open to other machines without a key."""
        if admin_key or api_key or self.allow_open_admin or is_loopback(self.host):
            return
        raise ParamError(
            "host",
            f"host {self.host!r} is reachable from other machines but the admin routes "
            "(weight updates, adapters, pause/abort) have no key: set --admin-key (or "
            "--api-key), or pass --allow-open-admin to leave them open to every client",
        )
