"""An SSE body that always ends: chunks, then `data: [DONE]`, whatever goes wrong."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from rlserve.server.errors import error_body
from rlserve.server.loop_errors import EngineFailure, EngineUnavailable
from rlserve.server.openai_format import SSE_DONE, sse

log = logging.getLogger(__name__)


async def sse_stream(
    chunks: AsyncIterator[dict[str, Any]], on_exit: Callable[[], None]
) -> AsyncIterator[str]:
    """`chunks` as SSE events, then `[DONE]`. An engine failure, or a bug while formatting a
    chunk, becomes one error event before `[DONE]`, so a client never waits on a stream
    that died. `on_exit` runs however the stream ends (a client disconnect cancels it): it
    aborts what still runs and frees its KV."""
    try:
        async for chunk in chunks:
            yield sse(chunk)
        yield SSE_DONE
    except (EngineFailure, EngineUnavailable) as exc:
        status = 503 if isinstance(exc, EngineUnavailable) else 500
        yield sse(error_body(status, str(exc), code=status))
        yield SSE_DONE
    except Exception as exc:
        log.exception("stream failed")
        yield sse(error_body(500, f"internal server error ({type(exc).__name__})", code=500))
        yield SSE_DONE
    finally:
        on_exit()
