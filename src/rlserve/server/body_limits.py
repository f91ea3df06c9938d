"""Request bodies read under a size limit. Every route refuses a body over its limit the
same way: a 413 with code "request_too_large" naming the setting that raises the limit,
as soon as the declared length or the bytes received pass it (nothing more is read)."""

from __future__ import annotations

from fastapi import Request

from rlserve.server.errors import APIError


def too_large(limit: int, setting: str, what: str = "the request body") -> APIError:
    """The 413 for `what` over `limit` bytes; `setting` is the flag that sets the limit."""
    return APIError(
        413,
        f"{what} is larger than the server limit of {limit} bytes ({setting})",
        code="request_too_large",
    )


def declared_length(request: Request) -> int | None:
    """The Content-Length header (None: not sent, e.g. a chunked body); 400 if not a number."""
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    if not declared.isdigit():
        raise APIError(400, "the Content-Length header is not a number")
    return int(declared)


async def read_limited(
    request: Request, limit: int, setting: str, what: str = "the request body"
) -> bytearray:
    """The whole body; 413 (see `too_large`) before reading when its declared length is
    over `limit`, or as soon as the bytes streamed in pass it."""
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise too_large(limit, setting, what)
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise too_large(limit, setting, what)
    return data
