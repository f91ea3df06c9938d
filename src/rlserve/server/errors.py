"""OpenAI's error JSON, `{"error": {"message", "type", "param", "code"}}`, for every failure."""

from __future__ import annotations

import logging
from collections.abc import Set as AbstractSet
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rlserve._checks import ParamError
from rlserve.server.loop_errors import (
    EngineFailure,
    EngineUnavailable,
    Overloaded,
    TooManySequences,
)

log = logging.getLogger(__name__)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}


def shown(value: Any, limit: int = 80) -> str:
    """`repr(value)`, cut to `limit` characters: error messages echo what a client sent,
    which may be of any length."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class APIError(Exception):
    """Raise in a handler to answer with OpenAI's error JSON."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


class ClientGone(Exception):
    """The client disconnected before its response was ready (its requests are aborted)."""


def error_body(status: int, message: str, param: str | None = None, code: Any = None) -> dict:
    fallback = "server_error" if status >= 500 else "invalid_request_error"
    error_type = ERROR_TYPES.get(status, fallback)
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(
    status: int, message: str, param: str | None = None, code: Any = None
) -> JSONResponse:
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return JSONResponse(error_body(status, message, param, code), status, headers=headers)


def validation_message(exc: ValidationError | RequestValidationError) -> tuple[str, str | None]:
    """'field: problem; ...' and the first offending field, from a pydantic error."""
    parts, first = [], None
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        first = first or (loc.split(".")[0] if loc else None)
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts) or "invalid request", first


def value_error_param(error: ValueError | str, fields: AbstractSet[str]) -> str | None:
    """The field of a ParamError, else the field a ValueError names first ('temperature
    must be >= 0' -> 'temperature'); None unless one of `fields`."""
    if isinstance(error, ParamError) and error.field in fields:
        return error.field
    word = str(error).split(" ", 1)[0].strip(":,")
    return word if word in fields else None


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception a request can raise onto a status and OpenAI's error JSON."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc)
        return error_response(400, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(ClientGone)
    async def _gone(_: Request, exc: ClientGone) -> Response:
        return Response(status_code=499)  # nobody reads it; nginx's "client closed request"

    @app.exception_handler(Overloaded)
    async def _overloaded(_: Request, exc: Overloaded) -> JSONResponse:
        return error_response(429, str(exc), code="queue_full")

    @app.exception_handler(TooManySequences)
    async def _too_many(_: Request, exc: TooManySequences) -> JSONResponse:
        return error_response(400, str(exc), code="too_many_sequences")

    @app.exception_handler(EngineUnavailable)
    async def _unavailable(_: Request, exc: EngineUnavailable) -> JSONResponse:
        return error_response(503, str(exc))

    @app.exception_handler(EngineFailure)
    async def _failure(_: Request, exc: EngineFailure) -> JSONResponse:
        return error_response(500, str(exc))

    app.add_middleware(CatchAllMiddleware)


def unexpected_error_response(exc: BaseException) -> JSONResponse:
    """A 500 naming only the exception type (its text may hold server paths)."""
    return error_response(500, f"internal server error ({type(exc).__name__})")


class CatchAllMiddleware:
    """Answers an exception no handler took with a complete JSON 500, and returns normally.

    Starlette's own catch-all handler re-raises after answering, and uvicorn then closes
    the connection: a client's pooled keep-alive connection would break with the request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except Exception as exc:
            log.exception("unhandled error")
            if started:  # too late for a status: the response is cut off, as it must be
                raise
            await unexpected_error_response(exc)(scope, receive, send)
