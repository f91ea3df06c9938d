"""Fuzz and fault suite: generated bad input for every route of a real server, and
blast-radius tests (a bad request next to good ones: the good ones still succeed).

Why hypothesis and not schemathesis: the routes read the raw `Request` (so they can give
OpenAI-shaped errors for bodies pydantic never sees), which leaves the app's OpenAPI
document with no request-body schema for any route: schemathesis would only vary paths
and methods. The worst inputs are also not schema-shaped at all (5,000-digit integers,
100,000-deep nesting, lone surrogates, NaN, broken multipart and safetensors bytes), and
hypothesis strategies (tests/fuzz_strategies.py) build those bytes directly. Runs are
bounded and reproducible: `derandomize=True`, fixed `max_examples`, no example database.
Shrinking is off (a hung server would make every shrink step wait for the timeout);
bodies are a valid request with one to three fields changed, so failures are already
small. Set RLSERVE_FUZZ_SHRINK=1 to shrink while debugging, and RLSERVE_FUZZ_SCALE=10 to
run ten times more examples.

Properties, for every request: an answer within REQUEST_TIMEOUT seconds, never a 5xx,
every 4xx in the OpenAI error shape with no server path in its message, 200 bodies that
are strict JSON (SSE streams end with `[DONE]` and carry no server error), and afterwards
a good request still succeeds and every KV block is free.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from rlserve.server import ServerConfig
from tests.server import fuzz_strategies as fz
from tests.support.servers import TEST_MODEL, RunningServer, shared_server, wait_until

REQUEST_TIMEOUT = 15.0  # seconds; a generation here takes well under one
SCALE = float(os.environ.get("RLSERVE_FUZZ_SCALE", "1"))
ROOT = Path(__file__).resolve().parents[2]
GOOD = {"prompt": "What is 2 + 3?", "max_tokens": 1, "temperature": 0.0}
NEIGHBOUR_TOKENS = 32  # also the fuzz server's --max-tokens


def fuzz_settings(examples: int) -> settings:
    phases = [Phase.explicit, Phase.generate]
    if os.environ.get("RLSERVE_FUZZ_SHRINK"):
        phases.append(Phase.shrink)
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        derandomize=True,
        database=None,
        phases=phases,
        report_multiple_bugs=False,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture,
            HealthCheck.large_base_example,
        ],
    )


# --- the server -----------------------------------------------------------------------------


def make_weights_dir(root: Path) -> Path:
    """Files the admin routes may be pointed at: none of them is a usable checkpoint or
    adapter, so no fuzzed path loads anything."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}xxxxxx")
    (root / "empty.safetensors").write_bytes(b"")
    (root / "notes.txt").write_text("not weights")
    (root / "empty_dir").mkdir(exist_ok=True)
    configs = {
        "adapter_list": b"[]",
        "adapter_r0": b'{"r": 0, "lora_alpha": 8, "target_modules": ["q_proj"]}',
        "adapter_bad_json": b"{",
        "adapter_no_weights": b'{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}',
        "adapter_strings": b'{"r": "8", "lora_alpha": "x", "target_modules": "q_proj"}',
    }
    for name, config in configs.items():
        folder = root / name
        folder.mkdir(exist_ok=True)
        (folder / "adapter_config.json").write_bytes(config)
        if name != "adapter_no_weights":  # valid, empty weights: the config is what is bad
            (folder / "adapter_model.safetensors").write_bytes(fz.safetensors_bytes({}, b""))
    if not (root / "link_out").exists():
        (root / "link_out").symlink_to("/")
    return root


