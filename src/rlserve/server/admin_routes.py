"""RL admin routes: weight updates, LoRA adapters, pause/resume/abort, policy version.

Every response carries the engine's `policy_version`. With `--admin-key` set the routes
need `Authorization: Bearer <admin-key>`; without it they are open, so keep the server on
127.0.0.1 (the default) or set a key. Paths are only read under `--weights-dir`.
"""

from __future__ import annotations

import hmac
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from rlserve.server.admin_files import (
    adapter_folder,
    extract_zip,
    parse_multipart,
    path_under,
    plain_name,
    read_limited,
)
from rlserve.server.errors import APIError
from rlserve.server.safetensors_body import ReceiveBuffer, parse_safetensors, read_body
from rlserve.server.state import ServerState

UPDATE_MODES = ("keep", "wait", "abort")


def require_admin_key(admin_key: str | None) -> Any:
    """A dependency refusing admin calls without the admin bearer token (401)."""
    expected = f"Bearer {admin_key}".encode()

    async def check(request: Request) -> None:
        if admin_key is None:
            return
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise APIError(401, "admin route: missing or wrong admin key "
                                "(send 'Authorization: Bearer <admin-key>')")

    return check


async def engine_call(state: ServerState, fn: Any, mode: str | None = None) -> Any:
    """Run `fn(engine)` on the engine thread; the engine's ValueError/OSError -> 400."""
    try:
        if mode is None:
            return await state.loop.call(fn)
        return await state.loop.update(fn, mode)
    except (ValueError, OSError, KeyError) as exc:
        raise APIError(400, str(exc).strip("'\"")) from exc


def reply(state: ServerState, **fields: Any) -> JSONResponse:
    return JSONResponse({**fields, "policy_version": state.loop.engine.policy_version})


async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = await request.json()
    except ValueError as exc:
        raise APIError(400, f"malformed JSON body: {exc}") from exc
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    return data


def update_options(source: Any) -> tuple[int | None, str, bool]:
    """(version, mode, recompute_kv) from a JSON body or the query string."""
    version, mode = source.get("version"), source.get("mode") or "keep"
    recompute = source.get("recompute_kv", False)
    if isinstance(version, str):
        if not version.lstrip("-").isdigit():
            raise APIError(400, f"version must be an integer, got {version!r}", "version")
        version = int(version)
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise APIError(400, f"version must be an integer, got {version!r}", "version")
    if mode not in UPDATE_MODES:
        raise APIError(400, f"mode must be one of {UPDATE_MODES}, got {mode!r}", "mode")
    if isinstance(recompute, str):
        recompute = recompute.lower() in ("1", "true", "yes")
    return version, mode, bool(recompute)


async def tensors_from_body(request: Request, limit: int, receive_buffer: ReceiveBuffer
                            ) -> dict[str, Any]:
    """The safetensors state dict streamed in the body; 413 over `limit`, 400 if corrupt."""
    body = await read_body(request, limit, "the weight update body", receive_buffer)
    if not body.numel():
        raise APIError(400, "the request body is empty; send safetensors bytes")
    try:
        return parse_safetensors(body)
    except ValueError as exc:
        raise APIError(400, f"the body is not valid safetensors: {exc}") from exc


async def update_weights(state: ServerState, request: Request) -> JSONResponse:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/octet-stream":
        version, mode, recompute = update_options(request.query_params)
        async with state.receive_buffer.lock:  # the tensors are views of the shared buffer
            weights: Any = await tensors_from_body(request, state.config.max_update_bytes,
                                                   state.receive_buffer)
            new = await engine_call(
                state, lambda e: e.update_weights(weights, version, recompute_kv=recompute), mode)
    else:
        body = await json_body(request)
        version, mode, recompute = update_options(body)
        path = path_under(state.config.weights_dir, body.get("path"), "path")
        new = await engine_call(
            state, lambda e: e.update_weights(path, version, recompute_kv=recompute), mode)
    return JSONResponse({"policy_version": new, "mode": mode})


