"""A safetensors request body read with one copy: the bytes land in one reused buffer as
they arrive and the tensors are views into it. (`safetensors.torch.load` on the body would
copy every byte twice more.)

The format: an 8-byte little-endian header length, a JSON header
`{name: {"dtype", "shape", "data_offsets": [begin, end]}}`, then the raw tensor bytes.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import torch
from fastapi import Request

from rlserve.server.body_limits import declared_length, read_limited, too_large
from rlserve.server.errors import APIError, shown

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class ReceiveBuffer:
    """One buffer reused by every weight update. A fresh multi-GB buffer takes a page fault
    per 4 KiB on first write, which was most of an update's time; a reused one does not.
    Hold `lock` from reading a body until its tensors have been copied into the model."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self._buffer = torch.empty(0, dtype=torch.uint8)

    def take(self, size: int) -> torch.Tensor:
        if self._buffer.numel() < size:
            self._buffer = torch.empty(0, dtype=torch.uint8)  # free the old one first
            self._buffer = torch.empty(size, dtype=torch.uint8)
        return self._buffer[:size]


async def read_body(
    request: Request, limit: int, setting: str, what: str, receive_buffer: ReceiveBuffer
) -> torch.Tensor:
    """The body as a uint8 tensor (in `receive_buffer` when its length is declared); 413 past
    `limit` (`setting` raises it), 400 if it is not as long as declared."""
    size = declared_length(request)
    if size is None:
        data = await read_limited(request, limit, setting, what)
        if not data:  # frombuffer refuses an empty buffer
            return torch.empty(0, dtype=torch.uint8)
        return torch.frombuffer(data, dtype=torch.uint8)
    if size > limit:
        raise too_large(limit, setting, what)
    buffer = receive_buffer.take(size)
    view, filled = memoryview(buffer.numpy()), 0
    async for chunk in request.stream():
        if filled + len(chunk) > size:
            raise APIError(400, f"{what} is longer than its Content-Length")
        view[filled : filled + len(chunk)] = chunk
        filled += len(chunk)
    if filled != size:
        raise APIError(400, f"{what} ended after {filled} of {size} bytes")
    return buffer


def parse_safetensors(buffer: torch.Tensor) -> dict[str, torch.Tensor]:
    """name -> tensor viewing `buffer`; ValueError saying what is malformed."""
    if buffer.numel() < 8:
        raise ValueError("shorter than the 8-byte header length")
    header_len = int.from_bytes(buffer[:8].numpy().tobytes(), "little")
    if 8 + header_len > buffer.numel():
        raise ValueError(f"the header length {header_len} runs past the end of the data")
    try:
        header = json.loads(buffer[8 : 8 + header_len].numpy().tobytes())
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise ValueError(f"the header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    start = 8 + header_len
    data = buffer[start:]
    tensors = {}
    for name, entry in header.items():
        if name != "__metadata__":
            tensors[name] = _tensor(name, entry, data, start)
    return tensors


def _tensor(name: str, entry: Any, data: torch.Tensor, start: int) -> torch.Tensor:
    try:
        dtype = DTYPES[entry["dtype"]]
        shape = [int(d) for d in entry["shape"]]
        begin, end = (int(o) for o in entry["data_offsets"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"tensor {shown(name)}: bad header entry {shown(entry)}") from exc
    itemsize = dtype.itemsize
    if (
        min(shape, default=0) < 0
        or not 0 <= begin <= end <= data.numel()
        or end - begin != math.prod(shape) * itemsize
    ):
        raise ValueError(
            f"tensor {shown(name)}: offsets {begin}..{end} do not hold shape "
            f"{shown(shape)} of {entry['dtype']} within {data.numel()} data bytes"
        )
    raw = data[begin:end]
    if (start + begin) % itemsize:
        raw = raw.clone()  # a dtype view needs an aligned offset
    return raw.view(dtype).view(shape)
