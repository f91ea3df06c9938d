"""Input limits and validation on a real server: body size, prompt size, tokenising off
the engine thread and event loop, `n` and queue bounds, request chat templates, 500s that
must be 400s, per-request `created`, `do_sample: false`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlserve.outputs import CompletionOutput, RequestOutput
from rlserve.sampling_params import SamplingParams
from rlserve.server import ServerConfig
from rlserve.server.openai_routes import _events
from rlserve.server.prompt_input import check_text_fits, max_bytes_per_token
from rlserve.server.request_group import RequestGroup
from tests.support.servers import TEST_MODEL, RunningServer, shared_server, wait_until

LIMIT = 64 * 1024  # the input server's --max-request-bytes
USER = [{"role": "user", "content": "What is 2 + 3?"}]


@pytest.fixture(scope="module")
def input_server(make_engine, pytestconfig) -> RunningServer:
    """Four batch slots, eight queue places, 64 KiB bodies, untrusted request templates."""

    def make() -> RunningServer:
        config = ServerConfig(
            max_batch=4,
            max_queue=8,
            max_tokens=1000,
            max_request_bytes=LIMIT,
            tool_call_parser=None,
        )
        return RunningServer(make_engine(TEST_MODEL, max_num_seqs=4), config)

    return shared_server("input", make, pytestconfig)


@pytest.fixture(scope="module")
def trusting_server(make_engine, pytestconfig) -> RunningServer:
    def make() -> RunningServer:
        config = ServerConfig(max_batch=2, max_tokens=8, trust_request_chat_template=True)
        return RunningServer(make_engine(TEST_MODEL, max_num_seqs=2), config)

    return shared_server("trusting", make, pytestconfig)


def _error(resp: httpx.Response, status: int, needle: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert needle in error["message"], error
    return error


def _raw_exchange(port: int, data: bytes, timeout: float = 30.0) -> bytes:
    """Send `data` on a fresh connection; return everything read until the server pauses
    or closes (for framing HTTP by hand)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return _read_response(sock)