@pytest.fixture(scope="module")
def server(make_engine, pytestconfig, tmp_path_factory) -> RunningServer:
    """The bundled model with a small batch (so `n` can exceed it), short generations and a
    --weights-dir full of broken files."""
    weights_dir = make_weights_dir(tmp_path_factory.mktemp("fuzz-weights"))

    def make() -> RunningServer:
        config = ServerConfig(
            max_batch=fz.MAX_BATCH,
            max_tokens=NEIGHBOUR_TOKENS,
            max_queue=64,
            flush_interval_ms=5.0,
            weights_dir=str(weights_dir),
        )
        running = RunningServer(make_engine(TEST_MODEL, max_num_seqs=fz.MAX_BATCH), config)
        running.weights_dir = weights_dir  # type: ignore[attr-defined]
        return running

    return shared_server("fuzz", make, pytestconfig)


@pytest.fixture(scope="module")
def http(server: RunningServer):
    """One pooled keep-alive client for all examples, so a response that breaks its
    connection shows up as a broken next request."""
    with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT) as client:
        yield client


# --- the properties -------------------------------------------------------------------------


def server_paths(server: RunningServer) -> list[str]:
    """Absolute paths of the server's machine that no error message may show."""
    weights_dir: Path = server.weights_dir  # type: ignore[attr-defined]
    paths = {
        str(weights_dir),
        str(weights_dir.resolve()),
        str(ROOT),
        sys.prefix,
        str(Path(server.engine.model_path).resolve()),
    }
    return sorted(p for p in paths if len(p) > 1)


def send(http: httpx.Client, req: fz.FuzzRequest) -> httpx.Response:
    try:
        return http.request(
            req.method, req.path, content=req.body, headers=req.headers, params=req.params
        )
    except httpx.TimeoutException as exc:
        raise AssertionError(f"no answer within {REQUEST_TIMEOUT} s (hang): {req!r}") from exc
    except httpx.TransportError as exc:
        raise AssertionError(f"broken connection ({exc!r}): {req!r}") from exc


def strict_json(text: str) -> Any:
    """Parse `text` refusing NaN/Infinity, which OpenAI clients cannot read."""

    def refuse(token: str) -> Any:
        raise ValueError(f"non-standard JSON constant {token}")

    return json.loads(text, parse_constant=refuse)


def check_error_shape(resp: httpx.Response, forbidden_paths: list[str]) -> None:
    body = strict_json(resp.text)
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str), error
    assert error["param"] is None or isinstance(error["param"], str), error
    assert error["code"] is None or isinstance(error["code"], (str, int)), error
    for path in forbidden_paths:
        assert path not in error["message"], f"error message shows a server path: {error}"


def sse_events(text: str) -> list[Any]:
    """The `data:` payloads of an SSE body, `[DONE]` kept as the string."""
    events = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else strict_json(data))
    return events


def check_success(resp: httpx.Response) -> None:
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        events = sse_events(resp.text)
        assert events and events[-1] == "[DONE]", f"stream cut off: {resp.text[-300:]!r}"
        errors = [e for e in events if isinstance(e, dict) and "error" in e]
        assert not errors, f"server error inside a 200 stream: {errors}"
    elif resp.headers.get("content-type", "").startswith("application/json"):
        strict_json(resp.text)


def check_healthy(server: RunningServer, http: httpx.Client) -> None:
    """A good request succeeds and every KV block is free again."""
    ok = send(http, fz.FuzzRequest("POST", "/generate", fz.encode(GOOD)))
    assert ok.status_code == 200, f"a good request after it got {ok.status_code}: {ok.text}"
    assert ok.json()["finish_reason"] in ("stop", "length"), ok.json()
    assert wait_until(server.idle, 10), "requests or KV blocks left behind"


def check_answer(server: RunningServer, http: httpx.Client, req: fz.FuzzRequest) -> None:
    """The fuzz property: see the module docstring."""
    resp = send(http, req)
    assert resp.status_code < 500, f"{resp.status_code} for {req!r}: {resp.text[:500]}"
    if resp.status_code >= 400:
        check_error_shape(resp, server_paths(server))
    else:
        assert not req.must_refuse, f"accepted a bad request ({resp.status_code}): {req!r}"
        check_success(resp)


