"""What the cluster has committed (weights, adapters), to replay on a replica that comes
back (a restarted Ray actor starts from the checkpoint), so all replicas keep one version."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AdminCall:
    """One admin request as sent to a replica: path (with query), body bytes, content type."""

    path: str
    body: bytes
    content_type: str
    query: tuple[tuple[str, str], ...] = ()

    def with_version(self, version: int) -> AdminCall:
        """The same update pinned to policy `version` (a replica replaying it must land on
        the cluster's version, not on its own next one)."""
        if self.content_type.split(";")[0].strip().lower() != "application/octet-stream":
            body = json.loads(self.body or b"{}")
            body["version"] = version
            return AdminCall(self.path, json.dumps(body).encode(), self.content_type, self.query)
        query = tuple((k, v) for k, v in self.query if k != "version") + (
            ("version", str(version)),
        )
        return AdminCall(self.path, self.body, self.content_type, query)


@dataclass
class CommittedState:
    """The last committed weight update (with the version it set) and the loaded adapters
    (by name, in load order)."""

    weights: AdminCall | None = None
    version: int | None = None
    adapters: dict[str, AdminCall] = field(default_factory=dict)

    def replay_calls(self) -> list[AdminCall]:
        """The calls that bring a fresh replica to the committed state, in order."""
        calls: list[AdminCall] = []
        if self.weights is not None:
            pinned = self.version is not None
            calls.append(self.weights.with_version(self.version) if pinned else self.weights)
        return calls + list(self.adapters.values())

    def empty(self) -> bool:
        return self.weights is None and not self.adapters


def json_call(path: str, body: dict[str, Any]) -> AdminCall:
    return AdminCall(path, json.dumps(body).encode(), "application/json")
