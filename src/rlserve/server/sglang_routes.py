"""SGLang's native admin routes (`sglang/srt/entrypoints/http_server.py`, bodies from
`sglang/srt/managers/io_struct.py`), on rlserve's engine, under the admin key.

- `/update_weights_from_disk` (`model_path`, `weight_version`, `abort_all_requests`,
  `flush_cache`): `abort_all_requests` maps onto PauseMode "abort", else "wait" (SGLang's
  update waits for running requests). Checked before anything pauses, as every update.
- `/pause_generation` `mode`: "abort" -> "abort"; "in_place" -> "keep"; "retract" -> "keep",
  and `/continue_generation` recomputes the frozen requests' KV (SGLang re-prefills them).
- `/load_lora_adapter` (`lora_name`, `lora_path` under --weights-dir, `pinned`) and
  `/unload_lora_adapter` (`lora_name`) answer SGLang's `success`/`loaded_adapters`.
- `weight_version` is SGLang's free-form label ("default" until set), kept in
  `ServerState.weight_version` so that `/generate` replies carry it; rlserve's integer
  `policy_version` advances on every update as always and is added to each reply.
Replies are SGLang's; a refusal is rlserve's error JSON plus SGLang's `success`/`message`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from rlserve.pause_mode import PauseMode
from rlserve.server.admin_adapters import adapter_name, install_adapter, unload_adapter_named
from rlserve.server.admin_engine import engine_call
from rlserve.server.admin_files import path_under
from rlserve.server.admin_options import as_bool, json_body, optional_str
from rlserve.server.admin_weights import update_from_disk
from rlserve.server.auth import admin_access
from rlserve.server.errors import APIError, error_body, shown
from rlserve.server.state import ServerState

SGLANG_PAUSE_MODES = {
    "abort": PauseMode.ABORT,
    "in_place": PauseMode.KEEP,
    "retract": PauseMode.KEEP,
}


@dataclass
class SGLangControl:
    """What the SGLang dialect remembers between calls (the weight-version label lives in
    `ServerState`, which `/generate` reads)."""

    retracted: bool = False  # the pause was "retract": continue recomputes the KV


def refusal(exc: APIError) -> JSONResponse:
    """An APIError as rlserve's error JSON plus SGLang's `success: false` and `message`."""
    body = error_body(exc.status, exc.message, exc.param, exc.code)
    return JSONResponse({"success": False, "message": exc.message, **body}, exc.status)


def label(value: Any, param: str) -> str | None:
    """A weight version label: a non-empty string of at most 256 characters, or None."""
    text = optional_str(value, param)
    if text is not None and not (0 < len(text) <= 256 and text.isprintable()):
        raise APIError(400, f"{param} must be 1-256 printable characters, got {shown(text)}", param)
    return text


async def update_from_disk_route(state: ServerState, body: dict) -> dict:
    weight_version = label(body.get("weight_version"), "weight_version")
    aborting = as_bool(body.get("abort_all_requests", False), "abort_all_requests")
    flush = as_bool(body.get("flush_cache", True), "flush_cache")
    mode = PauseMode.ABORT if aborting else PauseMode.WAIT
    version, update = await update_from_disk(
        state, "model_path", body.get("model_path"), (None, mode, False)
    )
    if flush:
        await engine_call(state, lambda e: e.reset_prefix_cache())
    message = "Succeeded to update model weights."
    if weight_version is not None:
        state.set_weight_version(weight_version, version)
        message += f" Weight version updated to {weight_version}."
    return {
        "success": True,
        "message": message,
        "num_paused_requests": 0,
        "policy_version": version,
        "weight_version": state.weight_version,
        "dtype_cast": update.cast_report(),
    }


def pause_mode(body: dict) -> str:
    mode = body.get("mode", "abort")
    if not isinstance(mode, str) or mode not in SGLANG_PAUSE_MODES:
        choices = tuple(SGLANG_PAUSE_MODES)
        raise APIError(400, f"mode must be one of {choices}, got {shown(mode)}", "mode")
    return mode


def model_info(state: ServerState) -> dict[str, Any]:
    return {
        "model_path": state.model_path,
        "tokenizer_path": state.model_path,
        "is_generation": True,
        "preferred_sampling_params": None,
        "weight_version": state.weight_version,
        "served_model_name": state.model_name,
        "policy_version": state.policy_version,
    }


def server_info(state: ServerState, version: str) -> dict[str, Any]:
    engine_config = state.loop.engine.config
    return {
        **model_info(state),
        "context_length": state.max_model_len,
        "max_running_requests": engine_config.max_num_seqs,
        "page_size": engine_config.block_size,
        "internal_states": [dict(state.loop.stats())],
        "version": version,
    }


def sglang_router(state: ServerState) -> APIRouter:
    """SGLang's admin routes bound to `state`, guarded as `auth.admin_access` says."""
    access = admin_access(state.config)
    router = APIRouter(dependencies=[Depends(access)] if access.checks else [])
    control = SGLangControl()
    limit = state.config.max_request_bytes

    @router.post("/update_weights_from_disk")
    async def update_weights_from_disk(request: Request) -> JSONResponse:
        try:
            body = await json_body(request, limit)
            return JSONResponse(await update_from_disk_route(state, body))
        except APIError as exc:
            return refusal(exc)

    @router.post("/pause_generation")
    async def pause_generation(request: Request) -> JSONResponse:
        mode = pause_mode(await json_body(request, limit))
        await state.loop.pause(SGLANG_PAUSE_MODES[mode])
        control.retracted = mode == "retract"
        return _status_reply(state, "Generation paused successfully.")

    @router.post("/continue_generation")
    async def continue_generation(request: Request) -> JSONResponse:
        body = await json_body(request, limit)
        as_bool(body.get("torch_empty_cache", True), "torch_empty_cache")  # nothing to empty
        await state.loop.resume(recompute_kv=control.retracted)
        control.retracted = False
        return _status_reply(state, "Generation continued successfully.")

    @router.post("/abort_request")
    async def abort_request(request: Request) -> JSONResponse:
        body = await json_body(request, limit)
        rid = optional_str(body.get("rid"), "rid") or None
        if as_bool(body.get("abort_all", False), "abort_all"):
            rid = None
        elif rid is None:
            raise APIError(400, "abort_request needs a rid or abort_all: true", "rid")
        return JSONResponse({"aborted": await state.loop.abort_requests(rid)})

    @router.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache() -> PlainTextResponse:
        await engine_call(state, lambda e: e.reset_prefix_cache())
        return PlainTextResponse("Cache flushed.\n")

    @router.get("/get_model_info")
    async def get_model_info() -> JSONResponse:
        return JSONResponse(model_info(state))

    @router.get("/get_server_info")
    async def get_server_info(request: Request) -> JSONResponse:
        return JSONResponse(server_info(state, request.app.version))

    @router.get("/get_weight_version")
    async def get_weight_version() -> JSONResponse:
        return JSONResponse({"weight_version": state.weight_version})

    @router.post("/update_weight_version")
    async def update_weight_version(request: Request) -> JSONResponse:
        try:
            body = await json_body(request, limit)
            new = label(body.get("new_version"), "new_version")
            if new is None:
                raise APIError(400, "update_weight_version needs a new_version", "new_version")
            if as_bool(body.get("abort_all_requests", False), "abort_all_requests"):
                await state.loop.abort_requests(None)
        except APIError as exc:
            return refusal(exc)
        state.set_weight_version(new)
        message = f"Weight version updated to {new}"
        return JSONResponse({"success": True, "message": message, "new_version": new})

    @router.post("/load_lora_adapter")
    async def load_lora_adapter(request: Request) -> JSONResponse:
        try:
            await load_adapter_route(state, await json_body(request, limit))
        except APIError as exc:
            return refusal(exc)
        return JSONResponse(lora_reply(state))

    @router.post("/unload_lora_adapter")
    async def unload_lora_adapter(request: Request) -> JSONResponse:
        try:
            name = required_lora_name(await json_body(request, limit), state)
            if name not in state.adapters():
                raise APIError(404, f"LoRA adapter {name!r} is not loaded", "lora_name")
            await unload_adapter_named(state, name)
        except APIError as exc:
            return refusal(exc)
        return JSONResponse(lora_reply(state))

    return router