def _read_response(sock: socket.socket) -> bytes:
    """One HTTP response with a Content-Length body (b"" if the server closed)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return buf
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


# ---- defect 2: body size, prompt size, where tokenising happens ----------------------------


def test_body_over_the_limit_is_413_in_the_error_shape(input_server: RunningServer) -> None:
    body = {"prompt": "x" * LIMIT, "max_tokens": 1}
    for path in ("/v1/completions", "/generate"):
        error = _error(httpx.post(input_server.url + path, json=body, timeout=30), 413, "limit")
        assert error["code"] == "request_too_large"
    chat = {"messages": [{"role": "user", "content": "x" * LIMIT}]}
    _error(httpx.post(input_server.url + "/v1/chat/completions", json=chat, timeout=30), 413, "")
    ok = httpx.post(input_server.url + "/generate", json={"prompt": "hi", "max_tokens": 1})
    assert ok.status_code == 200


def test_chunked_body_is_refused_while_reading(input_server: RunningServer) -> None:
    """No Content-Length and a body that never ends: the 413 comes as soon as the limit is
    crossed, so the server never waits for (or buffers) the whole body."""
    chunk = b"x" * (LIMIT + 1)
    head = (
        b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    reply = _raw_exchange(input_server.port, head + b"%x\r\n" % len(chunk) + chunk + b"\r\n")
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"--max-request-bytes" in reply


@contextlib.contextmanager
def _recording_encode(tokenizers: tuple[Any, ...], record: Callable[[str], None]) -> Iterator[None]:
    """Spy on `encode` of these tokenizers (instance attributes, removed afterwards):
    `record(text)` runs on the calling thread before each real call."""
    for tokenizer in tokenizers:

        def spy(text: str, *args: Any, _real: Any = tokenizer.encode, **kwargs: Any) -> Any:
            record(text)
            return _real(text, *args, **kwargs)

        tokenizer.encode = spy
    try:
        yield
    finally:
        for tokenizer in tokenizers:
            del tokenizer.encode


def test_text_that_cannot_fit_is_refused_before_tokenising(server: RunningServer) -> None:
    state = server.app.state.rlserve
    lengths: list[int] = []
    big = "a" * 2_000_000
    with _recording_encode(
        (state.tokenizer, server.engine.tokenizer), lambda t: lengths.append(len(t))
    ):
        _error(httpx.post(server.url + "/v1/completions", json={"prompt": big}), 400, "context")
        _error(httpx.post(server.url + "/generate", json={"prompt": ["hi", big]}), 400, "context")
        chat = {"messages": [{"role": "user", "content": big}]}
        _error(httpx.post(server.url + "/v1/chat/completions", json=chat), 400, "context")
    assert all(n < 1000 for n in lengths), "a text that cannot fit was tokenised"


def test_prompts_are_tokenised_off_the_engine_thread_and_event_loop(
    input_server: RunningServer,
) -> None:
    threads: list[str] = []
    state = input_server.app.state.rlserve
    tokenizers = (state.tokenizer, input_server.engine.tokenizer)
    url = input_server.url
    with _recording_encode(tokenizers, lambda _: threads.append(threading.current_thread().name)):
        completion = httpx.post(
            url + "/v1/completions",
            json={"prompt": "What is 2 + 3?", "max_tokens": 2, "echo": True},
        )
        generated = httpx.post(url + "/generate", json={"prompt": ["hi", "ho"], "max_tokens": 2})
        chat = httpx.post(url + "/v1/chat/completions", json={"messages": USER, "max_tokens": 2})
    assert completion.status_code == generated.status_code == chat.status_code == 200
    assert completion.json()["choices"][0]["text"].startswith("What is 2 + 3?")  # echo
    assert generated.json()["results"][1]["prompt_ids"] == state.tokenizer.encode("ho")
    assert threads, "nothing was tokenised"
    event_loop = input_server._thread.name
    assert "rlserve-engine" not in threads and event_loop not in threads, threads


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_size_bound_never_refuses_a_prompt_that_fits(data, bundled_tokenizer) -> None:
    """Soundness: a text of k tokens always passes the check for a context of k + 1."""
    vocab = bundled_tokenizer["pieces"]
    text = data.draw(
        st.one_of(
            st.text(max_size=200),
            st.lists(st.sampled_from(vocab), max_size=60).map("".join),
        )
    )
    tokenizer, bound = bundled_tokenizer["tokenizer"], bundled_tokenizer["bound"]
    tokens = len(tokenizer.encode(text))
    check_text_fits(text, bound, max_model_len=tokens + 1, param="prompt")


@pytest.fixture(scope="module")
def bundled_tokenizer() -> dict[str, Any]:
    from transformers import AutoTokenizer

    from rlserve.config import EngineConfig

    tokenizer = AutoTokenizer.from_pretrained(str(EngineConfig().model_path))
    pieces = [tokenizer.decode([i]) for i in range(len(tokenizer))]
    return {"tokenizer": tokenizer, "bound": max_bytes_per_token(tokenizer), "pieces": pieces}


def test_size_bound_exists_only_where_it_is_sound(bundled_tokenizer) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    assert bundled_tokenizer["bound"] is not None
    longest = max(len(p.encode()) for p in bundled_tokenizer["pieces"] if "\ufffd" not in p)
    assert bundled_tokenizer["bound"] >= longest
    # Whitespace splitting drops spaces and a word-level [UNK] stands for a whole word.
    words = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    assert max_bytes_per_token(PreTrainedTokenizerFast(tokenizer_object=words)) is None
    # BPE keeps every byte only behind a byte-level pre-tokenizer (here inside a Sequence),
    # not behind a Split whose pattern merely spells "ByteLevel".
    for pre, sound in (
        (pre_tokenizers.Sequence([pre_tokenizers.Digits(), pre_tokenizers.ByteLevel()]), True),
        (pre_tokenizers.Split("ByteLevel", "isolated"), False),
    ):
        bpe = Tokenizer(models.BPE({"a": 0, "b": 1}, []))
        bpe.pre_tokenizer = pre
        bound = max_bytes_per_token(PreTrainedTokenizerFast(tokenizer_object=bpe))
        assert (bound is not None) == sound, pre


# ---- defect 4: n the batch can never hold ---------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"prompt": "hi", "max_tokens": 2}),
        ("/v1/chat/completions", {"messages": USER, "max_tokens": 2}),
        ("/generate", {"prompt": "hi", "max_tokens": 2}),
    ],
)
@pytest.mark.parametrize(
    ("n", "needle", "param"),
    [(5, "one engine step can run", "n"), (100_000, "--max-queue", None)],
)
def test_n_over_the_batch_is_refused(
    input_server: RunningServer, path: str, body: dict, n: int, needle: str, param: str | None
) -> None:
    """The engine refuses an n its batch can never hold; an n past --max-queue is refused
    by the queue first."""
    resp = httpx.post(input_server.url + path, json={**body, "n": n, "best_of": n}, timeout=30)
    assert _error(resp, 400, needle)["param"] == param
    ok = httpx.post(input_server.url + path, json={**body, "n": 4}, timeout=30)
    assert ok.status_code == 200 and len(ok.json().get("choices", ok.json().get("results"))) == 4


# ---- defect 9: --max-queue counts sequences ------------------------------------------------


def test_a_refused_request_is_never_tokenised(input_server: RunningServer) -> None:
    """Queue refusals (400 too many sequences, 429 full) come before tokenising: a spy on
    `encode` sees none of these prompts. The full queue is fault injection: its count is
    set as if eight sequences were still in the inbox."""
    state = input_server.app.state.rlserve
    tokenizers = (state.tokenizer, input_server.engine.tokenizer)
    encoded: list[str] = []
    url = input_server.url
    chat = {"messages": [{"role": "user", "content": "refused chat"}], "max_tokens": 1}
    with _recording_encode(tokenizers, encoded.append):
        many = {"prompt": [f"refused {i}" for i in range(9)], "max_tokens": 1}
        _error(httpx.post(url + "/generate", json=many), 400, "--max-queue")
        too_many = {**chat, "n": 9, "best_of": 9}
        _error(httpx.post(url + "/v1/chat/completions", json=too_many), 400, "--max-queue")
        state.loop._admission.queued = 8
        try:
            for path, body in (
                ("/generate", {"prompt": "refused generate", "max_tokens": 1}),
                ("/v1/completions", {"prompt": "refused completion", "max_tokens": 1}),
                ("/v1/chat/completions", chat),
            ):
                _error(httpx.post(url + path, json=body), 429, "--max-queue 8")
        finally:
            state.loop._admission.queued = 0
    assert not [text for text in encoded if "refused" in text], encoded


def test_a_request_larger_than_the_queue_is_refused(input_server: RunningServer) -> None:
    url = input_server.url + "/generate"
    many = httpx.post(url, json={"prompt": [f"q{i}" for i in range(9)], "max_tokens": 1})
    assert _error(many, 400, "--max-queue")["code"] == "too_many_sequences"
    grouped = httpx.post(url, json={"prompt": ["a", "b", "c"], "n": 3, "max_tokens": 1})
    _error(grouped, 400, "9 sequences")
    fits = httpx.post(url, json={"prompt": ["a", "b"], "n": 4, "max_tokens": 1}, timeout=30)
    assert fits.status_code == 200 and len(fits.json()["results"]) == 8


def test_waiting_n_groups_count_every_sample(input_server: RunningServer) -> None:
    """Four running samples fill the batch; two n=4 groups then wait in the engine and
    count 8 against --max-queue 8, so one more is refused (429)."""
    loop = input_server.app.state.rlserve.loop
    url = input_server.url + "/v1/completions"
    body = {"prompt": "count:", "n": 4, "max_tokens": 1000, "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=60) as client:
        streams = []
        try:
            for _ in range(3):
                stream = client.stream("POST", url, json=body)
                streams.append(stream)
                assert stream.__enter__().status_code == 200
                if len(streams) == 1:
                    assert wait_until(lambda: input_server.engine.stats()["num_running"] == 4)
            assert wait_until(lambda: loop.stats()["queue_depth"] == 8), loop.stats()
            refused = client.post(url, json={**body, "stream": False})
            assert _error(refused, 429, "--max-queue 8")["code"] == "queue_full"
        finally:
            for stream in streams:
                stream.__exit__(None, None, None)


# ---- defect 5: request chat templates ------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {"chat_template": "{{ messages[0].content }}"},
        {"chat_template_kwargs": {"chat_template": "{{ messages[0].content }}"}},
    ],
)
def test_request_templates_need_the_trust_flag(server: RunningServer, extra: dict) -> None:
    body = {"messages": USER, "max_tokens": 2, **extra}
    resp = httpx.post(server.url + "/v1/chat/completions", json=body)
    _error(resp, 400, "--trust-request-chat-template")


def test_trusted_request_template_is_used(trusting_server: RunningServer) -> None:
    template = "<|im_start|>{{ messages[0].content }}<|im_end|>"
    body = {"messages": USER, "max_tokens": 2, "chat_template": template, "return_token_ids": True}
    resp = httpx.post(trusting_server.url + "/v1/chat/completions", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    tokenizer = trusting_server.app.state.rlserve.tokenizer
    expected = tokenizer.encode("<|im_start|>What is 2 + 3?<|im_end|>", add_special_tokens=False)
    assert resp.json()["prompt_token_ids"] == expected


def test_slow_template_does_not_hold_the_event_loop(trusting_server: RunningServer) -> None:
    """While a template renders for a second or more, /health keeps answering: replies
    arrive before the request reaches the engine (with the render on the event loop, none
    could). The chat request is on the wire before the first health check."""
    slow = "{% for i in range(100000) %}{% for j in range(50) %}{% endfor %}{% endfor %}hi"
    body = {"messages": USER, "max_tokens": 1, "chat_template_kwargs": {"chat_template": slow}}
    payload = json.dumps(body).encode()
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(payload)
    )
    engine = trusting_server.engine
    admitted_before = engine.stats()["prompt_tokens_total"]
    healthy_while_rendering = 0
    with (
        socket.create_connection(("127.0.0.1", trusting_server.port), timeout=120) as chat,
        httpx.Client(timeout=120) as client,
    ):
        chat.sendall(head + payload)
        while not select.select([chat], [], [], 0)[0]:
            ok = client.get(trusting_server.url + "/health").status_code == 200
            rendering = engine.stats()["prompt_tokens_total"] == admitted_before
            healthy_while_rendering += ok and rendering
        reply = _read_response(chat)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
    assert healthy_while_rendering >= 5


def test_request_templates_render_on_their_own_workers(trusting_server: RunningServer) -> None:
    """A request's own template renders on a small pool of its own, so looping ones cannot
    take the workers that tokenise prompts and render the server's template."""
    tokenizer = trusting_server.app.state.rlserve.tokenizer
    renders: list[tuple[bool, str]] = []
    encodes: list[str] = []

    def spy(*args: Any, _real: Any = tokenizer.apply_chat_template, **kwargs: Any) -> Any:
        renders.append(("chat_template" in kwargs, threading.current_thread().name))
        return _real(*args, **kwargs)

    tokenizer.apply_chat_template = spy
    try:
        with _recording_encode((tokenizer,), lambda _: encodes.append(_thread_name())):
            url = trusting_server.url + "/v1/chat/completions"
            for extra in ({}, {"chat_template": "{{ messages[0].content }}"}):
                resp = httpx.post(url, json={"messages": USER, "max_tokens": 1, **extra})
                assert resp.status_code == 200, resp.text
    finally:
        del tokenizer.apply_chat_template
    pool = "rlserve-request-template"
    assert [(own, name.startswith(pool)) for own, name in renders] == [(False, False), (True, True)]
    assert encodes and not any(name.startswith(pool) for name in encodes), encodes


