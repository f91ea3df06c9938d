"""Admin calls across every routable replica, so the cluster keeps one weight version.

Weight updates are two-phase on rlserve replicas: `/stage_weights` on all (read and
checked, nothing installed); if any refuses, the others' stages are discarded and the
reply names each failed replica; else `/commit_weights` on all. SGLang replicas get their
one-phase `/update_weights_from_disk` between the phases (`"two_phase": false`); vLLM
has no HTTP weight update, so a cluster with a vLLM replica refuses updates up front.
Adapters load on all; if any fails, they are unloaded from the replicas that loaded them.
Other admin calls (pause, resume, abort, ...) are broadcast.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx

from rlserve.cluster.committed import AdminCall
from rlserve.cluster.fanout_replies import (
    FanoutReply,
    adapter_name,
    failure,
    json_object,
    merged,
    no_replica,
)
from rlserve.cluster.replica import Replica
from rlserve.cluster.replica_calls import CallResult, Query, call, forwarded
from rlserve.server.errors import error_body

if TYPE_CHECKING:
    from rlserve.cluster.replica_set import ReplicaSet

UNLOAD_ROUTES = {
    "rlserve": ("/unload_adapter", "adapter_name"),
    "vllm": ("/v1/unload_lora_adapter", "lora_name"),
    "sglang": ("/unload_lora_adapter", "lora_name"),
}
UNLOAD_PATHS = {path for path, _ in UNLOAD_ROUTES.values()}


class VersionSplit(RuntimeError):
    """The replicas report different policy versions (`versions`: name -> version)."""

    def __init__(self, versions: dict[str, int]) -> None:
        super().__init__(f"the replicas disagree on the policy version: {versions}")
        self.versions = versions


async def update_weights(
    rs: ReplicaSet,
    client: httpx.AsyncClient,
    body: bytes,
    content_type: str,
    headers: Mapping[str, str],
    query: Query = (),
) -> FanoutReply:
    """One weight update on every routable replica, or on none (module docstring)."""
    targets = rs.routable()
    sent = forwarded(headers, rs.admin_headers)
    refusal = _unsupported(targets, content_type) or no_replica(targets)
    if refusal is not None:
        return refusal
    two_phase = [r for r in targets if r.dialect == "rlserve"]
    one_phase = [r for r in targets if r.dialect != "rlserve"]
    kwargs = dict(content=body, content_type=content_type, headers=sent, query=query)
    staged = await _each(two_phase, lambda r: call(client, r, "POST", "/stage_weights", **kwargs))
    failed = [s for s in staged if not s.ok]
    changed: list[str] = []
    if not failed and one_phase:  # SGLang: its own one-phase update, between the phases
        sglang = _sglang_update(body)
        done = await _each(one_phase, lambda r: call(client, r, "POST", **sglang, headers=sent))
        failed = [d for d in done if not d.ok]
        changed = [d.replica.name for d in done if d.ok]
    if failed:
        await _discard(client, [s for s in staged if s.ok], sent)
        outcome = f"changed only the one-phase {changed}" if changed else "no replica changed"
        return failure(failed, "weight update", outcome)
    commits = await _each(staged, lambda s: _stage_call(client, s, "/commit_weights", sent))
    update = AdminCall("/update_weights", body, content_type, tuple(query))
    return _committed(rs, commits, one_phase, update)


async def load_adapter(
    rs: ReplicaSet,
    client: httpx.AsyncClient,
    path: str,
    body: bytes,
    content_type: str,
    headers: Mapping[str, str],
) -> FanoutReply:
    """Load an adapter (`path`: the route the caller used) on every routable replica; if
    any fails, unload it from those that loaded it."""
    targets = rs.routable()
    refusal = no_replica(targets)
    if refusal is not None:
        return refusal
    sent = forwarded(headers, rs.admin_headers)
    kwargs = dict(content=body, content_type=content_type, headers=sent)
    results = await _each(targets, lambda r: call(client, r, "POST", path, **kwargs))
    failed = [r for r in results if not r.ok]
    name = adapter_name(body, results)
    if failed:
        loaded = [r for r in results if r.ok]
        if name is not None:
            await _each(loaded, lambda r: _unload(client, r.replica, name, sent))
        return failure(failed, "adapter load", "unloaded from the replicas that loaded it")
    if name is not None:
        rs.committed.adapters.pop(name, None)  # re-added last: replayed in load order
        rs.committed.adapters[name] = AdminCall(path, body, content_type)
    return FanoutReply(200, merged(results))


async def broadcast(
    rs: ReplicaSet,
    client: httpx.AsyncClient,
    method: str,
    path: str,
    body: bytes,
    content_type: str,
    headers: Mapping[str, str],
) -> FanoutReply:
    """`method path` on every routable replica (pause, resume, abort, reset_prefix_cache,
    unload_adapter, and their SGLang / vLLM spellings); keys on which all replies agree
    are lifted to the top of the merged reply."""
    targets = rs.routable()
    refusal = no_replica(targets)
    if refusal is not None:
        return refusal
    sent = forwarded(headers, rs.admin_headers)
    kwargs = dict(content=body, content_type=content_type or None, headers=sent)
    results = await _each(targets, lambda r: call(client, r, method, path, **kwargs))
    failed = [r for r in results if not r.ok]
    if failed:
        return failure(failed, f"{method} {path}", "the other replicas did it")
    if path in UNLOAD_PATHS:
        name = adapter_name(body, results)
        rs.committed.adapters.pop(name or "", None)
    return FanoutReply(200, merged(results))


async def policy_version(rs: ReplicaSet, client: httpx.AsyncClient) -> int:
    """The cluster's one policy version, from every routable rlserve replica's `/health`;
    VersionSplit when they disagree, RuntimeError when none answers."""
    targets = [r for r in rs.routable() if r.dialect == "rlserve"]
    results = await _each(targets, lambda r: call(client, r, "GET", "/health", headers={}))
    versions = {
        r.replica.name: r.body["policy_version"]
        for r in results
        if r.ok and isinstance(r.body, dict) and isinstance(r.body.get("policy_version"), int)
    }
    if not versions:
        raise RuntimeError("no rlserve replica reported a policy version")
    if len(set(versions.values())) > 1:
        raise VersionSplit(versions)
    return next(iter(versions.values()))


async def _each(items: list[Any], fn: Any) -> list[CallResult]:
    return list(await asyncio.gather(*(fn(item) for item in items)))


def _unsupported(targets: list[Replica], content_type: str) -> FanoutReply | None:
    """400 before anything is sent when a replica cannot take this update at all."""
    streamed = content_type.split(";")[0].strip().lower() == "application/octet-stream"
    cannot = {r.name: why for r in targets if (why := _why_not(r.dialect, streamed)) is not None}
    if not cannot:
        return None
    message = f"weight update refused before sending: {cannot}; no replica changed"
    return FanoutReply(400, {**error_body(400, message), "failed": cannot})


def _why_not(dialect: str, streamed: bool) -> str | None:
    if dialect == "vllm":
        return "vLLM replicas take weight updates only over NCCL / CUDA IPC, not HTTP"
    if dialect == "sglang" and streamed:
        return "SGLang replicas take weights from a path, not a streamed body"
    return None


def _sglang_update(body: bytes) -> dict[str, Any]:
    """SGLang's `/update_weights_from_disk` for a JSON update naming a path."""
    data = json_object(body)
    path = next((data[k] for k in ("path", "weight_path", "model_path") if data.get(k)), None)
    sglang: dict[str, Any] = {"model_path": path}
    if data.get("version") is not None:
        sglang["weight_version"] = str(data["version"])
    return {
        "path": "/update_weights_from_disk",
        "content": json.dumps(sglang).encode(),
        "content_type": "application/json",
    }


