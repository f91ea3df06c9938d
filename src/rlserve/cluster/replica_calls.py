"""One admin HTTP call to one replica, and the result every fan-out collects."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from rlserve.cluster.replica import Replica

ADMIN_TIMEOUT_S = 300.0  # a weight update reads and checks a whole checkpoint
# Set anew for each call (hop-by-hop, length and credentials), never passed on.
DROPPED_HEADERS = {
    "host",
    "content-length",
    "content-type",
    "authorization",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "expect",
}
Query = Sequence[tuple[str, str]]


@dataclass
class CallResult:
    """What one replica answered (status 0: it could not be reached)."""

    replica: Replica
    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def error(self) -> str:
        """The replica's error message (OpenAI's shape, or the text it sent)."""
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return str(self.body["error"].get("message"))
        if isinstance(self.body, dict) and "message" in self.body:
            return str(self.body["message"])
        return str(self.body)[:500]

    def row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"status": self.status, "dialect": self.replica.dialect}
        row.update({"error": self.error} if not self.ok else {"reply": self.body})
        return row


def forwarded(headers: Mapping[str, str], admin: Mapping[str, str]) -> dict[str, str]:
    """The caller's headers worth passing on, with the cluster's own admin credentials
    (the router already checked the caller's)."""
    kept = {k: v for k, v in headers.items() if k.lower() not in DROPPED_HEADERS}
    return {**kept, **admin}


async def call(
    client: httpx.AsyncClient,
    replica: Replica,
    method: str,
    path: str,
    *,
    content: bytes = b"",
    content_type: str | None = None,
    headers: Mapping[str, str],
    query: Query = (),
) -> CallResult:
    """`method path` on `replica`; never raises for transport errors (status 0)."""
    if replica.url is None:
        return CallResult(replica, 0, "the replica has no URL (restarting)")
    sent = dict(headers)
    if content_type:
        sent["Content-Type"] = content_type
    try:
        reply = await client.request(
            method,
            replica.url + path,
            content=content or None,
            params=list(query) or None,  # an empty list would drop a query in `path`
            headers=sent,
            timeout=ADMIN_TIMEOUT_S,
        )
    except httpx.HTTPError as exc:
        return CallResult(replica, 0, f"{type(exc).__name__}: {exc}")
    try:
        body: Any = reply.json()
    except ValueError:
        body = reply.text
    return CallResult(replica, reply.status_code, body)
