"""The replies of fan-out calls: one merged `FanoutReply` out of each replica's answer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rlserve.cluster.replica import Replica
from rlserve.cluster.replica_calls import CallResult
from rlserve.server.errors import error_body


@dataclass
class FanoutReply:
    """`status` 200 if every replica succeeded, else the first failing status; `body` the
    merged reply (on failure: an OpenAI error naming the failed replicas, and `failed`)."""

    status: int
    body: dict[str, Any]


def no_replica(targets: list[Replica]) -> FanoutReply | None:
    if targets:
        return None
    return FanoutReply(503, error_body(503, "no healthy replica to send the call to"))


def failure(failed: list[CallResult], what: str, outcome: str) -> FanoutReply:
    names = {f.replica.name: f"{f.status or 'unreachable'}: {f.error}" for f in failed}
    status = next((f.status for f in failed if f.status), 503)
    message = f"{what} failed on {names}; {outcome}"
    rows = {f.replica.name: f.row() for f in failed}
    return FanoutReply(status, {**error_body(status, message), "failed": names, "replicas": rows})


def merged(results: list[CallResult]) -> dict[str, Any]:
    bodies = [r.body if isinstance(r.body, dict) else {} for r in results]
    agreed = {k: v for k, v in bodies[0].items() if all(b.get(k) == v for b in bodies[1:])}
    return {**agreed, "replicas": {r.replica.name: r.row() for r in results}}


def adapter_name(body: bytes, results: list[CallResult]) -> str | None:
    data = json_object(body)
    for key in ("adapter_name", "lora_name"):
        if isinstance(data.get(key), str):
            return data[key]
    for result in results:  # an upload names it in the reply
        if result.ok and isinstance(result.body, dict):
            if isinstance(result.body.get("adapter_name"), str):
                return result.body["adapter_name"]
    return None


def json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
