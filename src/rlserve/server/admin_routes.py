"""RL admin routes: weight updates, LoRA adapters, pause/resume/abort, policy version.

Every response carries the engine's `policy_version`, already visible in `/health` and
`/metrics` when the response arrives. Access: see `auth.admin_guard`. Paths are only read
under `--weights-dir`; JSON bodies are strict and limited to `--max-request-bytes`.

A weight update is checked (file read, every name/shape/dtype, the version) before
anything is paused or aborted: a bad update is refused with 400 and no request loses its
output.

The default adapter (what requests naming no model run on) is the `--adapter-path` one.
Loading an adapter without `adapter_name` (seed 002's hot reload) makes it the policy: it
replaces the default adapter in place (same model id, new weights), or becomes the
default when there is none, named after its folder (an upload: its zip), or "adapter"
when that name is not usable; either way the policy version advances. A named load adds
a model id and leaves the default alone. Unloading the default adapter makes unnamed
requests run on the base weights again; unloading an adapter that requests still use is
refused with 409.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from rlserve.engine.engine import AdapterInUse
from rlserve.models.loader import WeightItems, check_weights, read_safetensors
from rlserve.server.admin_files import (
    MAX_NAME_CHARS,
    adapter_folder,
    check_adapter_config,
    extract_zip,
    form_fields,
    parse_multipart,
    path_under,
    plain_name,
)
from rlserve.server.admin_options import as_bool, as_mode, json_body, update_options
from rlserve.server.auth import admin_guard
from rlserve.server.body_limits import read_limited
from rlserve.server.errors import APIError, shown
from rlserve.server.safetensors_body import ReceiveBuffer, parse_safetensors, read_body
from rlserve.server.state import ServerState

FALLBACK_ADAPTER_NAME = "adapter"  # an unnamed new default whose folder name is not usable
def hide_server_paths(message: str, state: ServerState, folders: dict[str, str]) -> str:
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
    fn: Any,
    mode: str | None = None,
    check: Any = None,
    folders: dict[str, str] | None = None,
) -> Any:
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


def checked_weights(state: ServerState, items: WeightItems) -> WeightItems:
    """`items` checked against the served model's names, shapes and dtypes (400)."""
    model = getattr(state.loop.engine, "model", None)
    if model is None or not hasattr(model, "hf_weight_targets"):
        return items  # an engine without a local model checks for itself
    try:
        return check_weights(model, items)
    except ValueError as exc:
        raise APIError(400, str(exc)) from exc


def read_checked_weights(state: ServerState, path: Path) -> WeightItems:
    """Worker thread: the safetensors at `path` read into memory and checked (400)."""
    try:
        items = read_safetensors(path)
    except ValueError as exc:
        raise APIError(400, hide_server_paths(str(exc), state, {})) from exc
    return checked_weights(state, items)


async def tensors_from_body(
    request: Request, limit: int, receive_buffer: ReceiveBuffer
) -> dict[str, Any]:
    """The safetensors state dict streamed in the body; 413 over `limit`, 400 if corrupt."""
    body = await read_body(
        request, limit, "--max-update-bytes", "the weight update body", receive_buffer
    )
    if not body.numel():
        raise APIError(400, "the request body is empty; send safetensors bytes")
    try:
        return parse_safetensors(body)
    except ValueError as exc:
        raise APIError(400, f"the body is not valid safetensors: {exc}") from exc


async def commit_update(
    state: ServerState, weights: WeightItems, version: int | None, mode: str, recompute: bool
) -> int:
    """Install checked `weights` on the engine thread, pausing/aborting per `mode` once
    the version is known to be acceptable."""
    return await engine_call(
        state,
        lambda e: e.update_weights(weights, version, recompute_kv=recompute),
        mode,
        check=lambda e: e.check_version(version),
    )


async def update_weights(state: ServerState, request: Request) -> JSONResponse:
    """Read and check the update first, then pause/abort per `mode`, then commit."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/octet-stream":
        version, mode, recompute = update_options(request.query_params)
        async with state.receive_buffer.lock:  # the tensors are views of the shared buffer
            tensors = await tensors_from_body(
                request, state.config.max_update_bytes, state.receive_buffer
            )
            weights = checked_weights(state, list(tensors.items()))
            new = await commit_update(state, weights, version, mode, recompute)
    else:
        body = await json_body(request, state.config.max_request_bytes)
        version, mode, recompute = update_options(body)
        path = path_under(state.config.weights_dir, body.get("path"), "path")
        weights = await asyncio.to_thread(read_checked_weights, state, path)
        new = await commit_update(state, weights, version, mode, recompute)
    return JSONResponse({"policy_version": new, "mode": mode})


def name_problem(name: str, state: ServerState) -> str | None:
    """Why `name` cannot be an adapter's model id (None: it can)."""
    if len(name) > MAX_NAME_CHARS or not name.isprintable():
        return f"must be printable and at most {MAX_NAME_CHARS} characters"
    if name in (state.model_name, state.model_path):
        return "is the base model's id"
    return None


