"""The real rlserve app under uvicorn in a background thread (`RunningServer`), shared
per session by name (`shared_server`, `main_server`), and the polling helpers around it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any


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


def admin_server(
    make_engine: Callable[..., Any], checkpoint: str, weights_dir: Any, admin_key: str
) -> Iterator[RunningServer]:
    """A module's own server for the admin-route tests: `checkpoint` behind `admin_key`,
    with `weights_dir` as its --weights-dir (a fixture body: `yield from admin_server(...)`)."""
    from rlserve.server import ServerConfig

    engine = make_engine(checkpoint, num_blocks=64, block_size=8)
    running = RunningServer(engine, ServerConfig(admin_key=admin_key, weights_dir=str(weights_dir)))
    try:
        yield running
    finally:
        running.close()