def _thread_name() -> str:
    return threading.current_thread().name


# ---- defect 8: 500s and 200s that must be 400s ---------------------------------------------

SURROGATE = b'"a\\ud800b"'
DEEP = b"[" * 100_000 + b"]" * 100_000
CHAT = "/v1/chat/completions"


def _tool(function: Any, kind: str = "function") -> list[dict[str, Any]]:
    return [{"type": kind, "function": function}]


BAD_INPUT = [
    ("/v1/completions", b'{"prompt": ' + SURROGATE + b"}", "surrogate"),
    ("/generate", b'{"prompt": [' + SURROGATE + b"]}", "surrogate"),
    (CHAT, b'{"messages": [{"role": "user", "content": ' + SURROGATE + b"}]}", "surrogate"),
    ("/v1/completions", b'{"prompt": ' + DEEP + b"}", "nested"),
    (CHAT, b'{"messages": [{"role": "user", "content": "x"}], "tools": ' + DEEP + b"}", "nested"),
    ("/v1/completions", b'{"prompt": "hi", "temperature": NaN}', "NaN"),
    ("/v1/completions", b'{"prompt": "hi", "temperature": Infinity}', "Infinity"),
    ("/v1/completions", b'{"prompt": "hi", "temperature": 1e999}', "finite"),
    ("/v1/completions", {"prompt": "hi", "temperature": "inf"}, "finite"),
    ("/generate", {"prompt": "hi", "top_p": "nan"}, "finite"),
    ("/v1/completions", {"prompt": "hi", "seed": 2**63}, "seed"),
    ("/generate", {"prompt": "hi", "seed": -(2**63) - 1}, "seed"),
    (CHAT, {"messages": [{"role": "user", "content": 5}]}, "content must be"),
    (CHAT, {"messages": [{"role": "user"}]}, "needs 'content'"),
    (CHAT, {"messages": [{"role": "assistant", "content": None}]}, "needs 'content'"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "'text'"),
    (CHAT, {"messages": [{"role": "wizard", "content": "x"}]}, "unknown role"),
    (CHAT, {"messages": USER, "tools": _tool({"description": "no name"})}, "'name'"),
    (CHAT, {"messages": USER, "tools": _tool({"name": ""})}, "'name'"),
    (CHAT, {"messages": USER, "tools": _tool({"name": 3})}, "'name'"),
    (CHAT, {"messages": USER, "tools": [{"type": "function"}]}, "'function'"),
    (CHAT, {"messages": USER, "tools": _tool({"name": "f"}, kind="retrieval")}, "type"),
    (CHAT, {"messages": USER, "tools": _tool({"name": "f", "parameters": "x"})}, "parameters"),
    (CHAT, {"messages": USER, "stream": True, "tools": _tool({})}, "'name'"),
]


