"""`create_app(engine, config)`: the FastAPI app in front of one Engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI

from rlserve.server.admin_routes import admin_router
from rlserve.server.auth import api_access
from rlserve.server.config import ServerConfig
from rlserve.server.engine_loop import EngineLoop
from rlserve.server.errors import install_error_handlers
from rlserve.server.logprob_format import TokenRenderer
from rlserve.server.memory_routes import memory_router
from rlserve.server.metrics import MetricsMiddleware, ServerMetrics
from rlserve.server.openai_routes import openai_router
from rlserve.server.ops_routes import ops_router
from rlserve.server.rl_routes import rl_router
from rlserve.server.sglang_routes import sglang_router
from rlserve.server.state import ServerState
from rlserve.server.vllm_routes import vllm_router
from rlserve.server.vllm_weight_transfer import vllm_weight_transfer_router
from rlserve.server.weight_stage import weight_stage_router

if TYPE_CHECKING:
    from rlserve.engine.core import EngineCore

BUNDLED_MODEL_NAME = "rlserve-tiny"


def load_tokenizer(model_path: str, trust_remote_code: bool = False) -> Any:
    """The server's own tokenizer copy (the engine's belongs to the engine thread)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)


def build_state(engine: EngineCore, config: ServerConfig, tokenizer: Any = None) -> ServerState:
    loop = EngineLoop(
        engine,
        max_batch=engine.config.max_num_seqs,
        flush_interval_s=config.flush_interval_s,
        max_queue=config.max_queue,
    )
    tokenizer = tokenizer or load_tokenizer(engine.model_path, config.trust_remote_code)
    model_name = config.served_model_name or config.model or BUNDLED_MODEL_NAME
    metrics = ServerMetrics(loop.stats, model_name=model_name)
    loop.request_timer = metrics.request_timer
    return ServerState(
        config=config,
        loop=loop,
        tokenizer=tokenizer,
        renderer=TokenRenderer(tokenizer),
        model_name=model_name,
        model_path=str(engine.model_path),
        max_model_len=int(engine.max_model_len),
        vocab_size=int(engine.model.config.vocab_size),
        metrics=metrics,
        default_adapter=config.adapter_name if config.adapter_path else None,
    )


def create_app(
    engine: EngineCore, config: ServerConfig | None = None, tokenizer: Any = None
) -> FastAPI:
    """The rlserve HTTP app. The engine thread starts with the app and stops with it.

    `engine` must not be used by anyone else while the app runs (it is not thread-safe).
    """
    config = config or ServerConfig()
    state = build_state(engine, config, tokenizer)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.loop.start()
        try:
            yield
        finally:
            await asyncio.to_thread(state.loop.stop)

    app = FastAPI(title="rlserve", version="0.1.0", lifespan=lifespan)
    app.state.rlserve = state
    install_error_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    access = api_access(config)
    guarded = [Depends(access)] if access.checks else []
    app.include_router(openai_router(state), dependencies=guarded)
    app.include_router(rl_router(state), dependencies=guarded)
    app.include_router(admin_router(state))
    app.include_router(weight_stage_router(state))
    app.include_router(sglang_router(state))
    app.include_router(vllm_router(state))
    app.include_router(vllm_weight_transfer_router(state))
    app.include_router(memory_router(state))
    app.include_router(ops_router(state))
    return app