def resume(http: httpx.Client) -> None:
    """Undo any pause a fuzzed admin call managed to make."""
    assert send(http, fz.FuzzRequest("POST", "/resume", b"{}")).status_code == 200


# --- fuzzing every route --------------------------------------------------------------------


@fuzz_settings(100)
@given(req=fz.completions)
def test_fuzz_completions(server: RunningServer, http: httpx.Client, req: fz.FuzzRequest) -> None:
    check_answer(server, http, req)
    check_healthy(server, http)


@fuzz_settings(100)
@given(req=fz.chat)
def test_fuzz_chat_completions(
    server: RunningServer, http: httpx.Client, req: fz.FuzzRequest
) -> None:
    check_answer(server, http, req)
    check_healthy(server, http)


@fuzz_settings(60)
@given(req=fz.generate)
def test_fuzz_generate(server: RunningServer, http: httpx.Client, req: fz.FuzzRequest) -> None:
    check_answer(server, http, req)
    check_healthy(server, http)


@pytest.mark.parametrize("route", sorted(fz.ADMIN_STRATEGIES))
def test_fuzz_admin_routes(server: RunningServer, http: httpx.Client, route: str) -> None:
    @fuzz_settings(20)
    @given(req=fz.ADMIN_STRATEGIES[route])
    def run(req: fz.FuzzRequest) -> None:
        try:
            check_answer(server, http, req)
        finally:
            resume(http)
        check_healthy(server, http)

    run()


@fuzz_settings(40)
@given(req=st.one_of(fz.get_request, fz.wrong_method))
def test_fuzz_get_routes_methods_and_paths(
    server: RunningServer, http: httpx.Client, req: fz.FuzzRequest
) -> None:
    try:
        check_answer(server, http, req)
    finally:
        resume(http)  # a POST /pause {} is a valid pause
    check_healthy(server, http)


# --- known bad requests: each must be refused with a 4xx ------------------------------------

