"""Bring one replica up to the cluster's committed state before it is routed to."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from rlserve.cluster.committed import AdminCall
from rlserve.cluster.probes import rlserve_version
from rlserve.cluster.replica import Replica

if TYPE_CHECKING:
    from rlserve.cluster.replica_set import ReplicaSet

REPLAY_TIMEOUT_S = 300.0


async def replay_if_behind(
    rs: ReplicaSet, replica: Replica, client: httpx.AsyncClient, force: bool
) -> str | None:
    """Replay the committed calls on `replica` when it was restarted (`force`) or reports
    another policy version than the committed one; None when done, else why not. Only
    rlserve replicas are replayed (vLLM/SGLang ones got one-phase updates)."""
    committed = rs.committed
    if committed.empty() or replica.dialect != "rlserve" or replica.url is None:
        return None
    try:
        if not force and committed.version is not None:
            if await rlserve_version(client, replica.url) == committed.version:
                return None
        for call in committed.replay_calls():
            why = await send_call(client, replica.url, call, rs.admin_headers)
            if why is not None:
                return f"replaying {call.path}: {why}"
    except httpx.HTTPError as exc:
        return f"replaying the committed state: {type(exc).__name__}: {exc}"
    return None


async def send_call(
    client: httpx.AsyncClient, url: str, call: AdminCall, headers: dict[str, str]
) -> str | None:
    """POST `call` to the replica at `url`; None on a 2xx, else the status and body."""
    reply = await client.post(
        url + call.path,
        content=call.body,
        params=list(call.query) or None,
        headers={**headers, "Content-Type": call.content_type},
        timeout=REPLAY_TIMEOUT_S,
    )
    if reply.is_success:
        return None
    return f"{reply.status_code} {reply.text[:500]}"