@pytest.mark.parametrize(("path", "body", "needle"), BAD_INPUT)
def test_bad_input_is_a_400_in_the_error_shape(
    server: RunningServer, path: str, body: Any, needle: str
) -> None:
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    if isinstance(body, bytes):
        kwargs["headers"] = {"content-type": "application/json"}
    resp = httpx.post(server.url + path, timeout=30, **kwargs)
    _error(resp, 400, needle)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"prompt": "hi", "seed": 2**63 - 1}),
        ("/generate", {"prompt": "hi", "seed": -(2**63)}),
        (
            CHAT,
            {
                "messages": [
                    *USER,
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "c1",
                                "type": "function",
                                "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
                            }
                        ],
                    },
                    {"role": "tool", "tool_call_id": "c1", "content": "5"},
                ],
                "tools": _tool({"name": "add", "parameters": {"type": "object"}}),
            },
        ),
    ],
)
def test_edge_values_that_are_valid_are_served(server: RunningServer, path: str, body) -> None:
    resp = httpx.post(server.url + path, json={**body, "max_tokens": 2}, timeout=30)
    assert resp.status_code == 200, resp.text


def test_an_unexpected_error_is_a_json_500_that_keeps_the_connection(
    input_server: RunningServer,
) -> None:
    """A route added for the test raises; the 500 is JSON without the exception's text (it
    may hold server paths) and the same keep-alive connection serves the next request."""

    async def broken() -> None:
        raise RuntimeError("/secret/server/path")

    if not any(getattr(r, "path", "") == "/test-broken" for r in input_server.app.routes):
        input_server.app.add_api_route("/test-broken", broken, methods=["GET"])
    request = b"GET %s HTTP/1.1\r\nHost: test\r\n\r\n"
    with socket.create_connection(("127.0.0.1", input_server.port), timeout=30) as sock:
        sock.sendall(request % b"/test-broken")
        first = _read_response(sock)
        sock.sendall(request % b"/health")
        second = _read_response(sock)
    assert first.startswith(b"HTTP/1.1 500")
    error = json.loads(first.partition(b"\r\n\r\n")[2])["error"]
    assert error["type"] == "server_error" and "RuntimeError" in error["message"]
    assert "/secret" not in error["message"]
    assert second.startswith(b"HTTP/1.1 200"), second[:100]


