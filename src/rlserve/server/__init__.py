"""rlserve's HTTP server: OpenAI-compatible `/v1/*`, RL `/generate`, health and metrics.

`create_app(engine, config)` builds the FastAPI app; `rlserve serve` (see `cli.main`)
loads an Engine and runs it under uvicorn. The names load on first use, so importing a
submodule (the cluster router imports `server.auth`) does not pull in torch.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "create_app": "rlserve.server.app",
    "ServerConfig": "rlserve.server.config",
    "EngineLoop": "rlserve.server.engine_loop",
}

__all__ = ["EngineLoop", "ServerConfig", "create_app"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rlserve.server' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
