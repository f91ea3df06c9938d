"""Serialize tensors to the safetensors format as a stream of chunks (no full copy).

The format: an 8-byte little-endian header length, a JSON header
`{name: {"dtype", "shape", "data_offsets": [begin, end]}}` padded with spaces to a
multiple of 8, then every tensor's raw bytes in header order. torch is imported lazily.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

CHUNK_BYTES = 64 * 2**20

_DTYPES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
}


def _named(weights: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> list[tuple[str, Any]]:
    items = list(weights.items()) if isinstance(weights, Mapping) else list(weights)
    named = []
    for name, tensor in items:
        dtype = str(tensor.dtype).removeprefix("torch.")
        if dtype not in _DTYPES:
            raise ValueError(
                f"tensor {name!r} has dtype {tensor.dtype}, which safetensors cannot hold"
            )
        named.append((name, tensor.detach().to("cpu").contiguous()))
    return named


def _header(named: list[tuple[str, Any]]) -> bytes:
    entries, offset = {}, 0
    for name, tensor in named:
        size = tensor.numel() * tensor.element_size()
        dtype = _DTYPES[str(tensor.dtype).removeprefix("torch.")]
        entries[name] = {
            "dtype": dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header


def _tensor_chunks(tensor: Any) -> Iterator[bytes]:
    import torch

    flat = tensor.reshape(-1).view(torch.uint8).numpy()
    for start in range(0, flat.size, CHUNK_BYTES):
        yield flat[start : start + CHUNK_BYTES].tobytes()


def safetensors_stream(
    weights: Mapping[str, Any] | Iterable[tuple[str, Any]],
) -> tuple[int, Iterator[bytes]]:
    """(total byte length, chunks) of `weights` (a state dict or (name, tensor) pairs)
    serialized as safetensors; `safetensors.torch.load(b"".join(chunks))` reads it back."""
    named = _named(weights)
    header = _header(named)
    total = len(header) + sum(t.numel() * t.element_size() for _, t in named)

    def chunks() -> Iterator[bytes]:
        yield header
        for _, tensor in named:
            yield from _tensor_chunks(tensor)

    return total, chunks()
