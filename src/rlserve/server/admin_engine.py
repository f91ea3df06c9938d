"""What every admin route shares: running a call on the engine thread (its errors as
400/409 without server paths), and replies that carry the policy version."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from fastapi.responses import JSONResponse

from rlserve.engine import AdapterInUse
from rlserve.pause_mode import PauseMode
from rlserve.server.commands import EngineFn
from rlserve.server.errors import APIError
from rlserve.server.state import ServerState

T = TypeVar("T")


def hide_server_paths(message: str, state: ServerState, folders: Mapping[str, str]) -> str:
    """`message` with the server's folders (`--weights-dir`, upload folders) replaced by
    what the client knows them as: error messages never show absolute server paths."""
    replacements = dict(folders)
    given = state.config.weights_dir
    if given:
        roots = {str(Path(given).resolve()), str(Path(given).absolute())}
        for root in roots:  # absolute spellings only: a relative one is a common word
            replacements[root.rstrip("/") + "/"] = ""
            replacements[root] = "--weights-dir"
    for path in sorted(replacements, key=len, reverse=True):
        message = message.replace(path, replacements[path])
    return message


async def engine_call(
    state: ServerState,
    fn: EngineFn[T],
    mode: PauseMode | None = None,
    check: EngineFn[object] | None = None,
    folders: Mapping[str, str] | None = None,
) -> T:
    """Run `fn(engine)` on the engine thread (after `check(engine)`, in update `mode` when
    given); the engine's ValueError/OSError/KeyError -> 400 (409: see `_status_of`),
    without server paths."""
    try:
        if mode is None:
            return await state.loop.call(fn, check=check)
        return await state.loop.update(fn, mode, check=check)
    except (ValueError, OSError, KeyError) as exc:
        message = hide_server_paths(str(exc).strip("'\""), state, folders or {})
        raise APIError(_status_of(exc), message) from exc


def _status_of(exc: Exception) -> int:
    """409 when the call conflicts with running requests (an adapter in use), else 400."""
    return 409 if isinstance(exc, AdapterInUse) else 400


def reply(state: ServerState, **fields: Any) -> JSONResponse:
    """`fields` plus the published policy version (already in /health and /metrics)."""
    return JSONResponse({**fields, "policy_version": state.policy_version})
