"""Admin calls of the blocking `Client`: weights, adapters, pause/resume/abort."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx

from rlserve.client.admin_payloads import (
    adapter_fields,
    update_json,
    update_query,
    upload_files,
)
from rlserve.client.errors import APIConnectionError, APIStatusError
from rlserve.client.payloads import decode_body
from rlserve.client.safetensors_stream import safetensors_stream


class SyncAdmin:
    """Mixed into `Client`; every call returns the server's JSON (with `policy_version`)."""

    _http: httpx.Client
    _admin_headers: Any  # from ClientBase
    _weight_sync: Any

    def update_weights(
        self,
        weights: Mapping[str, Any] | Iterable[tuple[str, Any]],
        version: int | None = None,
        mode: str = "keep",
        recompute_kv: bool = False,
    ) -> dict[str, Any]:
        """Stream `weights` (state dict or (name, tensor) pairs) as safetensors bytes to
        `POST /update_weights`. With a weight-sync controller, clients sharing it freeze
        until the update is done, then see the new version."""
        query = update_query(version, mode, recompute_kv)
        with self._weight_sync() as record:
            length, chunks = safetensors_stream(weights)
            headers = {"content-type": "application/octet-stream",
                       "content-length": str(length)}
            result = self._admin("POST", "/update_weights", params=query, headers=headers,
                                 content=chunks)
            record(result)
        return result

    def update_weights_from_path(
        self, path: str, version: int | None = None, mode: str = "keep",
        recompute_kv: bool = False,
    ) -> dict[str, Any]:
        """Load a safetensors file/folder at `path` (relative to the server's --weights-dir)."""
        with self._weight_sync() as record:
            body = update_json(path, version, mode, recompute_kv)
            result = self._admin("POST", "/update_weights", json=body)
            record(result)
        return result

    def load_adapter(self, path: str, name: str | None = None) -> dict[str, Any]:
        """Load the PEFT adapter at `path` (under the server's --weights-dir) as `name`.

        Without a name it becomes the policy (seed 002's hot reload): it replaces the
        server's default adapter (what requests naming no model run on) in place, or
        becomes the default when there is none, and the policy version advances. Changed
        behaviour: an unnamed load used to add an adapter beside the default; pass `name`
        for that (a named load adds a model id and leaves the default alone)."""
        body = {"adapter_path": str(path), **adapter_fields(name)}
        return self._admin("POST", "/load_adapter", json=body)

    def upload_adapter(self, path: str | Path, name: str | None = None) -> dict[str, Any]:
        """Upload a local adapter folder (or .zip) and load it as `name`. Without a name
        it replaces the default adapter and advances the policy version, exactly like
        `load_adapter` (changed behaviour too)."""
        data = adapter_fields(name)
        return self._admin("POST", "/upload_adapter", data=data, files=upload_files(path))

    def unload_adapter(self, name: str) -> dict[str, Any]:
        """Remove adapter `name` (409 while requests still run on it); unloading the
        default adapter makes requests naming no model run on the base weights."""
        return self._admin("POST", "/unload_adapter", json={"adapter_name": name})

    def pause(self, mode: str = "keep") -> dict[str, Any]:
        """Pause generation ("keep", "wait" or "abort"; see `Engine.pause`)."""
        return self._admin("POST", "/pause", json={"mode": mode})

    def resume(self, recompute_kv: bool = False) -> dict[str, Any]:
        return self._admin("POST", "/resume", json={"recompute_kv": recompute_kv})

    def abort(self, request_id: str | None = None) -> dict[str, Any]:
        """Abort one request (its `request_id`) or, with None, every request."""
        return self._admin("POST", "/abort", json={"request_id": request_id})

    def policy_version(self) -> int:
        return int(self._admin("GET", "/policy_version")["policy_version"])

    def _admin(self, method: str, path: str, **options: Any) -> Any:
        headers = {**self._admin_headers(), **options.pop("headers", {})}
        try:
            response = self._http.request(method, path, headers=headers, **options)
        except httpx.TransportError as exc:
            raise APIConnectionError(f"{method} {path}: {exc!r}") from exc
        if response.status_code >= 400:
            raise APIStatusError(response.status_code, decode_body(response))
        return decode_body(response)