_USER = [{"role": "user", "content": "What is 2 + 3?"}]
_NAMELESS_TOOL = [{"type": "function", "function": {"parameters": {"type": "object"}}}]
KNOWN_BAD: list[tuple[str, str, Any]] = [
    # (what, path, body: a dict, or bytes sent as they are)
    ("lone surrogate prompt", "/v1/completions", {"prompt": "a\ud800b", "max_tokens": 2}),
    (
        "lone surrogate chat content",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "\udfff"}], "max_tokens": 2},
    ),
    ("lone surrogate stop string", "/generate", {"prompt": "hi", "stop": ["\ud800"]}),
    ("100,000-deep nesting", "/v1/completions", b'{"prompt": ' + fz.RAW_VALUES["deep_list"] + b"}"),
    ("50,000-deep objects", "/generate", fz.RAW_VALUES["deep_dict"]),
    (
        "1,500-deep nesting",
        "/v1/chat/completions",
        b'{"messages": ' + fz.RAW_VALUES["deep_1500"] + b"}",
    ),
    (
        "5,000-digit integer",
        "/v1/completions",
        b'{"prompt": "hi", "max_tokens": ' + fz.RAW_VALUES["digits_5000"] + b"}",
    ),
    (
        "temperature 'inf' as a string",
        "/v1/completions",
        {"prompt": "hi", "temperature": "inf", "max_tokens": 2},
    ),
    ("temperature Infinity", "/generate", b'{"prompt": "hi", "temperature": Infinity}'),
    ("temperature NaN", "/v1/completions", b'{"prompt": "hi", "temperature": NaN}'),
    ("seed 2**64", "/v1/completions", {"prompt": "hi", "seed": 2**64, "max_tokens": 2}),
    ("seed below int64", "/generate", {"prompt": "hi", "seed": -(2**63) - 1, "max_tokens": 2}),
    (
        "n above --max-batch",
        "/v1/completions",
        {"prompt": "hi", "n": fz.MAX_BATCH + 1, "max_tokens": 2},
    ),
    ("n of 100,000", "/generate", {"prompt": "hi", "n": 100_000, "max_tokens": 2}),
    (
        "stop_token_ids outside the vocabulary",
        "/v1/completions",
        {"prompt": "hi", "stop_token_ids": [fz.VOCAB + 5], "min_tokens": 1, "max_tokens": 3},
    ),
    (
        "chat content a number",
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": 5}], "max_tokens": 2},
    ),
    (
        "chat content missing",
        "/v1/chat/completions",
        {"messages": [{"role": "user"}], "max_tokens": 2},
    ),
    (
        "unknown chat role",
        "/v1/chat/completions",
        {"messages": [{"role": "wizard", "content": "hi"}], "max_tokens": 2},
    ),
    (
        "tool without a name",
        "/v1/chat/completions",
        {"messages": _USER, "tools": _NAMELESS_TOOL, "max_tokens": 8},
    ),
    (
        "tool without a name, streamed",
        "/v1/chat/completions",
        {"messages": _USER, "tools": _NAMELESS_TOOL, "max_tokens": 8, "stream": True},
    ),
    (
        "tool name a number",
        "/v1/chat/completions",
        {"messages": _USER, "tools": [{"type": "function", "function": {"name": 5}}]},
    ),
    (
        "request chat_template without --trust-request-chat-template",
        "/v1/chat/completions",
        {"messages": _USER, "chat_template": "{{ messages[0].content }}", "max_tokens": 2},
    ),
    (
        "chat_template smuggled in chat_template_kwargs",
        "/v1/chat/completions",
        {
            "messages": _USER,
            "chat_template_kwargs": {"chat_template": "{{ messages[0].content }}"},
            "max_tokens": 2,
        },
    ),
    ("adapter config a list", "/load_adapter", {"adapter_path": "adapter_list"}),
    ("adapter config r: 0", "/load_adapter", {"adapter_path": "adapter_r0"}),
    ("adapter_name a list", "/unload_adapter", {"adapter_name": ["a"]}),
    (
        "adapter_name a list on load",
        "/load_adapter",
        {"adapter_path": "adapter_r0", "adapter_name": ["a"]},
    ),
    ("NUL byte in a path", "/load_adapter", {"adapter_path": "adapter\x00list"}),
    ("NUL byte in a weights path", "/update_weights", {"path": "junk\x00.safetensors"}),
    ("very long path", "/update_weights", {"path": "x" * 5000}),
    ("very long path segments", "/load_adapter", {"adapter_path": "/".join(["y" * 250] * 40)}),
    ("broken safetensors file", "/update_weights", {"path": "junk.safetensors"}),
]


@pytest.mark.parametrize(
    ("path", "body"), [(p, b) for _, p, b in KNOWN_BAD], ids=[what for what, _, _ in KNOWN_BAD]
)
def test_known_bad_request_is_refused(
    server: RunningServer, http: httpx.Client, path: str, body: Any
) -> None:
    data = body if isinstance(body, bytes) else fz.encode(body)
    check_answer(server, http, fz.FuzzRequest("POST", path, data, must_refuse=True))
    check_healthy(server, http)


def multipart_upload(config: bytes, name: bytes | None = b"fuzz") -> fz.FuzzRequest:
    parts = [
        ("files", "adapter_config.json", config),
        ("files", "adapter_model.safetensors", fz.safetensors_bytes({}, b"")),
    ]
    if name is not None:
        parts.append(("adapter_name", None, name))
    return fz.FuzzRequest(
        "POST",
        "/upload_adapter",
        fz.multipart(parts),
        {"content-type": "multipart/form-data; boundary=fuzzb"},
        must_refuse=True,
    )


