"""rlserve's HTTP server: OpenAI-compatible `/v1/*`, RL `/generate`, health and metrics.

`create_app(engine, config)` builds the FastAPI app; `rlserve serve` (see `cli.main`)
loads an Engine and runs it under uvicorn.
"""

from rlserve.server.app import create_app
from rlserve.server.config import ServerConfig
from rlserve.server.engine_loop import EngineLoop

__all__ = ["EngineLoop", "ServerConfig", "create_app"]