def adapter_name(value: Any, state: ServerState) -> str | None:
    """The `adapter_name` a request gives (None: not given); 400 unless a usable id."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise APIError(
            400, f"adapter_name must be a string, got a {type(value).__name__}", "adapter_name"
        )
    problem = name_problem(value, state)
    if problem:
        raise APIError(400, f"adapter_name {shown(value)} {problem}", "adapter_name")
    return value


def fallback_name(candidate: str | None, state: ServerState) -> str:
    """The name of an unnamed adapter that becomes the default when there is none: the
    `candidate` its folder (or zip) suggests if usable, else FALLBACK_ADAPTER_NAME."""
    if candidate and name_problem(candidate, state) is None:
        return candidate
    return FALLBACK_ADAPTER_NAME


async def install_adapter(
    state: ServerState,
    folder: Path,
    name: str | None,
    candidate: str | None,
    origin: str,
    folders: dict[str, str] | None = None,
) -> JSONResponse:
    """Load the adapter in `folder` as `name`; with no name it becomes the policy (see the
    module docstring) under the default adapter's name, or `fallback_name(candidate)`."""
    check_adapter_config(folder, origin)
    as_policy = name is None
    async with state.adapter_lock:  # no other install may change the default meanwhile
        target = name or state.current_default_adapter() or fallback_name(candidate, state)

        def load(engine: Any) -> int:
            return engine.load_lora(target, folder, new_policy=as_policy)

        version = await engine_call(state, load, folders=folders)
        if as_policy:
            state.default_adapter = target
        is_default = target == state.current_default_adapter()
    return reply(
        state,
        status="success",
        message=f"Loaded adapter from {origin}",
        adapter_name=target,
        adapter_version=version,
        default=is_default,
    )


async def load_adapter(state: ServerState, request: Request) -> JSONResponse:
    body = await json_body(request, state.config.max_request_bytes)
    name = adapter_name(body.get("adapter_name"), state)
    path = path_under(state.config.weights_dir, body.get("adapter_path"), "adapter_path")
    return await install_adapter(state, path, name, path.name, body["adapter_path"])


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


def upload_candidate(parts: list[tuple[str, str | None, bytes]]) -> str | None:
    """The name an unnamed upload suggests for itself: the stem of its one zip file."""
    files = [filename for _, filename, _ in parts if filename]
    if len(files) == 1 and files[0].lower().endswith(".zip"):
        return PurePosixPath(files[0].replace("\\", "/")).name[: -len(".zip")]
    return None


async def upload_adapter(state: ServerState, request: Request) -> JSONResponse:
    limit = state.config.max_upload_bytes
    data = await read_limited(request, limit, "--max-upload-bytes", "the adapter upload")
    parts = parse_multipart(request.headers.get("content-type", ""), bytes(data))
    name = adapter_name(form_fields(parts).get("adapter_name"), state)
    tmp = Path(tempfile.mkdtemp(prefix="rlserve-upload-"))
    try:
        folder = save_upload(parts, tmp, limit)
        candidate = upload_candidate(parts)
        return await install_adapter(
            state, folder, name, candidate, "<upload>", folders={str(tmp): "<upload>"}
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the engine holds the tensors in memory


async def unload_adapter(state: ServerState, request: Request) -> JSONResponse:
    body = await json_body(request, state.config.max_request_bytes)
    name = adapter_name(body.get("adapter_name"), state)
    if name is None:
        raise APIError(400, "unload_adapter needs an adapter_name", "adapter_name")
    async with state.adapter_lock:
        await engine_call(state, lambda e: e.unload_lora(name))
        if name == state.default_adapter:
            state.default_adapter = None  # unnamed requests run on the base weights again
    return reply(
        state, status="success", message=f"Unloaded adapter {shown(name)}", adapter_name=name
    )


def admin_router(state: ServerState) -> APIRouter:
    """The admin routes bound to `state`, guarded as `admin_guard` says."""
    router = APIRouter(dependencies=[Depends(admin_guard(state.config))])
    limit = state.config.max_request_bytes

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
        return await unload_adapter(state, request)

    @router.post("/pause")
    async def pause_route(request: Request) -> JSONResponse:
        mode = as_mode((await json_body(request, limit)).get("mode"))
        await state.loop.pause(mode)
        return reply(state, paused=mode)

    @router.post("/resume")
    async def resume_route(request: Request) -> JSONResponse:
        body = await json_body(request, limit)
        recompute = as_bool(body.get("recompute_kv", False), "recompute_kv")
        await state.loop.resume(recompute_kv=recompute)
        return reply(state, paused=state.paused)

    @router.post("/abort")
    async def abort_route(request: Request) -> JSONResponse:
        request_id = (await json_body(request, limit)).get("request_id")
        if request_id is not None and not isinstance(request_id, str):
            raise APIError(400, "request_id must be a string", "request_id")
        return reply(state, aborted=await state.loop.abort_requests(request_id))

    @router.get("/policy_version")
    async def policy_version_route() -> JSONResponse:
        return reply(state, paused=state.paused)

    return router
