"""Safe file handling for the admin routes: paths under `--weights-dir`, size-limited
request bodies, multipart uploads and zip archives (no `..`, no links out, no bombs)."""

from __future__ import annotations

import email.parser
import email.policy
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import Request

from rlserve.server.errors import APIError

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def path_under(weights_dir: str | None, given: Any, param: str) -> Path:
    """`given` resolved (links followed) inside `weights_dir`; 403 when path loading is
    off, 400 when the path escapes the folder or is not a string."""
    if not weights_dir:
        raise APIError(
            403, "path-based loading is disabled; start the server with --weights-dir", param
        )
    if not isinstance(given, str) or not given:
        raise APIError(400, f"{param} must be a non-empty string", param)
    root = Path(weights_dir).resolve()
    target = (root / given).resolve()
    if target != root and root not in target.parents:
        raise APIError(400, f"{param} {given!r} is outside --weights-dir", param)
    if not target.exists():
        raise APIError(400, f"{param} {given!r} does not exist under --weights-dir", param)
    return target


def too_large(limit: int, what: str) -> APIError:
    return APIError(413, f"{what} is larger than the server's limit of {limit} bytes")


async def read_limited(request: Request, limit: int, what: str) -> bytearray:
    """The request body, read as it streams in; 413 as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large(limit, what)
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise too_large(limit, what)
    return data


def parse_multipart(content_type: str, body: bytes) -> list[tuple[str, str | None, bytes]]:
    """(field name, file name or None, content) for each part of a multipart/form-data
    body (stdlib parser: the server does not depend on python-multipart)."""
    if not content_type.lower().startswith("multipart/form-data"):
        raise APIError(400, "upload_adapter needs a multipart/form-data body")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise APIError(400, "malformed multipart body")
    parts = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            raise APIError(400, "a multipart part has no field name")
        payload = part.get_payload(decode=True) or b""
        parts.append((str(name), part.get_filename(), payload))
    return parts


def plain_name(name: str) -> str:
    """A bare file name (no folders, no `..`); 400 otherwise."""
    base = PurePosixPath(name.replace("\\", "/")).name
    if not base or base in (".", "..") or base != name:
        raise APIError(400, f"upload file name {name!r} must be a plain file name")
    return base


def extract_zip(archive: Path, dest: Path, limit: int) -> None:
    """Unpack `archive` into `dest`, refusing absolute paths, `..`, links and an
    uncompressed size over `limit` (413)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for member in members:
                parts = PurePosixPath(member.filename.replace("\\", "/"))
                if parts.is_absolute() or ".." in parts.parts or ":" in member.filename:
                    raise APIError(400, f"zip member {member.filename!r} escapes the archive")
                if (member.external_attr >> 16) & 0o170000 == 0o120000:
                    raise APIError(400, f"zip member {member.filename!r} is a link")
            if sum(m.file_size for m in members) > limit:
                raise too_large(limit, "the unpacked zip")
            zf.extractall(dest)
    except zipfile.BadZipFile as exc:
        raise APIError(400, f"the uploaded zip is not valid: {exc}") from exc


def adapter_folder(root: Path) -> Path:
    """The folder under `root` holding `adapter_config.json` (the zip may nest one)."""
    configs = sorted(root.rglob("adapter_config.json"))
    if not configs:
        raise APIError(400, "the upload has no adapter_config.json")
    return configs[0].parent
