"""Which replica a request goes to: least outstanding requests, session affinity, or
prefix affinity (a consistent hash ring over replica names).

The session key is what the SGLang Model Gateway and the vLLM router hash for their
`consistent_hashing` / `consistent_hash` policies: a routing header (`X-SMG-Routing-Key`,
which slime sends, `X-Session-Id`, ...), else a session field of the body (`session_id`,
`prompt_cache_key`, the OpenAI `user`), else a hash of the chat's first user message (the
vLLM router's fallback: it stays the same over the turns of one conversation). The prefix
key hashes the first block of the prompt (SGLang's `prefix_hash`): the first 16 token
ids, or the first 64 characters of the text or of the rendered messages.

A request is always sent whole to one replica, so an `n > 1` group (and a batch of
prompts) is prefilled once, on one replica.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rlserve.cluster.config import ROUTING_POLICIES

if TYPE_CHECKING:
    from rlserve.cluster.replica import Replica

# Other routers' names for the same policies (SGLang Model Gateway, vLLM router).
POLICY_ALIASES = {
    "consistent_hashing": "session",
    "consistent_hash": "session",
    "prefix_hash": "prefix",
}
# Checked in order, case-insensitively (HTTP header names are case-insensitive).
SESSION_HEADERS = (
    "x-smg-routing-key",  # SGLang Model Gateway; slime sets it per sample
    "x-session-id",  # vLLM router, SGLang gateway
    "x-session-affinity",
    "session-id",
    "x-user-id",
)
SESSION_FIELDS = ("session_id", "prompt_cache_key", "conversation_id", "user")
PREFIX_TOKENS = 16
PREFIX_CHARS = 64
VIRTUAL_NODES = 64


class NoReplica(RuntimeError):
    """No routable replica is left for this request (the router answers 503)."""


@dataclass(frozen=True)
class RoutingKey:
    """What the affinity policies hash: a session identity and the prompt's first block."""

    session: str | None = None
    prefix: str | None = None


def canonical_policy(name: str) -> str:
    """`name`, or the policy another router's name stands for; ValueError if unknown."""
    policy = POLICY_ALIASES.get(name, name)
    if policy not in ROUTING_POLICIES:
        known = [*ROUTING_POLICIES, *POLICY_ALIASES]
        raise ValueError(f"routing must be one of {known}, got {name!r}")
    return policy


def routing_key(body: Any, headers: Mapping[str, str]) -> RoutingKey:
    """The session and prefix keys of a request body (a parsed JSON value; anything that
    is not an object gives no keys) and its headers."""
    fields = body if isinstance(body, dict) else {}
    return RoutingKey(_session_of(fields, headers), _prefix_of(fields))


def _session_of(body: dict[str, Any], headers: Mapping[str, str]) -> str | None:
    lowered = {name.lower(): value for name, value in headers.items()}
    for name in SESSION_HEADERS:
        value = lowered.get(name, "").strip()
        if value:
            return f"header:{value}"
    params = body.get("session_params")
    if isinstance(params, dict) and _text(params.get("session_id")):
        return f"session:{params['session_id'].strip()}"
    for name in SESSION_FIELDS:
        if _text(body.get(name)):
            return f"{name}:{body[name].strip()}"
    first = _first_user_message(body.get("messages"))
    return None if first is None else f"first_user:{_digest(first)}"


def _first_user_message(messages: Any) -> str | None:
    if not isinstance(messages, list):
        return None
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "user":
            text = _content_text(message.get("content"))
            if text:
                return text
    return None


def _prefix_of(body: dict[str, Any]) -> str | None:
    """The first prompt block: /generate's `input_ids` or `text`, /v1/completions'
    `prompt`, /v1/chat/completions' `messages`; a batch's first prompt."""
    for name in ("input_ids", "prompt", "text"):
        block = _first_block(body.get(name))
        if block is not None:
            return f"prefix:{_digest(block)}"
    messages = body.get("messages")
    if isinstance(messages, list) and messages:
        rendered = "".join(_rendered(m) for m in messages)
        return f"prefix:{_digest(rendered[:PREFIX_CHARS])}" if rendered else None
    return None


def _first_block(prompt: Any) -> str | None:
    if _text(prompt):
        return prompt[:PREFIX_CHARS]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return json.dumps(prompt[:PREFIX_TOKENS])
        return _first_block(prompt[0])  # a batch: its first prompt
    return None


def _rendered(message: Any) -> str:
    if not isinstance(message, dict):
        return ""
    return f"{message.get('role', '')}:{_content_text(message.get('content')) or ''}\n"


def _content_text(content: Any) -> str | None:
    if _text(content):
        return content.strip()
    if isinstance(content, list):  # content parts: the text ones
        parts = [p["text"] for p in content if isinstance(p, dict) and _text(p.get("text"))]
        return "\n".join(parts) or None
    return None


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _point(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@functools.lru_cache(maxsize=64)
def _ring(names: tuple[str, ...]) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """The ring: `VIRTUAL_NODES` points per name, sorted. A point depends only on its
    replica's name, so a replica leaving moves only the keys that were its own."""
    points = sorted((_point(f"{name}#{i}"), name) for name in names for i in range(VIRTUAL_NODES))
    return tuple(p for p, _ in points), tuple(n for _, n in points)


def ring_owner(names: Sequence[str], key: str) -> str:
    """The name that owns `key` on the ring of `names` (the first point at or after it)."""
    points, owners = _ring(tuple(sorted(names)))
    index = bisect.bisect_left(points, _point(key)) % len(points)
    return owners[index]


def choose_replica(
    policy: str,
    replicas: list[Replica],
    key: RoutingKey,
    exclude: Collection[str] = frozenset(),
) -> Replica:
    """The replica `policy` picks among `replicas` (the routable ones) minus the names in
    `exclude` (those already tried). Affinity policies without their key fall back to
    least outstanding. Raises NoReplica when none is left, ValueError for an unknown
    policy."""
    policy = canonical_policy(policy)
    candidates = [r for r in replicas if r.name not in exclude]
    if not candidates:
        tried = f" (tried: {', '.join(sorted(exclude))})" if exclude else ""
        raise NoReplica(f"no healthy replica can take the request{tried}")
    hashed = key.session if policy == "session" else key.prefix if policy == "prefix" else None
    if hashed is None:
        return min(candidates, key=lambda r: (r.outstanding, r.name))
    owner = ring_owner([r.name for r in candidates], hashed)
    return next(r for r in candidates if r.name == owner)
