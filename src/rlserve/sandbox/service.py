"""HTTP front end of the sandbox: ``POST /execute`` and ``GET /health``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field, StrictStr

from rlserve.sandbox.sandbox import MAX_SESSION_ID_CHARS, Sandbox


class ExecuteRequest(BaseModel):
    """Body of ``POST /execute``."""

    code: StrictStr
    timeout: float | None = Field(default=None, gt=0)
    session_id: StrictStr | None = Field(
        default=None, min_length=1, max_length=MAX_SESSION_ID_CHARS
    )


def create_sandbox_app(sandbox: Sandbox) -> FastAPI:
    """A FastAPI app serving ``sandbox``.

    ``POST /execute`` takes ``{"code", "timeout"?, "session_id"?}`` and returns the
    :class:`~rlserve.sandbox.SandboxResult` as JSON; invalid requests get 422 (schema) or 400
    (limits such as a timeout above ``max_timeout_s``); 503 when every session slot is busy.
    ``GET /health`` reports the isolation level in effect. ``DELETE /sessions/{id}`` stops a
    session.
    """
    app = FastAPI(title="rlserve sandbox")

    @app.post("/execute")
    async def execute(request: ExecuteRequest) -> dict[str, Any]:
        try:
            result = await sandbox.arun(
                request.code, request.timeout, session_id=request.session_id
            )
        except ValueError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        except RuntimeError as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from exc
        return result.to_dict()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        cfg = sandbox.config
        return {
            "status": "ok",
            "isolation": sandbox.isolation,
            "python": sandbox.python,
            "max_concurrency": cfg.max_concurrency,
            "max_sessions": cfg.max_sessions,
            "timeout_s": cfg.timeout_s,
            "max_timeout_s": cfg.max_timeout_s,
            "memory_bytes": cfg.memory_bytes,
            "max_output_bytes": cfg.max_output_bytes,
        }

    # A plain def: FastAPI runs it in a worker thread, since it waits for a busy session.
    @app.delete("/sessions/{session_id}")
    def close_session(session_id: str) -> dict[str, Any]:
        if not sandbox.close_session(session_id):
            raise HTTPException(status_code=404, detail=f"no session {session_id!r}")
        return {"closed": session_id}

    return app