def test_a_stream_that_fails_midway_ends_with_an_error_event_and_done() -> None:
    """`_events` over a real RequestGroup fed by hand; the chunk formatter fails on the
    second delta (standing in for any bug while formatting)."""

    class View:
        def usage_chunk(self) -> dict[str, Any]:
            return {}

    def to_chunks(index: int, delta: RequestOutput) -> list[dict[str, Any]]:
        if delta.outputs[0].token_ids == [2]:
            raise KeyError("boom")
        return [{"token_ids": delta.outputs[0].token_ids}]

    async def run() -> list[str]:
        aborted: list[RequestGroup] = []
        group = RequestGroup(["x"], SamplingParams(), asyncio.get_running_loop(), aborted.append)
        for token in (1, 2):
            group.put(0, RequestOutput("r", None, [5], [CompletionOutput(0, "t", [token], [0.0])]))
        events = [e async for e in _events(group, to_chunks, View(), usage_modes=(False, False))]
        assert aborted == [group]  # what was still running is aborted
        return events

    events = asyncio.run(run())
    assert events[0] == 'data: {"token_ids": [1]}\n\n'
    error = json.loads(events[1].removeprefix("data: "))["error"]
    assert error["code"] == 500 and "KeyError" in error["message"]
    assert events[2:] == ["data: [DONE]\n\n"]


