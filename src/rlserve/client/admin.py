"""The admin calls of both clients, written once: weights, adapters, pause/resume/abort.

Every call carries the admin bearer token, is sent once (no retry: an update must not be
applied twice) and returns the server's JSON (with `policy_version`); on the
`AsyncClient` each returns an awaitable of it (see `endpoints`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from rlserve.client.base import ClientBase
from rlserve.client.effects import Flow
from rlserve.client.flows import decoded
from rlserve.client.payloads import PreparedCall
from rlserve.client.safetensors_stream import safetensors_stream
from rlserve.pause_mode import PauseMode


class Admin(ClientBase):
    """Mixed into `Client` and `AsyncClient`."""

    def update_weights(
        self,
        weights: Mapping[str, Any] | Iterable[tuple[str, Any]],
        version: int | None = None,
        mode: PauseMode | str = PauseMode.KEEP,
        recompute_kv: bool = False,
    ) -> Any:
        """Stream `weights` (state dict or (name, tensor) pairs) as safetensors bytes to
        `POST /update_weights`. With a weight-sync controller, clients sharing it freeze
        until the update is done, then see the new version."""
        return self._run(self._streamed_update(weights, version, mode, recompute_kv))

    def update_weights_from_path(
        self,
        path: str,
        version: int | None = None,
        mode: PauseMode | str = PauseMode.KEEP,
        recompute_kv: bool = False,
    ) -> Any:
        """Load a safetensors file/folder at `path` (relative to the server's --weights-dir)."""
        mode = PauseMode.parse(mode).value
        body: dict[str, Any] = {"path": str(path), "mode": mode, "recompute_kv": recompute_kv}
        if version is not None:
            body["version"] = version
        call = self._admin_call("POST", "/update_weights", body)
        return self._run(self._weights_update(lambda: call))

    def load_adapter(self, path: str, name: str | None = None) -> Any:
        """Load the PEFT adapter at `path` (under the server's --weights-dir) as `name`.

        Without a name it becomes the policy (seed 002's hot reload): it replaces the
        server's default adapter (what requests naming no model run on) in place, or
        becomes the default when there is none, and the policy version advances. Changed
        behaviour: an unnamed load used to add an adapter beside the default; pass `name`
        for that (a named load adds a model id and leaves the default alone)."""
        body = {"adapter_path": str(path), **_adapter_fields(name)}
        return self._run(self._admin("POST", "/load_adapter", body))

    def upload_adapter(self, path: str | Path, name: str | None = None) -> Any:
        """Upload a local adapter folder (or .zip) and load it as `name`. Without a name
        it replaces the default adapter and advances the policy version, exactly like
        `load_adapter` (changed behaviour too)."""
        return self._run(self._upload_adapter(path, name))

    def unload_adapter(self, name: str) -> Any:
        """Remove adapter `name` (409 while requests still run on it); unloading the
        default adapter makes requests naming no model run on the base weights."""
        return self._run(self._admin("POST", "/unload_adapter", {"adapter_name": name}))

    def pause(self, mode: PauseMode | str = PauseMode.KEEP) -> Any:
        """Pause generation ("keep", "wait" or "abort"; see `PauseMode`)."""
        return self._run(self._admin("POST", "/pause", {"mode": PauseMode.parse(mode).value}))

    def resume(self, recompute_kv: bool = False) -> Any:
        return self._run(self._admin("POST", "/resume", {"recompute_kv": recompute_kv}))

    def abort(self, request_id: str | None = None) -> Any:
        """Abort one request (its `request_id`) or, with None, every request."""
        return self._run(self._admin("POST", "/abort", {"request_id": request_id}))

    def admin_request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Any other admin route (e.g. SGLang's or vLLM's), sent once with the admin
        token; the server's decoded JSON."""
        return self._run(self._admin(method, path, body))

    def policy_version(self) -> Any:
        """The server's policy version (an int)."""
        return self._run(self._policy_version())

    def _policy_version(self) -> Flow[int]:
        return int((yield from self._admin("GET", "/policy_version"))["policy_version"])

    def _streamed_update(
        self, weights: Any, version: int | None, mode: PauseMode | str, recompute_kv: bool
    ) -> Flow[Any]:
        query: dict[str, Any] = {"mode": PauseMode.parse(mode).value}
        query["recompute_kv"] = "true" if recompute_kv else "false"
        if version is not None:
            query["version"] = str(version)

        def call() -> PreparedCall:
            length, chunks = safetensors_stream(weights)
            headers = {"content-type": "application/octet-stream", "content-length": str(length)}
            upload = {"content": chunks}
            return self._admin_call(
                "POST", "/update_weights", params=query, headers=headers, upload=upload
            )

        return (yield from self._weights_update(call))

    def _weights_update(self, build: Callable[[], PreparedCall]) -> Flow[Any]:
        """Send the update `build()` makes while the weight-sync controller (if any) marks
        a sync, and record the server's new `policy_version` on it."""
        with self._weight_sync() as record:
            result = yield from decoded(self, build())
            record(result)
        return result

    def _upload_adapter(self, path: str | Path, name: str | None) -> Flow[Any]:
        upload = {"data": _adapter_fields(name), "files": _upload_files(path)}
        return (yield from self._admin("POST", "/upload_adapter", upload=upload))

    def _admin(
        self, method: str, path: str, body: dict[str, Any] | None = None, **options: Any
    ) -> Flow[Any]:
        return (yield from decoded(self, self._admin_call(method, path, body, **options)))

    def _admin_call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        upload: dict[str, Any] | None = None,
    ) -> PreparedCall:
        headers = {**self._admin_headers(), **(headers or {})}
        return PreparedCall(
            path, body or {}, headers, params or {}, method=method, admin=True, upload=upload
        )


def _upload_files(path: str | Path) -> list[tuple[str, tuple[str, bytes, str]]]:
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


def _adapter_fields(name: str | None) -> dict[str, str]:
    """The `adapter_name` of an adapter load, or nothing: the server then makes the adapter
    the policy (its default adapter) and advances the policy version."""
    return {"adapter_name": name} if name else {}
