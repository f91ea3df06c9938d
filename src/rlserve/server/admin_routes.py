"""RL admin routes: weight updates, LoRA adapters, pause/resume/abort, policy version.

Every response carries the engine's `policy_version`, already visible in `/health` and
`/metrics` when the response arrives. Access: `Authorization: Bearer <admin-key>`, or the
`--api-key` when no admin key is set; with neither, only loopback clients (403 for
others) unless `--allow-open-admin`. Paths are only read under `--weights-dir`.

A weight update is checked (file read, every name/shape/dtype, the version) before
anything is paused or aborted: a bad update is refused with 400 and no request loses its
output.

The default adapter (what requests naming no model run on) is the `--adapter-path` one.
Loading an adapter without `adapter_name` (seed 002's hot reload) makes it the policy: it
replaces the default adapter in place (same model id, new weights), or becomes the
default under its folder's name when there is none; either way the policy version
advances. A named load adds a model id and leaves the default alone. Unloading the
default adapter makes unnamed requests run on the base weights again.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from rlserve.server.admin_files import (
    MAX_NAME_CHARS,
    adapter_folder,
    check_adapter_config,
    extract_zip,
    form_fields,
    parse_multipart,
    path_under,
    plain_name,
    read_limited,
    shown,
)
from rlserve.server.config import ServerConfig, is_loopback
from rlserve.server.errors import APIError
from rlserve.server.safetensors_body import ReceiveBuffer, parse_safetensors, read_body
from rlserve.server.state import ServerState

UPDATE_MODES = ("keep", "wait", "abort")
UPLOAD_DEFAULT_NAME = "adapter"  # a multi-file upload with no name and no default adapter
_INT = re.compile(r"-?[0-9]{1,19}")
_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")

Guard = Callable[[Request], Awaitable[None]]


def admin_guard(config: ServerConfig) -> Guard:
    """The dependency guarding the admin routes: the admin key (or the API key) as bearer
    token (401), else loopback clients only (403), else (`allow_open_admin`) nothing."""
    key = config.admin_key or config.api_key
    if key:
        return _bearer_guard(key)
    if config.allow_open_admin:
        return _open_guard
    return _loopback_guard


def _bearer_guard(key: str) -> Guard:
    expected = f"Bearer {key}".encode()

    async def check(request: Request) -> None:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise APIError(
                401,
                "admin route: missing or wrong admin key "
                "(send 'Authorization: Bearer <admin-key>')",
            )

    return check


async def _open_guard(request: Request) -> None:
    return None


async def _loopback_guard(request: Request) -> None:
    host = request.client.host if request.client else None
    if not is_loopback(host):
        raise APIError(
            403,
            "admin routes only answer loopback clients when the server has "
            "no --admin-key or --api-key",
        )


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
    given); the engine's ValueError/OSError/KeyError -> 400 without server paths."""
    try:
        if mode is None:
            return await state.loop.call(fn, check=check)
        return await state.loop.update(fn, mode, check=check)
    except (ValueError, OSError, KeyError) as exc:
        message = hide_server_paths(str(exc).strip("'\""), state, folders or {})
        raise APIError(400, message) from exc


def reply(state: ServerState, **fields: Any) -> JSONResponse:
    return JSONResponse({**fields, "policy_version": state.loop.engine.policy_version})


async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise APIError(400, f"malformed JSON body: {str(exc)[:200]}") from exc
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    return data


def as_bool(value: Any, param: str) -> bool:
    """A JSON boolean, or its spelling in a query string ("true"/"false", "1"/"0")."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise APIError(400, f"{param} must be true or false, got {shown(value)}", param)


def as_version(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and _INT.fullmatch(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise APIError(400, f"version must be an integer, got {shown(value)}", "version")
    return value


def update_options(source: Any) -> tuple[int | None, str, bool]:
    """(version, mode, recompute_kv) from a JSON body or the query string."""
    mode = source.get("mode") or "keep"
    if not isinstance(mode, str) or mode not in UPDATE_MODES:
        raise APIError(400, f"mode must be one of {UPDATE_MODES}, got {shown(mode)}", "mode")
    recompute = as_bool(source.get("recompute_kv", False), "recompute_kv")
    return as_version(source.get("version")), mode, recompute


def version_check(version: int | None) -> Callable[[Any], None]:
    """Engine thread, before any pause or abort: `version` must move the policy forward."""

    def check(engine: Any) -> None:
        current = engine.policy_version
        if version is not None and version <= current:
            raise ValueError(
                f"version must be an integer > the current policy version {current}, got {version}"
            )

    return check


def checked_weights(state: ServerState, items: Any) -> Any:
    """`items` checked against the served model's names, shapes and dtypes (400)."""
    model = getattr(state.loop.engine, "model", None)
    if model is None or not hasattr(model, "hf_weight_targets"):
        return items  # an engine without a local model checks for itself
    from rlserve.models.loader import check_weights

    try:
        return check_weights(model, items)
    except ValueError as exc:
        raise APIError(400, str(exc)) from exc


def read_checked_weights(state: ServerState, path: Path, given: str) -> Any:
    """Worker thread: the safetensors at `path` read into memory and checked (400)."""
    from rlserve.models.loader import read_safetensors

    try:
        items = read_safetensors(path, given)
    except ValueError as exc:
        raise APIError(400, hide_server_paths(str(exc), state, {})) from exc
    return checked_weights(state, items)