@pytest.mark.parametrize(
    "req",
    [
        multipart_upload(b"[]"),
        multipart_upload(b"null"),
        multipart_upload(b'{"r": 0, "target_modules": ["q_proj"]}'),
        multipart_upload(b"{}", name=b"\xff\xfe"),
        multipart_upload(b"{}", name=b"a\x00b"),
    ],
    ids=["config a list", "config null", "config r 0", "name not UTF-8", "name with NUL"],
)
def test_known_bad_upload_is_refused(
    server: RunningServer, http: httpx.Client, req: fz.FuzzRequest
) -> None:
    check_answer(server, http, req)
    check_healthy(server, http)


# --- blast radius: a bad request next to good ones ------------------------------------------

# Nine million template loop steps: seconds of CPU if a server renders it unbounded.
SLOW_TEMPLATE = "{% for i in range(3000) %}{% for j in range(3000) %}{% endfor %}{% endfor %}"
BAD_NEIGHBOURS: list[tuple[str, str, Any]] = [
    (
        "stop_token_ids outside the vocabulary",
        "/v1/completions",
        {"prompt": "hi", "stop_token_ids": [fz.VOCAB + 5], "min_tokens": 2, "max_tokens": 4},
    ),
    (
        "temperature 1e-40",
        "/v1/completions",
        {"prompt": "hi", "temperature": 1e-40, "max_tokens": 4},
    ),
    (
        "temperature 1e-40 in chat",
        "/v1/chat/completions",
        {"messages": _USER, "temperature": 1e-40, "max_tokens": 4, "stream": True},
    ),
    (
        "n above --max-batch",
        "/v1/completions",
        {"prompt": "hi", "n": fz.MAX_BATCH + 1, "max_tokens": 4},
    ),
    ("n of 100,000", "/generate", {"prompt": "hi", "n": 100_000, "max_tokens": 4}),
    ("lone surrogate", "/v1/completions", {"prompt": "\ud800", "max_tokens": 4}),
    ("100,000-deep nesting", "/generate", b'{"prompt": ' + fz.RAW_VALUES["deep_list"] + b"}"),
    (
        "tool without a name, streamed",
        "/v1/chat/completions",
        {"messages": _USER, "tools": _NAMELESS_TOOL, "max_tokens": 8, "stream": True},
    ),
    (
        "slow request chat template",
        "/v1/chat/completions",
        {"messages": _USER, "chat_template": SLOW_TEMPLATE, "max_tokens": 2},
    ),
    (
        "slow chat template in chat_template_kwargs",
        "/v1/chat/completions",
        {
            "messages": _USER,
            "chat_template_kwargs": {"chat_template": SLOW_TEMPLATE},
            "max_tokens": 2,
        },
    ),
    ("prompt longer than the context", "/v1/completions", {"prompt": "hi " * 3000}),
    ("4 MB prompt", "/v1/completions", {"prompt": "x " * 2_000_000, "max_tokens": 2}),
    (
        "failed weight update with mode=abort",
        "/update_weights",
        {"path": "junk.safetensors", "mode": "abort"},
    ),
    (
        "failed streamed weight update with mode=abort",
        "/update_weights?mode=abort",
        fz.FuzzRequest(
            "POST",
            "",
            b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}",
            {"content-type": "application/octet-stream"},
        ),
    ),
]


def neighbour_bodies() -> list[tuple[str, dict[str, Any]]]:
    """Good streamed requests long enough to be mid-generation when the bad one lands."""
    common = {
        "max_tokens": NEIGHBOUR_TOKENS,
        "ignore_eos": True,
        "temperature": 1.0,
        "stream": True,
    }
    return [
        ("/v1/completions", {"prompt": "What is 2 + 3?", "seed": 1, **common}),
        ("/v1/completions", {"prompt": [5, 6, 7], "n": 2, "seed": 2, **common}),
        ("/v1/chat/completions", {"messages": _USER, "seed": 3, **common}),
    ]


async def good_stream(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], running: asyncio.Event
) -> list[Any]:
    """All SSE events of one good request; `running` is set once tokens flow."""
    events: list[Any] = []
    try:
        async with client.stream("POST", path, json=body) as resp:
            assert resp.status_code == 200, await resp.aread()
            async for line in resp.aiter_lines():
                if line.startswith("data: "):
                    data = line[len("data: ") :]
                    events.append(data if data == "[DONE]" else strict_json(data))
                    if len(events) >= 2:
                        running.set()
    finally:
        running.set()
    return events


