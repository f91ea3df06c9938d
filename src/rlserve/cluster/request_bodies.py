"""The request bodies the `Cluster` API sends, built from its arguments (checked)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from rlserve._checks import ParamError

JSON = "application/json"


def bundled_model() -> Any:
    from rlserve.config import BUNDLED_MODEL

    return BUNDLED_MODEL


def sessions_of(sessions: Sequence[str | None] | None, count: int) -> list[str | None]:
    if sessions is None:
        return [None] * count
    if not isinstance(sessions, (list, tuple)) or len(sessions) != count:
        raise ParamError("sessions", f"sessions must be a list of {count} keys (one per prompt)")
    if not all(s is None or isinstance(s, str) for s in sessions):
        raise ParamError("sessions", "sessions must hold strings or None")
    return list(sessions)


def update_request(
    weights: object, version: int | None
) -> tuple[bytes, str, tuple[tuple[str, str], ...]]:
    """(body, content type, query) of an update: JSON naming a path, or safetensors bytes."""
    if isinstance(weights, str) and weights:
        body: dict[str, Any] = {"path": weights}
        if version is not None:
            body["version"] = version
        return encoded(body), JSON, ()
    if isinstance(weights, Mapping) and weights:
        # The client's serializer, not safetensors.save: a trainer's state dict often ties
        # tensors (embed_tokens / lm_head), which save() refuses.
        from rlserve.client.safetensors_stream import safetensors_stream

        query = (("version", str(version)),) if version is not None else ()
        try:
            _, chunks = safetensors_stream(weights)
        except (AttributeError, ValueError) as e:
            raise ParamError("weights", f"weights must map names to tensors: {e}") from None
        return b"".join(chunks), "application/octet-stream", query
    raise ParamError(
        "weights",
        f"weights must be a checkpoint path or a non-empty state dict, got {weights!r:.80}",
    )


def encoded(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()
