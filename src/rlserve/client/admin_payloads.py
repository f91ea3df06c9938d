"""Request building for the admin calls shared by the sync and async clients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

UPDATE_MODES = ("keep", "wait", "abort")


def update_query(version: int | None, mode: str, recompute_kv: bool) -> dict[str, Any]:
    """Query parameters of a streamed `POST /update_weights`."""
    if mode not in UPDATE_MODES:
        raise ValueError(f"mode must be one of {UPDATE_MODES}, got {mode!r}")
    query: dict[str, Any] = {"mode": mode, "recompute_kv": "true" if recompute_kv else "false"}
    if version is not None:
        query["version"] = str(version)
    return query


def update_json(path: str, version: int | None, mode: str, recompute_kv: bool) -> dict:
    """Body of a path-based `POST /update_weights` (the path is relative to the server's
    `--weights-dir`)."""
    body: dict[str, Any] = {"path": str(path), "mode": mode, "recompute_kv": recompute_kv}
    if version is not None:
        body["version"] = version
    return body


def upload_files(path: str | Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    """httpx `files=` for `POST /upload_adapter`: a folder's files, or one .zip."""
    path = Path(path)
    if path.is_file():
        return [("files", (path.name, path.read_bytes(), "application/zip"))]
    if not path.is_dir():
        raise ValueError(f"{path} is neither an adapter folder nor a .zip file")
    return [
        ("files", (f.name, f.read_bytes(), "application/octet-stream"))
        for f in sorted(path.iterdir())
        if f.is_file()
    ]


def adapter_fields(name: str | None) -> dict[str, str]:
    """The `adapter_name` of an adapter load, or nothing: the server then makes the adapter
    the policy (its default adapter) and advances the policy version."""
    return {"adapter_name": name} if name else {}
