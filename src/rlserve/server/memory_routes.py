"""Memory release for colocated RL in both dialects, under the admin key (`engine/memory.py`
does the work on the engine thread).

vLLM (`vllm/entrypoints/serve/dev/sleep/api_router.py`, `EngineCore.sleep` / `wake_up`):
- `POST /sleep?level=1&mode=abort`: pause generation in `mode` (abort / wait / keep, the
  PauseMode names; "keep" requests recompute their KV once awake), then at level >= 1 free
  the KV cache (prefix cache dropped) and move the weights to host (CUDA). Level 2 discards
  the weights in vLLM; rlserve keeps them on host and says so (`weights_discarded: false`).
  Level 0 only pauses.
- `POST /wake_up?tags=weights&tags=kv_cache` (no tags: all; "scheduling" only resumes
  scheduling): weights first, so a weight update may come before the KV cache; scheduling
  resumes once nothing is released.
- `GET /is_sleeping`: `{"is_sleeping"}`, true while memory is released or generation is
  paused (vLLM's `is_scheduler_paused() or executor.is_sleeping`).

SGLang (`http_server.py`, `Scheduler.release_memory_occupation`): `/release_memory_occupation`
and `/resume_memory_occupation` (GET or POST) with `{"tags": [...]}` ("weights",
"kv_cache", "cuda_graph"; none: all). SGLang asserts the server is idle: rlserve answers 409
while a request runs or waits, unless generation is paused, when frozen requests are retracted
(they recompute their KV on resume). Replies are `{success, message}` plus rlserve's fields.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from rlserve._checks import ParamError
from rlserve.engine import memory
from rlserve.pause_mode import PauseMode
from rlserve.server.admin_options import json_body
from rlserve.server.auth import admin_access
from rlserve.server.errors import APIError, error_body, shown
from rlserve.server.state import ServerState

T = TypeVar("T")

SLEEP_LEVELS = ("0", "1", "2")
SCHEDULING = "scheduling"  # vLLM's wake_up tag for level 0: resume scheduling only


async def memory_call(state: ServerState, fn: Callable[[Any], T]) -> T:
    """`fn(engine)` on the engine thread; MemoryBusy -> 409, a bad field -> 400."""
    try:
        return await state.loop.call(fn)
    except memory.MemoryBusy as exc:
        raise APIError(409, str(exc)) from exc
    except ParamError as exc:
        raise APIError(400, str(exc), exc.field) from exc


def sleep_args(query: Any) -> tuple[int, PauseMode]:
    """vLLM's /sleep `level` (0, 1, 2; default 1) and `mode` (default "abort"); 400 else."""
    level = query.get("level", "1")
    if level not in SLEEP_LEVELS:
        raise APIError(400, f"level must be one of 0, 1, 2, got {shown(level)}", "level")
    try:
        mode = PauseMode.parse(query.get("mode", PauseMode.ABORT.value))
    except ParamError as exc:
        raise APIError(400, str(exc), exc.field) from exc
    return int(level), mode


def wake_tags(query: Any) -> tuple[str, ...]:
    """vLLM's /wake_up `tags` (none: all) as the memory kinds to resume ("scheduling" is
    not one: it only resumes scheduling, which every wake-up does once nothing is released)."""
    tags = query.getlist("tags")
    if not tags:
        return memory.MEMORY_TAGS
    kinds = [tag for tag in tags if tag != SCHEDULING]
    try:
        return memory.parse_tags(kinds) if kinds else ()
    except ParamError as exc:
        raise APIError(400, f"{exc}, or {SCHEDULING!r}", "tags") from exc


def body_tags(body: dict[str, Any]) -> tuple[str, ...]:
    try:
        return memory.parse_tags(body.get("tags"))
    except ParamError as exc:
        raise APIError(400, str(exc), exc.field) from exc


async def vllm_sleep(state: ServerState, level: int, mode: PauseMode) -> dict[str, Any]:
    await state.loop.pause(mode)
    if mode == PauseMode.WAIT:  # as vLLM: sleep once the running requests finished
        await state.loop.call(lambda _: None, drain=True)
    reply: dict[str, Any] = {"level": level, "mode": mode.value}
    if level >= 1:
        keep = mode == PauseMode.KEEP
        report = await memory_call(state, lambda e: memory.release(e, weights=True, recompute=keep))
        reply |= {**report.as_dict(), "weights_discarded": False}
        if level == 2:
            reply["message"] = "level 2: the weights are kept on host, not discarded"
    return {"is_sleeping": True, **reply}


async def vllm_wake_up(state: ServerState, tags: tuple[str, ...]) -> dict[str, Any]:
    report = await memory_call(state, lambda e: memory.resume(e, tags))
    if not report.released:
        await state.loop.resume()
    sleeping = bool(report.released) or state.paused is not None
    return {"is_sleeping": sleeping, **report.as_dict()}


def sglang_release(engine: Any, tags: tuple[str, ...]) -> memory.MemoryReport:
    """SGLang's rule: idle, unless paused (frozen requests are retracted then)."""
    paused = engine.policy.paused is not None
    if not paused:
        memory.check_idle(engine)
    kinds = dict(weights=memory.WEIGHTS in tags, kv_cache=memory.KV_CACHE in tags)
    return memory.release(engine, recompute=paused, **kinds)


def sglang_reply(report: memory.MemoryReport, message: str) -> JSONResponse:
    return JSONResponse({"success": True, "message": message, **report.as_dict()})


def sglang_refusal(exc: APIError) -> JSONResponse:
    body = error_body(exc.status, exc.message, exc.param, exc.code)
    return JSONResponse({"success": False, "message": exc.message, **body}, exc.status)


def memory_router(state: ServerState) -> APIRouter:
    """The memory-release routes of both dialects bound to `state`, under the admin key."""
    access = admin_access(state.config)
    router = APIRouter(dependencies=[Depends(access)] if access.checks else [])
    limit = state.config.max_request_bytes

    @router.post("/sleep")
    async def sleep(request: Request) -> JSONResponse:
        level, mode = sleep_args(request.query_params)
        return JSONResponse(await vllm_sleep(state, level, mode))

    @router.post("/wake_up")
    async def wake_up(request: Request) -> JSONResponse:
        tags = wake_tags(request.query_params)
        return JSONResponse(await vllm_wake_up(state, tags))

    @router.get("/is_sleeping")
    async def is_sleeping() -> JSONResponse:
        released = await memory_call(state, memory.released_tags)
        sleeping = bool(released) or state.paused is not None
        return JSONResponse({"is_sleeping": sleeping, "released": list(released)})

    @router.api_route("/release_memory_occupation", methods=["GET", "POST"])
    async def release_memory_occupation(request: Request) -> JSONResponse:
        try:
            tags = body_tags(await json_body(request, limit))
            report = await memory_call(state, lambda e: sglang_release(e, tags))
        except APIError as exc:
            return sglang_refusal(exc)
        return sglang_reply(report, "Memory released.")

    @router.api_route("/resume_memory_occupation", methods=["GET", "POST"])
    async def resume_memory_occupation(request: Request) -> JSONResponse:
        try:
            tags = body_tags(await json_body(request, limit))
            report = await memory_call(state, lambda e: memory.resume(e, tags))
        except APIError as exc:
            return sglang_refusal(exc)
        return sglang_reply(report, "Memory resumed.")

    return router
