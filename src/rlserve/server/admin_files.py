"""Safe file handling for the admin routes: paths under `--weights-dir`, adapter configs,
multipart uploads and zip archives (no `..`, no links out, no bombs)."""

from __future__ import annotations

import email.parser
import email.policy
import json
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from rlserve.models import lora
from rlserve.server.body_limits import too_large
from rlserve.server.errors import APIError, shown

MAX_PATH_CHARS = 1024  # far beyond any real checkpoint path; longer is an error, not a path
MAX_NAME_CHARS = 255  # one path component (the usual file-system limit)
MAX_CONFIG_BYTES = 2**20


def path_under(weights_dir: str | None, given: Any, param: str) -> Path:
    """`given` resolved (links followed) inside `weights_dir`; 403 when path loading is
    off, 400 when the path escapes the folder or is not a string."""
    if not weights_dir:
        raise APIError(
            403, "path-based loading is disabled; start the server with --weights-dir", param
        )
    if not isinstance(given, str) or not given:
        raise APIError(400, f"{param} must be a non-empty string", param)
    if (
        "\0" in given
        or len(given) > MAX_PATH_CHARS
        or any(len(part) > MAX_NAME_CHARS for part in given.split("/"))
    ):
        raise APIError(
            400,
            f"{param} {shown(given)} is not a usable path (NUL byte, or "
            f"longer than {MAX_PATH_CHARS} characters / {MAX_NAME_CHARS} per "
            "name)",
            param,
        )
    root = Path(weights_dir).resolve()
    try:
        target = (root / given).resolve()
        exists = target.exists()
    except (OSError, ValueError) as exc:  # a link loop, a name the file system refuses
        raise APIError(
            400, f"{param} {shown(given)} is not a usable path: {type(exc).__name__}", param
        ) from exc
    if target != root and root not in target.parents:
        raise APIError(400, f"{param} {shown(given)} is outside --weights-dir", param)
    if not exists:
        raise APIError(400, f"{param} {shown(given)} does not exist under --weights-dir", param)
    return target


def check_adapter_config(folder: Path, origin: str) -> None:
    """400 unless `folder`'s adapter_config.json is a small JSON file the engine's loader
    accepts (`lora.check_adapter_config`), checked before anything is handed to the engine."""
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise APIError(400, f"{origin} has no adapter_config.json")
    if config_file.stat().st_size > MAX_CONFIG_BYTES:
        raise APIError(400, f"the adapter_config.json of {origin} is over {MAX_CONFIG_BYTES} bytes")
    try:
        config = json.loads(config_file.read_bytes())
    except (ValueError, RecursionError) as exc:
        raise APIError(400, f"the adapter_config.json of {origin} is not valid JSON") from exc
    try:
        lora.check_adapter_config(origin, config)
    except ValueError as exc:
        raise APIError(400, str(exc)) from exc


def form_fields(parts: list[tuple[str, str | None, bytes]]) -> dict[str, str]:
    """The text fields of a multipart body (parts without a file name); 400 if not UTF-8."""
    fields = {}
    for name, filename, value in parts:
        if filename is None:
            try:
                fields[name] = value.decode()
            except UnicodeDecodeError as exc:
                raise APIError(400, f"form field {shown(name)} is not UTF-8 text", name) from exc
    return fields


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
    if (
        not base
        or base in (".", "..")
        or base != name
        or "\0" in name
        or len(name) > MAX_NAME_CHARS
    ):
        raise APIError(400, f"upload file name {shown(name)} must be a plain file name")
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
                    raise APIError(400, f"zip member {shown(member.filename)} escapes the archive")
                if (member.external_attr >> 16) & 0o170000 == 0o120000:
                    raise APIError(400, f"zip member {shown(member.filename)} is a link")
            if sum(m.file_size for m in members) > limit:
                raise too_large(limit, "--max-upload-bytes", "the unpacked zip")
            zf.extractall(dest)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise APIError(400, f"the uploaded zip cannot be unpacked: {type(exc).__name__}") from exc


def adapter_folder(root: Path) -> Path:
    """The folder under `root` holding `adapter_config.json` (the zip may nest one)."""
    configs = sorted(root.rglob("adapter_config.json"))
    if not configs:
        raise APIError(400, "the upload has no adapter_config.json")
    return configs[0].parent
