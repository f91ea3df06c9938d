"""The server's zero-copy safetensors body parser agrees with the safetensors library."""

import json
import struct

import pytest
import torch
from safetensors.torch import save

from rlserve.server.safetensors_body import parse_safetensors


def _buffer(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _raw(header: dict, payload: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + payload


def test_round_trips_what_safetensors_saves():
    state = {
        "w": torch.randn(3, 5),
        "b16": torch.randn(7).to(torch.bfloat16),
        "ids": torch.arange(6, dtype=torch.int64).view(2, 3),
        "mask": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
    }
    parsed = parse_safetensors(_buffer(save(state, metadata={"format": "pt"})))
    assert set(parsed) == set(state)
    for name, tensor in state.items():
        assert parsed[name].dtype == tensor.dtype and torch.equal(parsed[name], tensor)


def test_misaligned_offsets_are_copied_not_refused():
    payload = b"\x01" + struct.pack("<2f", 1.5, -2.0)
    header = {
        "a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [1, 9]},
    }
    parsed = parse_safetensors(_buffer(_raw(header, payload)))
    assert parsed["b"].tolist() == [1.5, -2.0] and parsed["a"].tolist() == [1]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01\x02", "8-byte header"),
        (struct.pack("<Q", 999) + b"{}", "runs past the end"),
        (struct.pack("<Q", 3) + b"{x}", "not JSON"),
        (_raw([1, 2], b""), "not a JSON object"),
        (
            _raw({"t": {"dtype": "Q99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
            "bad header",
        ),
        (
            _raw({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4),
            "do not hold",
        ),
        (
            _raw({"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 4),
            "do not hold",
        ),
        (
            _raw({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
            "do not hold",
        ),
        (_raw({"t": {"dtype": "F32"}}, b""), "bad header"),
    ],
)
def test_malformed_bodies_raise_value_error(data, message):
    with pytest.raises(ValueError, match=message):
        parse_safetensors(_buffer(data))


def test_error_messages_cut_what_the_body_sent():
    name, shape = "n" * 10_000, [1] * 10_000
    for entry in (
        {"dtype": "Q99", "shape": [1], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": shape, "data_offsets": [0, 8]},
    ):
        with pytest.raises(ValueError) as info:
            parse_safetensors(_buffer(_raw({name: entry}, b"\0" * 4)))
        assert len(str(info.value)) < 400
