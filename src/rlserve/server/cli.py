"""`rlserve serve`: load an Engine and serve it over HTTP with uvicorn."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn

from rlserve.config import EngineConfig
from rlserve.server.cli_flags import add_flags, values_of
from rlserve.server.config import ServerConfig
from rlserve.server.engine_loop import EngineLoop

if TYPE_CHECKING:
    from rlserve.engine.core import EngineCore

log = logging.getLogger("rlserve.server")


def build_parser() -> argparse.ArgumentParser:
    """The flags of ServerConfig, then those of EngineConfig (see `cli_flags`)."""
    parser = argparse.ArgumentParser(
        prog="rlserve serve",
        description="Serve a model with OpenAI-compatible and RL endpoints.",
        epilog="Many replicas behind one router: --replicas N and/or --backend-url URL "
        "(see docs/cluster.md; `rlserve serve --replicas 1 -h` lists the cluster flags).",
    )
    add_flags(parser, ServerConfig)
    add_flags(parser, EngineConfig)
    return parser


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    values = values_of(args, ServerConfig)
    if values["tool_call_parser"] == "none":
        values["tool_call_parser"] = None
    return ServerConfig(**values)


def engine_options(config: ServerConfig, args: argparse.Namespace) -> dict[str, Any]:
    """EngineConfig keyword arguments: its own flags, and those the server flags set."""
    return {
        **values_of(args, EngineConfig),
        "max_num_seqs": config.max_batch,
        "trust_remote_code": config.trust_remote_code,
    }


def load_engine(config: ServerConfig, args: argparse.Namespace) -> EngineCore:
    """The Engine for `config`, with the `--adapter-path` LoRA adapter loaded."""
    from rlserve.engine import Engine

    engine = Engine(config.model, **engine_options(config, args))
    if config.adapter_path:
        engine.load_lora(config.adapter_name, config.adapter_path)
    return engine


def main(argv: list[str] | None = None) -> int:
    """Entry point of `rlserve serve [...]`; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=config.logging_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        engine = load_engine(config, args)
    except (ValueError, OSError) as exc:
        log.error("cannot load the model: %s", exc)
        return 2

    from rlserve.server.app import create_app

    app = create_app(engine, config)
    log.info("serving %s on http://%s:%d", engine.model_path, config.host, config.port)
    serve(app, config)
    return 0


def serve(app: Any, config: ServerConfig) -> None:
    """Run `app` under uvicorn until SIGTERM/SIGINT, then drain (see `DrainingServer`)."""
    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level=config.log_level.lower(),
        # Longer than any client keeps an idle connection (httpx's default 5 s, rlserve's
        # client 2 s), so the server never closes one a client is sending on.
        timeout_keep_alive=65,
        # Uvicorn's exit starts once the drain is over; this only bounds the writing of
        # the responses still in flight then.
        timeout_graceful_shutdown=10,
    )
    DrainingServer(uv_config, app.state.rlserve.loop, config.shutdown_grace_s).run()


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a graceful drain on the first SIGTERM/SIGINT: the engine loop
    stops admitting (`EngineLoop.close`), and the server keeps serving, so new requests
    get a 503 in the error shape and /health says "shutting_down", until nothing is in
    flight or `grace_s` passed (the loop aborts what is left then). Only then does
    uvicorn's usual exit begin. A second signal exits at once (uvicorn's force exit).
    Unlike uvicorn it does not re-raise the signal afterwards: a drain exits with 0.

    Written against uvicorn 0.54.0 internals: `handle_exit(sig, frame)` is the signal
    handler `capture_signals()` installs, `should_exit`/`force_exit` are the flags it
    sets, and `main_loop` calls `on_tick()` every 0.1 s and exits when it returns True.
    """

    def __init__(self, uv_config: uvicorn.Config, loop: EngineLoop, grace_s: float) -> None:
        super().__init__(uv_config)
        self._engine_loop = loop
        self._grace_s = grace_s
        self._drain_deadline: float | None = None  # set by the first signal

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_deadline is not None or self.should_exit:
            self.should_exit = self.force_exit = True
            return
        log.info(
            "signal %d: refusing new requests (503), draining running ones for up to %g s",
            sig,
            self._grace_s,
        )
        self._drain_deadline = time.monotonic() + self._grace_s
        self._engine_loop.close(self._grace_s)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_deadline is not None and not self.should_exit:
            drained = self._engine_loop.idle or not self._engine_loop.running
            self.should_exit = drained or time.monotonic() >= self._drain_deadline
        return await super().on_tick(counter)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


if __name__ == "__main__":
    raise SystemExit(main())
