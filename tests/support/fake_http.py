"""`FakeHTTPServer`: a real tiny HTTP server on a free loopback port whose answers come
from a Python callable, for client tests that need no engine."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Reply = tuple[int, Any, dict[str, str]]


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeHTTPServer:
    """Answers every request with `handler(recorded_request, call_number)`.

    A reply body that is a str is sent as-is (e.g. SSE text); anything else as JSON.
    """

    handler: Callable[[Recorded, int], Reply]
    requests: list[Recorded] = field(default_factory=list)

    def __post_init__(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                rec = Recorded(self.command, self.path, dict(self.headers.items()), body)
                outer.requests.append(rec)
                status, payload, headers = outer.handler(rec, len(outer.requests))
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload)
                data = data.encode() if isinstance(data, str) else data
                self.send_response(status)
                content_type = "text/event-stream" if isinstance(payload, str) else "json"
                self.send_header("content-type", headers.pop("content-type", content_type))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first (timeout tests): nothing to answer

            do_GET = do_POST = _serve

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