# ---- defect 14: do_sample, created ---------------------------------------------------------


def test_do_sample_false_is_greedy(server: RunningServer) -> None:
    url = server.url + "/generate"
    body = {"prompt": "zq xv", "max_tokens": 12, "ignore_eos": True}
    greedy = httpx.post(url, json={**body, "temperature": 0}).json()["completion_ids"]
    for seed in (1, 2, 3):
        resp = httpx.post(url, json={**body, "do_sample": False, "seed": seed}).json()
        assert resp["completion_ids"] == greedy
    chat = {"messages": USER, "max_tokens": 8, "do_sample": False, "seed": 7}
    reference = {**chat, "temperature": 0}
    replies = [httpx.post(server.url + CHAT, json=b).json() for b in (chat, reference)]
    assert replies[0]["choices"][0]["message"] == replies[1]["choices"][0]["message"]


def test_created_is_the_time_of_the_request(server: RunningServer) -> None:
    started = server.app.state.rlserve.created
    if time.time() - started < 1.1:  # make "the server's start time" a different second
        time.sleep(1.1 - (time.time() - started))
    before = int(time.time())
    completion = httpx.post(server.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 1})
    chat = httpx.post(server.url + CHAT, json={"messages": USER, "max_tokens": 1})
    streamed = httpx.post(
        server.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2, "stream": True}
    )
    after = int(time.time())
    created = [completion.json()["created"], chat.json()["created"]]
    chunks = [
        json.loads(line.removeprefix("data: "))
        for line in streamed.text.splitlines()
        if line.startswith("data: {")
    ]
    created += [c["created"] for c in chunks]
    assert all(before <= c <= after for c in created), (created, before, after, started)
    assert len({c["created"] for c in chunks}) == 1  # one time for the whole stream


def test_serve_flags_set_the_input_limits() -> None:
    from rlserve.server.cli import build_parser, config_from_args

    argv = ["--max-request-bytes", "4096", "--trust-request-chat-template"]
    config = config_from_args(build_parser().parse_args(argv))
    assert config.max_request_bytes == 4096 and config.trust_request_chat_template is True
    defaults = config_from_args(build_parser().parse_args([]))
    assert defaults.max_request_bytes == 32 * 2**20
    assert defaults.trust_request_chat_template is False
    with pytest.raises(ValueError, match="max_request_bytes"):
        ServerConfig(max_request_bytes=0)