def required_lora_name(body: dict[str, Any], state: ServerState) -> str:
    name = adapter_name(body.get("lora_name"), state)
    if name is None:
        raise APIError(400, "lora_name is required", "lora_name")
    return name


async def load_adapter_route(state: ServerState, body: dict[str, Any]) -> None:
    """SGLang's `{lora_name, lora_path, pinned}`: load the PEFT folder under
    --weights-dir as `lora_name` (a name already loaded is refused, as SGLang does)."""
    name = required_lora_name(body, state)
    path = optional_str(body.get("lora_path"), "lora_path")
    if not path:
        raise APIError(400, "lora_path is required", "lora_path")
    as_bool(body.get("pinned", False), "pinned")  # every adapter stays resident here
    if name in state.adapters():
        raise APIError(400, f"LoRA adapter {name!r} is already loaded", "lora_name")
    folder = path_under(state.config.weights_dir, path, "lora_path")
    await install_adapter(state, folder, name, None, path)


def lora_reply(state: ServerState) -> dict[str, Any]:
    """SGLang's LoRA reply: success and the loaded adapters (name -> path given)."""
    loaded = {name: state.adapter_roots.get(name, name) for name in state.adapters()}
    return {"success": True, "error_message": None, "loaded_adapters": loaded}


def _status_reply(state: ServerState, message: str) -> JSONResponse:
    """SGLang's `{message, status}` reply, plus rlserve's pause mode and policy version."""
    return JSONResponse(
        {
            "message": message,
            "status": "ok",
            "paused": state.paused,
            "policy_version": state.policy_version,
        }
    )