def finish_reasons(events: list[Any]) -> list[str]:
    return [
        c["finish_reason"]
        for e in events
        if isinstance(e, dict)
        for c in e.get("choices", [])
        if c.get("finish_reason")
    ]


def check_good_stream(events: list[Any], n: int) -> None:
    assert events and events[-1] == "[DONE]", events[-3:]
    assert not [e for e in events if isinstance(e, dict) and "error" in e], events
    assert finish_reasons(events) == ["length"] * n, finish_reasons(events)


async def started_good_streams(
    client: httpx.AsyncClient,
) -> tuple[list[tuple[str, dict[str, Any]]], list[asyncio.Task]]:
    """The good neighbour streams, once every one of them generates."""
    goods = neighbour_bodies()
    events = [asyncio.Event() for _ in goods]
    streams = [
        asyncio.create_task(good_stream(client, p, b, e))
        for (p, b), e in zip(goods, events, strict=True)
    ]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), REQUEST_TIMEOUT)
    return goods, streams


def check_good_streams(goods: list[tuple[str, dict[str, Any]]], results: list) -> None:
    for (_, good), good_events in zip(goods, results, strict=True):
        check_good_stream(good_events, good.get("n", 1))


async def bad_next_to_good(
    url: str, path: str, body: bytes, headers: dict[str, str]
) -> tuple[httpx.Response, list]:
    """Start the good streams, send the bad request once they generate, then a good
    non-streamed request next to it; every answer within the timeout."""
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT) as client:
        goods, streams = await started_good_streams(client)
        bad = client.post(path, content=body, headers=headers)
        plain = client.post("/generate", json={**GOOD, "max_tokens": 8, "ignore_eos": True})
        bad_resp, plain_resp = await asyncio.gather(bad, plain)
        assert plain_resp.status_code == 200, plain_resp.text
        assert plain_resp.json()["finish_reason"] == "length", plain_resp.json()
        results = await asyncio.gather(*streams)
    check_good_streams(goods, results)
    return bad_resp, results


@pytest.mark.parametrize(
    ("path", "body"),
    [(p, b) for _, p, b in BAD_NEIGHBOURS],
    ids=[what for what, _, _ in BAD_NEIGHBOURS],
)
def test_bad_request_does_not_hurt_its_neighbours(
    server: RunningServer, http: httpx.Client, path: str, body: Any
) -> None:
    headers = body.headers if isinstance(body, fz.FuzzRequest) else fz.JSON
    data = body.body if isinstance(body, fz.FuzzRequest) else body
    data = data if isinstance(data, bytes) else fz.encode(data)
    try:
        bad, _ = asyncio.run(bad_next_to_good(server.url, path, data, headers))
    except (httpx.TimeoutException, TimeoutError) as exc:
        raise AssertionError(f"a request hung next to {path} {data[:200]!r}") from exc
    assert bad.status_code < 500, f"{bad.status_code}: {bad.text[:500]}"
    if bad.status_code >= 400:
        check_error_shape(bad, server_paths(server))
    else:
        check_success(bad)
    check_healthy(server, http)


async def disconnect_next_to_good(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT) as client:
        goods, streams = await started_good_streams(client)
        for path, body in goods:  # each kind of request, dropped after its first chunk
            async with client.stream("POST", path, json={**body, "n": 3}) as resp:
                async for _ in resp.aiter_lines():
                    break
        results = await asyncio.gather(*streams)
    check_good_streams(goods, results)


def test_disconnects_do_not_hurt_their_neighbours(
    server: RunningServer, http: httpx.Client
) -> None:
    asyncio.run(disconnect_next_to_good(server.url))
    check_healthy(server, http)