async def tensors_from_body(
    request: Request, limit: int, receive_buffer: ReceiveBuffer
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
    """Read and check the update first, then pause/abort per `mode`, then commit."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/octet-stream":
        version, mode, recompute = update_options(request.query_params)
        async with state.receive_buffer.lock:  # the tensors are views of the shared buffer
            tensors = await tensors_from_body(
                request, state.config.max_update_bytes, state.receive_buffer
            )
            weights = checked_weights(state, list(tensors.items()))
            new = await engine_call(
                state,
                lambda e: e.update_weights(weights, version, recompute_kv=recompute),
                mode,
                check=version_check(version),
            )
    else:
        body = await json_body(request)
        version, mode, recompute = update_options(body)
        path = path_under(state.config.weights_dir, body.get("path"), "path")
        weights = await asyncio.to_thread(read_checked_weights, state, path, body["path"])
        new = await engine_call(
            state,
            lambda e: e.update_weights(weights, version, recompute_kv=recompute),
            mode,
            check=version_check(version),
        )
    return JSONResponse({"policy_version": new, "mode": mode})


def adapter_name(value: Any, state: ServerState) -> str | None:
    """The `adapter_name` a request gives (None: not given); 400 unless a usable id."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise APIError(
            400, f"adapter_name must be a string, got a {type(value).__name__}", "adapter_name"
        )
    if len(value) > MAX_NAME_CHARS or not value.isprintable():
        raise APIError(
            400,
            f"adapter_name {shown(value)} must be printable and at most "
            f"{MAX_NAME_CHARS} characters",
            "adapter_name",
        )
    if value in (state.model_name, state.model_path):
        raise APIError(400, f"adapter_name {shown(value)} is the base model's id", "adapter_name")
    return value


async def install_adapter(
    state: ServerState,
    folder: Path,
    name: str | None,
    fallback: str,
    origin: str,
    folders: dict[str, str] | None = None,
) -> JSONResponse:
    """Load the adapter in `folder` as `name`; with no name it becomes the policy (see the
    module docstring) under the default adapter's name, or `fallback` when none."""
    check_adapter_config(folder, origin)
    as_policy = name is None
    target = name or state.current_default_adapter() or fallback

    def load(engine: Any) -> int:
        return engine.load_lora(target, folder, new_policy=as_policy)

    version = await engine_call(state, load, folders=folders)
    if as_policy:
        state.default_adapter = target
    return reply(
        state,
        status="success",
        message=f"Loaded adapter from {origin}",
        adapter_name=target,
        adapter_version=version,
        default=target == state.current_default_adapter(),
    )


async def load_adapter(state: ServerState, request: Request) -> JSONResponse:
    body = await json_body(request)
    name = adapter_name(body.get("adapter_name"), state)
    path = path_under(state.config.weights_dir, body.get("adapter_path"), "adapter_path")
    fallback = adapter_name(path.name, state) or UPLOAD_DEFAULT_NAME
    return await install_adapter(state, path, name, fallback, body["adapter_path"])


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


def upload_fallback_name(parts: list[tuple[str, str | None, bytes]]) -> str:
    """The name of an unnamed upload when there is no default adapter: the zip's stem."""
    files = [filename for _, filename, _ in parts if filename]
    if len(files) == 1 and files[0].lower().endswith(".zip"):
        stem = PurePosixPath(files[0].replace("\\", "/")).name[: -len(".zip")]
        if stem and stem.isprintable() and len(stem) <= MAX_NAME_CHARS:
            return stem
    return UPLOAD_DEFAULT_NAME


async def upload_adapter(state: ServerState, request: Request) -> JSONResponse:
    limit = state.config.max_upload_bytes
    data = await read_limited(request, limit, "the adapter upload")
    parts = parse_multipart(request.headers.get("content-type", ""), bytes(data))
    name = adapter_name(form_fields(parts).get("adapter_name"), state)
    fallback = upload_fallback_name(parts)
    if fallback in (state.model_name, state.model_path):
        fallback = UPLOAD_DEFAULT_NAME
    tmp = Path(tempfile.mkdtemp(prefix="rlserve-upload-"))
    try:
        folder = save_upload(parts, tmp, limit)
        return await install_adapter(
            state, folder, name, fallback, "the upload", folders={str(tmp): "<upload>"}
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the engine holds the tensors in memory


async def unload_adapter(state: ServerState, request: Request) -> JSONResponse:
    name = adapter_name((await json_body(request)).get("adapter_name"), state)
    if name is None:
        raise APIError(400, "unload_adapter needs an adapter_name", "adapter_name")
    await engine_call(state, lambda e: e.unload_lora(name))
    if name == state.default_adapter:
        state.default_adapter = None  # unnamed requests run on the base weights again
    return reply(state, adapter_name=name)


def admin_router(state: ServerState) -> APIRouter:
    """The admin routes bound to `state`, guarded as `admin_guard` says."""
    router = APIRouter(dependencies=[Depends(admin_guard(state.config))])

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
        mode = (await json_body(request)).get("mode", "keep")
        if not isinstance(mode, str) or mode not in UPDATE_MODES:
            raise APIError(400, f"mode must be one of {UPDATE_MODES}, got {shown(mode)}", "mode")
        await state.loop.pause(mode)
        return reply(state, paused=mode)

    @router.post("/resume")
    async def resume_route(request: Request) -> JSONResponse:
        body = await json_body(request)
        recompute = as_bool(body.get("recompute_kv", False), "recompute_kv")
        await state.loop.resume(recompute_kv=recompute)
        return reply(state, paused=state.loop.engine.paused)

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
