"""Shared helpers for the server/client tests (imported explicitly, not a pytest conftest).

`FakeHTTPServer`: a real tiny HTTP server on a free loopback port whose answers come
from a Python callable, for client tests that need no engine.
`RunningServer`: the real rlserve app under uvicorn in a background thread.
"""

from __future__ import annotations

import json
import socket
import threading
import time
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


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll `predicate` until it holds or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


class RunningServer:
    """An rlserve app served by uvicorn on a free loopback port, in a background thread."""

    def __init__(self, engine: Any, config: Any) -> None:
        import uvicorn

        from rlserve.server import create_app

        self.engine = engine
        self.app = create_app(engine, config)
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning")
        )
        self._thread = threading.Thread(target=self.server.run, daemon=True)
        self._thread.start()
        if not wait_until(lambda: self.server.started, timeout=60):
            raise RuntimeError("the test server did not start")
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def idle(self) -> bool:
        """No request in the engine and every KV block free (read-only peek)."""
        stats = self.app.state.rlserve.loop.stats()
        return (
            not self.engine.has_unfinished_requests()
            and stats["queue_depth"] == 0
            and self.engine.block_manager.num_used_blocks == 0
        )

    def close(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)


_SERVERS: dict[str, RunningServer] = {}


def shared_server(name: str, make: Callable[[], RunningServer], pytestconfig: Any) -> RunningServer:
    """One server per `name` for the whole session, whichever test module asks first;
    closed when the session ends."""
    if name not in _SERVERS:
        server = _SERVERS[name] = make()

        def close() -> None:
            server.close()
            _SERVERS.pop(name, None)

        pytestconfig.add_cleanup(close)
    return _SERVERS[name]


# The server most tests share: the bundled model behind default batching knobs.
MAIN_SERVER_CONFIG = {"max_tokens": 64, "max_batch": 64, "flush_interval_ms": 5.0}
TEST_MODEL: str | None = None  # the bundled model


def main_server(make_engine: Callable[..., Any], pytestconfig: Any) -> RunningServer:
    from rlserve.server import ServerConfig

    def make() -> RunningServer:
        engine = make_engine(TEST_MODEL, max_num_seqs=64)
        return RunningServer(engine, ServerConfig(**MAIN_SERVER_CONFIG))

    return shared_server("main", make, pytestconfig)