async def _discard(client: httpx.AsyncClient, staged: list[CallResult], headers: dict) -> None:
    await _each(staged, lambda s: _stage_call(client, s, "/discard_weights", headers))


async def _stage_call(
    client: httpx.AsyncClient, staged: CallResult, path: str, headers: dict
) -> CallResult:
    """`/commit_weights` or `/discard_weights` of the stage `staged` made."""
    body = json.dumps({"stage_id": staged.body["stage_id"]}).encode()
    return await call(
        client,
        staged.replica,
        "POST",
        path,
        content=body,
        content_type="application/json",
        headers=headers,
    )


def _committed(
    rs: ReplicaSet, commits: list[CallResult], one_phase: list[Replica], update: AdminCall
) -> FanoutReply:
    """Record the update as committed (a replica whose commit failed is replayed by the
    health loop) and build the reply."""
    versions = [c.body["policy_version"] for c in commits if c.ok]
    if versions:
        rs.committed.weights, rs.committed.version = update, max(versions)
    failed = [c for c in commits if not c.ok]
    for result in failed:
        rs.mark_unhealthy(result.replica, f"commit failed: {result.error}")
    rows = {c.replica.name: {**c.row(), "two_phase": True} for c in commits}
    rows.update({r.name: {"status": 200, "two_phase": False} for r in one_phase})
    if failed:
        names = {c.replica.name: c.error for c in failed}
        message = f"commit failed on {names} after every stage succeeded; they are out of "
        message += "routing until the committed update is replayed on them"
        return FanoutReply(500, {**error_body(500, message), "failed": names, "replicas": rows})
    body = {"policy_version": rs.committed.version, "replicas": rows}
    return FanoutReply(200, body)


async def _unload(
    client: httpx.AsyncClient, replica: Replica, name: str, headers: dict
) -> CallResult:
    path, field = UNLOAD_ROUTES[replica.dialect]
    content = json.dumps({field: name}).encode()
    return await call(
        client,
        replica,
        "POST",
        path,
        content=content,
        content_type="application/json",
        headers=headers,
    )