def adapter_name(body: dict[str, Any], default: str) -> str:
    name = body.get("adapter_name") or default
    if not isinstance(name, str):
        raise APIError(400, "adapter_name must be a string", "adapter_name")
    return name


async def load_adapter(state: ServerState, request: Request) -> JSONResponse:
    body = await json_body(request)
    path = path_under(state.config.weights_dir, body.get("adapter_path"), "adapter_path")
    name = adapter_name(body, path.name)
    version = await engine_call(state, lambda e: e.load_lora(name, path))
    return reply(state, adapter_name=name, adapter_version=version)


def save_upload(parts: list[tuple[str, str | None, bytes]], dest: Path, limit: int) -> Path:
    """Write the uploaded files (or unpack the one zip) under `dest`; the adapter folder."""
    files = [(filename, data) for _, filename, data in parts if filename is not None]
    if not files:
        raise APIError(400, "upload_adapter needs the adapter's files or one .zip")
    if len(files) == 1 and files[0][0].lower().endswith(".zip"):
        archive = dest / "upload.zip"
        archive.write_bytes(files[0][1])
        extract_zip(archive, dest / "adapter", limit)
        return adapter_folder(dest / "adapter")
    folder = dest / "adapter"
    folder.mkdir()
    for filename, data in files:
        (folder / plain_name(filename)).write_bytes(data)
    return adapter_folder(folder)


async def upload_adapter(state: ServerState, request: Request) -> JSONResponse:
    limit = state.config.max_upload_bytes
    data = await read_limited(request, limit, "the adapter upload")
    parts = parse_multipart(request.headers.get("content-type", ""), bytes(data))
    fields = {name: value.decode() for name, filename, value in parts if filename is None}
    name = fields.get("adapter_name")
    if not name:
        raise APIError(400, "upload_adapter needs an adapter_name field", "adapter_name")
    tmp = Path(tempfile.mkdtemp(prefix="rlserve-upload-"))
    try:
        folder = save_upload(parts, tmp, limit)
        version = await engine_call(state, lambda e: e.load_lora(name, folder))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the engine holds the tensors in memory
    return reply(state, adapter_name=name, adapter_version=version)


def admin_router(state: ServerState) -> APIRouter:
    """The admin routes bound to `state`, guarded by `--admin-key` when set."""
    router = APIRouter(dependencies=[Depends(require_admin_key(state.config.admin_key))])

    @router.post("/update_weights")
    async def update_weights_route(request: Request) -> JSONResponse:
        return await update_weights(state, request)

    @router.post("/load_adapter")
    async def load_adapter_route(request: Request) -> JSONResponse:
        return await load_adapter(state, request)

    @router.post("/upload_adapter")
    async def upload_adapter_route(request: Request) -> JSONResponse:
        return await upload_adapter(state, request)

    @router.post("/unload_adapter")
    async def unload_adapter_route(request: Request) -> JSONResponse:
        name = (await json_body(request)).get("adapter_name")
        await engine_call(state, lambda e: e.unload_lora(name))
        return reply(state, adapter_name=name)

    @router.post("/pause")
    async def pause_route(request: Request) -> JSONResponse:
        mode = (await json_body(request)).get("mode", "keep")
        await engine_call(state, lambda e: e.pause(mode))
        return reply(state, paused=mode)

    @router.post("/resume")
    async def resume_route(request: Request) -> JSONResponse:
        recompute = bool((await json_body(request)).get("recompute_kv", False))
        await engine_call(state, lambda e: e.resume(recompute_kv=recompute))
        return reply(state, paused=None)

    @router.post("/abort")
    async def abort_route(request: Request) -> JSONResponse:
        request_id = (await json_body(request)).get("request_id")
        if request_id is not None and not isinstance(request_id, str):
            raise APIError(400, "request_id must be a string", "request_id")
        return reply(state, aborted=await state.loop.abort_requests(request_id))

    @router.get("/policy_version")
    async def policy_version_route() -> JSONResponse:
        return reply(state, paused=state.loop.engine.paused)

    return router

