"""The adapter routes: `/load_adapter` (a folder under `--weights-dir`), `/upload_adapter`
(its files, or one zip) and `/unload_adapter`.

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

import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import JSONResponse

from rlserve.server.admin_engine import engine_call, reply
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
from rlserve.server.admin_options import json_body
from rlserve.server.body_limits import read_limited
from rlserve.server.errors import APIError, shown
from rlserve.server.state import ServerState

if TYPE_CHECKING:
    from rlserve.engine.core import EngineCore

FALLBACK_ADAPTER_NAME = "adapter"  # an unnamed new default whose folder name is not usable


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

        def load(engine: EngineCore) -> int:
            return engine.load_lora(target, folder, new_policy=as_policy)

        version = await engine_call(state, load, folders=folders)
        if folders is None:  # a path the client gave; an upload has none to show
            state.adapter_roots[target] = origin
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
    await unload_adapter_named(state, name)
    return reply(
        state, status="success", message=f"Unloaded adapter {shown(name)}", adapter_name=name
    )


async def unload_adapter_named(state: ServerState, name: str) -> None:
    """Forget adapter `name` (409 while requests use it); unloading the default adapter
    makes unnamed requests run on the base weights again."""
    async with state.adapter_lock:
        await engine_call(state, lambda e: e.unload_lora(name))
        state.adapter_roots.pop(name, None)
        if name == state.default_adapter:
            state.default_adapter = None
