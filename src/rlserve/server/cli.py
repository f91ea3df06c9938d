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
from typing import Any

import uvicorn

from rlserve.server.config import LOG_LEVELS, ServerConfig
from rlserve.server.engine_loop import EngineLoop

log = logging.getLogger("rlserve.server")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rlserve serve",
        description="Serve a model with OpenAI-compatible and RL endpoints.",
    )
    d = ServerConfig()
    p.add_argument("--model", help="local Hugging Face checkpoint (default: the bundled model)")
    p.add_argument("--host", default=d.host, help="bind address (default: %(default)s)")
    p.add_argument("--port", type=int, default=d.port, help="(default: %(default)s)")
    p.add_argument(
        "--max-batch",
        type=int,
        default=d.max_batch,
        help="most sequences per engine step (default: %(default)s)",
    )
    p.add_argument(
        "--flush-interval-ms",
        type=float,
        default=d.flush_interval_ms,
        help="how long a request reaching an idle engine waits for companions "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=d.max_tokens,
        help="default and limit of a request's max_tokens (default: %(default)s)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=d.max_queue,
        help="sequences allowed to wait; more get 429 (default: %(default)s)",
    )
    p.add_argument("--adapter-path", help="PEFT LoRA adapter to load and serve by default")
    p.add_argument("--adapter-name", help="its model id (default: the adapter folder's name)")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--log-level", default=d.log_level, type=str.upper, choices=LOG_LEVELS)
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/* and /generate")
    p.add_argument("--served-model-name", help="model id in /v1/models")
    p.add_argument(
        "--tool-call-parser",
        default="hermes",
        help="format of tool calls in chat replies, or 'none' (default: %(default)s)",
    )
    p.add_argument(
        "--admin-key",
        help="require 'Authorization: Bearer KEY' on the admin routes (default: the "
        "--api-key; with neither key they answer loopback clients only)",
    )
    p.add_argument(
        "--allow-open-admin",
        action="store_true",
        help="with no key, open the admin routes to every client (needed to serve on a "
        "non-loopback --host without a key)",
    )
    p.add_argument(
        "--shutdown-grace-s",
        type=float,
        default=d.shutdown_grace_s,
        help="on SIGTERM/SIGINT, how long running requests may finish before they are "
        "aborted (default: %(default)s)",
    )
    p.add_argument("--weights-dir", help="folder that path-based updates/adapters may read")
    p.add_argument(
        "--max-upload-bytes",
        type=int,
        default=d.max_upload_bytes,
        help="largest /upload_adapter body (default: %(default)s)",
    )
    p.add_argument(
        "--max-update-bytes",
        type=int,
        default=d.max_update_bytes,
        help="largest streamed /update_weights body (default: %(default)s)",
    )
    p.add_argument(
        "--max-request-bytes",
        type=int,
        default=d.max_request_bytes,
        help="largest /v1/* or /generate body; more gets 413 (default: %(default)s)",
    )
    p.add_argument(
        "--trust-request-chat-template",
        action="store_true",
        help="let chat requests bring their own chat_template (code run by the server)",
    )
    p.add_argument("--dtype", default="float32", help="engine dtype (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="engine device (default: %(default)s)")
    p.add_argument("--max-model-len", type=int, help="context length (default: the model's)")
    p.add_argument("--num-blocks", type=int, help="KV-cache blocks (default: from memory)")
    return p


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        model=args.model,
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        flush_interval_ms=args.flush_interval_ms,
        max_tokens=args.max_tokens,
        max_queue=args.max_queue,
        adapter_path=args.adapter_path,
        adapter_name=args.adapter_name,
        trust_remote_code=args.trust_remote_code,
        log_level=args.log_level,
        api_key=args.api_key,
        served_model_name=args.served_model_name,
        tool_call_parser=None if args.tool_call_parser == "none" else args.tool_call_parser,
        admin_key=args.admin_key,
        allow_open_admin=args.allow_open_admin,
        shutdown_grace_s=args.shutdown_grace_s,
        weights_dir=args.weights_dir,
        max_upload_bytes=args.max_upload_bytes,
        max_update_bytes=args.max_update_bytes,
        max_request_bytes=args.max_request_bytes,
        trust_request_chat_template=args.trust_request_chat_template,
    )


def load_engine(config: ServerConfig, args: argparse.Namespace) -> Any:
    """The Engine for `config`, with the `--adapter-path` LoRA adapter loaded."""
    from rlserve.engine import Engine

    engine = Engine(
        config.model,
        dtype=args.dtype,
        device=args.device,
        max_num_seqs=config.max_batch,
        max_model_len=args.max_model_len,
        num_blocks=args.num_blocks,
        trust_remote_code=config.trust_remote_code,
    )
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
