"""Hypothesis strategies for tests/test_fuzz.py: bad HTTP requests for every route.

A `FuzzRequest` is the exact bytes sent (bodies are serialised here, not by httpx, so they
can hold what httpx refuses: NaN, lone surrogates, 5,000-digit integers, nesting deeper
than any JSON encoder goes). Most bodies are a valid request with one to three fields
replaced, added or removed, so a failing example is close to minimal without shrinking.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

VOCAB = 653  # the bundled model's vocabulary size
MAX_BATCH = 8  # the fuzz server's --max-batch
JSON = {"content-type": "application/json"}


@dataclass(frozen=True)
class FuzzRequest:
    """One request as sent. `must_refuse`: the input is known to be invalid, so the
    answer must be a 4xx (not only "not a 500")."""

    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))
    params: dict[str, str] = field(default_factory=dict)
    must_refuse: bool = False

    def __repr__(self) -> str:  # what hypothesis prints for a falsifying example
        body = self.body if len(self.body) <= 400 else self.body[:400] + b"...(truncated)"
        extra = f", params={self.params}" if self.params else ""
        return f"FuzzRequest({self.method} {self.path}{extra}, body={body!r})"


# Raw JSON text that no encoder produces, spliced in where a value would go.
RAW_VALUES = {
    "deep_list": b"[" * 100_000 + b"]" * 100_000,
    "deep_dict": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "deep_1500": b"[" * 1500 + b"]" * 1500,
    "digits_5000": b"9" * 5000,
    "neg_digits_5000": b"-" + b"9" * 5000,
    "float_1e999": b"1e999",
    "nan": b"NaN",
    "neg_inf": b"-Infinity",
}
_RAW_MARK = "\u0001raw:"


def raw(name: str) -> str:
    """A placeholder that `encode` replaces with RAW_VALUES[name]."""
    return f"{_RAW_MARK}{name}\u0001"


def encode(body: Any) -> bytes:
    """`body` as JSON bytes: NaN/Infinity allowed, lone surrogates escaped, placeholders
    replaced by their raw JSON."""
    data = json.dumps(body, ensure_ascii=True, allow_nan=True).encode()
    for name, value in RAW_VALUES.items():
        data = data.replace(json.dumps(raw(name)).encode(), value)
    return data


# --- values -------------------------------------------------------------------------------

NASTY_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfffy",
    "\ufeff",
    "\u202e",
    "null",
    "NaN",
    "inf",
    "-1",
    "1e999",
    "true",
    "../../../etc/passwd",
    "/etc/passwd",
    "C:\\x",
    "%s%n%x",
    "{{ 7 * 7 }}",
    "<|im_start|>",
    "<|im_end|>",
    "<tool_call>",
    "🦀" * 50,
    "x" * 5000,
    "y" * 300,
    "é" * 1000,
]
NASTY_INTS = [
    0,
    -1,
    1,
    2,
    9,
    63,
    64,
    65,
    652,
    653,
    654,
    1023,
    1024,
    1025,
    2**31,
    2**31 - 1,
    2**32,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63) - 1,
    10**30,
    100_000,
]
NASTY_FLOATS = [
    0.0,
    -0.0,
    1e-40,
    5e-324,
    -1e-40,
    1e-8,
    0.5,
    1.5,
    2.0,
    1e308,
    -1e308,
    float("nan"),
    float("inf"),
    float("-inf"),
    1.0000000000000002,
    0.9999999999999999,
]
RAW_NAMES = list(RAW_VALUES)

nasty_text = st.one_of(
    st.sampled_from(NASTY_STRINGS),
    st.text(max_size=40),  # includes lone surrogates and control characters
    st.text(alphabet=string.printable, max_size=20),
)
nasty_number = st.one_of(
    st.sampled_from(NASTY_INTS),
    st.sampled_from(NASTY_FLOATS),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalar = st.one_of(st.none(), st.booleans(), nasty_number, nasty_text)
json_value = st.recursive(
    scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(nasty_text, inner, max_size=4),
    max_leaves=8,
)
raw_value = st.sampled_from(RAW_NAMES).map(raw)


def any_value(*specific: Any) -> st.SearchStrategy[Any]:
    """A field-specific value (half the time), a nasty generic one, or raw JSON."""
    options = [st.sampled_from(list(specific))] * 3 if specific else []
    return st.one_of(*options, scalar, json_value, raw_value)


token_ids = st.lists(st.sampled_from([0, 1, 2, 5, 100, 652, 653, -1, 10**6, 2**63]), max_size=6)

# --- bodies ---------------------------------------------------------------------------------

DELETE = object()  # a mutation that removes the field

SAMPLING_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "n": any_value(0, 1, 2, MAX_BATCH, MAX_BATCH + 1, 100_000, -1, 1.5, "2", True),
    "temperature": any_value(0, 0.0, 1e-40, 1e-8, "inf", "1.0", "hot", -0.5, 1e308, 1e-300),
    "top_p": any_value(0.0, 1e-40, 1.0, 1.5, -1, "0.5"),
    "top_k": any_value(0, -1, 1, 653, 10**9, -2, "5"),
    "min_p": any_value(0.0, 1.0, 1.1, -0.1, 1e-40),
    "max_tokens": any_value(0, 1, 4, 16, 17, -3, 10**30, "4", 4.0, 4.5),
    "min_tokens": any_value(0, 1, 4, 16, 17, -1, 10**9),
    "stop": any_value("", [""], ["\x00"], [3], "\ud800", ["a"] * 100, [None]),
    "stop_token_ids": st.one_of(token_ids, any_value([653], [-1], [10**6], [2**64], ["x"])),
    "ignore_eos": any_value(True, False, "yes", "false", 0, 1),
    "seed": any_value(0, -1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, "x", 1.5),
    "skip_special_tokens": any_value(True, False, None),
    "include_stop_str_in_output": any_value(True, 1, "no"),
    "prompt_logprobs": any_value(0, 1, 20, 21, -2, 10**9),
    "presence_penalty": any_value(0, 0.5, float("nan")),
    "frequency_penalty": any_value(0, -2.5),
    "repetition_penalty": any_value(1, 1.2, 0),
    "logit_bias": any_value({}, {"5": 100}, {"x": "y"}, {"-1": float("inf")}),
    "best_of": any_value(1, 2, 0, 10**6),
    "use_beam_search": any_value(True, False),
    "do_sample": any_value(True, False, "false", 0),
    "model": any_value(None, "rlserve-tiny", "gpt-9", "", "\x00", "../..", "/"),
}
OPENAI_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "stream": any_value(True, False, "true", 1),
    "stream_options": any_value(
        {"include_usage": True}, {"include_usage": "x"}, {"continuous_usage_stats": True}, []
    ),
    "user": any_value("u"),
    "return_tokens_as_token_ids": any_value(True),
    "return_token_ids": any_value(True),
}
COMPLETION_VALUES = {
    **SAMPLING_VALUES,
    **OPENAI_VALUES,
    "prompt": st.one_of(
        token_ids,
        st.lists(token_ids, max_size=3),
        nasty_text,
        any_value("hi", [], [[]], [""], ["hi", 5], [[1, 2], "hi"], [True, 2], [1.5]),
    ),
    "logprobs": any_value(0, 1, 5, 20, 21, -1, True, 10**9),
    "echo": any_value(True, False),
    "suffix": any_value("", "s", None),
}

_MESSAGE = {"role": "user", "content": "What is 2 + 3?"}
BAD_TEMPLATES = [
    "{{ raise_exception('no') }}",
    "{{ 1 / 0 }}",
    "{{ messages[99] }}",
    "{% for m in x %}",
    "{{ ''.__class__.__mro__ }}",
    "{% for m in messages %}{{ m.content }}{% endfor %}",
    "",
    "{{ tools[0].function.name }}",
]
message = st.fixed_dictionaries(
    {},
    optional={
        "role": any_value("user", "system", "assistant", "tool", "developer", "wizard", 5),
        "content": st.one_of(
            nasty_text,
            any_value(
                None,
                5,
                [],
                [{"type": "text", "text": "hi"}],
                [{"type": "image_url"}],
                [{"type": "text", "text": 5}],
                [{"type": "text"}],
                ["hi"],
                {"a": 1},
            ),
        ),
        "name": any_value("bob", 5),
        "tool_calls": any_value(
            [],
            [{"type": "function", "function": {"name": "f", "arguments": "{}"}}],
            [{"function": {"name": 5, "arguments": "{x"}}],
            [{"id": "x"}],
            "calls",
            [None],
        ),
        "tool_call_id": any_value("x", 5),
        "reasoning_content": any_value("think"),
    },
)
tool = st.one_of(
    any_value(
        {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}},
        {"type": "function", "function": {}},
        {"type": "function", "function": {"name": ""}},
        {"type": "function", "function": {"name": 5}},
        {"type": "function", "function": {"name": "f", "parameters": "x"}},
        {"type": "function"},
        {"type": "web_search"},
        {},
        "tool",
    ),
    st.builds(
        lambda name, params: {"type": "function", "function": {"name": name, "parameters": params}},
        nasty_text,
        json_value,
    ),
)
CHAT_VALUES = {
    **SAMPLING_VALUES,
    **OPENAI_VALUES,
    "messages": st.one_of(
        st.lists(message, max_size=3),
        st.lists(message, min_size=1, max_size=2).map(lambda ms: [_MESSAGE, *ms]),
        any_value([], [_MESSAGE] * 50, [None], [[_MESSAGE]], "hi", {"role": "user"}),
    ),
    "max_completion_tokens": any_value(1, 0, 17, -1),
    "logprobs": any_value(True, False, 1, "yes"),
    "top_logprobs": any_value(0, 1, 20, 21, -1),
    "tools": st.one_of(st.lists(tool, max_size=3), any_value([], {}, "tools")),
    "tool_choice": any_value(
        "auto",
        "none",
        "required",
        "any",
        {"type": "function", "function": {"name": "add"}},
        {"type": "function", "function": {"name": "nope"}},
        {"type": "function"},
        {},
        5,
    ),
    "parallel_tool_calls": any_value(True, False),
    "response_format": any_value({"type": "text"}, {"type": "json_object"}, {}, "json", []),
    "echo": any_value(True, False),
    "add_generation_prompt": any_value(True, False),
    "continue_final_message": any_value(True, False),
    "chat_template_kwargs": st.one_of(
        st.dictionaries(
            st.sampled_from(
                [
                    "tokenize",
                    "chat_template",
                    "enable_thinking",
                    "documents",
                    "return_dict",
                    "tools",
                    "messages",
                    "add_generation_prompt",
                    "continue_final_message",
                    "x",
                ]
            ),
            st.one_of(st.sampled_from(BAD_TEMPLATES), scalar),
            max_size=3,
        ),
        any_value([], "kwargs"),
    ),
    "chat_template": any_value(*BAD_TEMPLATES),
}
GENERATE_VALUES = {
    **SAMPLING_VALUES,
    "prompt": st.one_of(nasty_text, any_value("hi", [], [""], ["hi", 5], [1, 2])),
    "input_ids": st.one_of(
        token_ids, st.lists(token_ids, max_size=3), any_value([], [[]], "1 2", [1.5])
    ),
    "logprobs": any_value(0, 1, 5, 20, 21, -1, True),
    "policy_version": any_value(0, -1, 2**64, "v1"),
    "step_id": any_value(0, -1, 2**64, "x"),
    "request_id": any_value("fuzz", "", "\x00", "x" * 5000, 5),
}
EXTRA_FIELD_NAMES = st.sampled_from(["", "__proto__", "\x00", "x" * 300, "\ud800", "extra"])


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """`base` with 1-3 fields set to nasty values, deleted, or added under odd names."""
    body = dict(base)
    names = draw(st.lists(st.sampled_from(sorted(values)), min_size=1, max_size=3, unique=True))
    for name in names:
        value = draw(st.one_of(values[name], st.just(DELETE)))
        if value is DELETE:
            body.pop(name, None)
        else:
            body[name] = value
    if draw(st.integers(0, 9)) == 0:
        body[draw(EXTRA_FIELD_NAMES)] = draw(json_value)
    return body


def non_object_body() -> st.SearchStrategy[bytes]:
    """Bodies that are not a JSON object: other JSON, broken JSON, not UTF-8, nothing."""
    return st.one_of(
        st.sampled_from(
            [
                b"",
                b"null",
                b"[]",
                b"[{}]",
                b'"prompt"',
                b"42",
                b"true",
                b"{",
                b'{"prompt": ',
                b'{"prompt": "hi",}',
                b"{'prompt': 'hi'}",
                b'{"prompt": "\xff\xfe"}',
                b'\xef\xbb\xbf{"prompt": "hi"}',
                b'{"prompt": "hi"} trailing',
                b"\x00" * 16,
                b'{"prompt": "hi", "prompt": 5}',
                b'{"prompt": "\\ud800"}',
                RAW_VALUES["deep_list"],
                RAW_VALUES["deep_dict"],
                RAW_VALUES["digits_5000"],
            ]
        ),
        st.binary(max_size=64),
        json_value.map(encode),
    )


def json_route(
    path: str, base: dict[str, Any], values: dict[str, Any]
) -> st.SearchStrategy[FuzzRequest]:
    """POST `path` with a mutated `base`, or a body that is no JSON object at all."""
    bodies = st.one_of(
        mutated(base, values).map(encode),
        mutated(base, values).map(encode),
        mutated(base, values).map(encode),
        non_object_body(),
    )
    content_types = st.sampled_from(["application/json"] * 6 + ["text/plain", ""])
    return st.builds(
        lambda body, ctype: FuzzRequest("POST", path, body, {"content-type": ctype}),
        bodies,
        content_types,
    )


COMPLETION_BASE = {"prompt": "What is 2 + 3?", "max_tokens": 4}
CHAT_BASE = {"messages": [_MESSAGE], "max_tokens": 4}
GENERATE_BASE = {"prompt": "What is 2 + 3?", "max_tokens": 4}

completions = json_route("/v1/completions", COMPLETION_BASE, COMPLETION_VALUES)
chat = json_route("/v1/chat/completions", CHAT_BASE, CHAT_VALUES)
generate = json_route("/generate", GENERATE_BASE, GENERATE_VALUES)

# --- admin routes ---------------------------------------------------------------------------

# Names under the fuzz server's --weights-dir (made by test_fuzz.weights_dir).
WEIGHTS_DIR_NAMES = [
    "junk.safetensors",
    "empty.safetensors",
    "notes.txt",
    "adapter_list",
    "adapter_r0",
    "adapter_bad_json",
    "adapter_no_weights",
    "adapter_strings",
    "empty_dir",
    ".",
    "..",
    "missing",
    "adapter_list/adapter_config.json",
    "a\x00b",
    "x" * 5000,
    "/" + "y" * 300,
    "link_out",
]
path_value = any_value(*WEIGHTS_DIR_NAMES)
UPDATE_VALUES = {
    "path": path_value,
    "version": any_value(1, -1, 2**64, "3", "-3", "x", 1.5, True),
    "mode": any_value("keep", "wait", "abort", "KEEP", "", None),
    "recompute_kv": any_value(True, False, "false", "true", 0, "no"),
}
ADAPTER_VALUES = {
    "adapter_path": path_value,
    "adapter_name": any_value("a", "", "\x00", "x" * 5000, ["a"], {"a": 1}, 5, "../a"),
}
NAME_VALUES = {"adapter_name": ADAPTER_VALUES["adapter_name"]}
# Valid pause modes are left to test_fuzz's explicit pause/resume cycle check: a fuzzed
# pause that succeeds is undone by the /resume after every example anyway.
PAUSE_VALUES = {"mode": any_value("keep", "wait", "abort", "KEEP", "", None, 5)}
RESUME_VALUES = {"recompute_kv": any_value(True, False, "false", 0, None)}
ABORT_VALUES = {"request_id": any_value("nope", "", 5, ["a"], None)}

update_json = json_route("/update_weights", {"path": "junk.safetensors"}, UPDATE_VALUES)
load_adapter = json_route("/load_adapter", {"adapter_path": "adapter_list"}, ADAPTER_VALUES)
unload_adapter = json_route("/unload_adapter", {"adapter_name": "nope"}, NAME_VALUES)
pause = json_route("/pause", {"mode": "keep"}, PAUSE_VALUES)
resume = json_route("/resume", {}, RESUME_VALUES)
abort = json_route("/abort", {"request_id": "nope"}, ABORT_VALUES)


def safetensors_bytes(header: Any, data: bytes, declared: int | None = None) -> bytes:
    head = json.dumps(header, allow_nan=True).encode()
    length = len(head) if declared is None else declared
    return length.to_bytes(8, "little", signed=False) + head + data


header_entry = st.fixed_dictionaries(
    {},
    optional={
        "dtype": any_value("F32", "BF16", "I64", "F8", "f32", ""),
        "shape": any_value([], [2], [2, 2], [-1], [0], [2**40, 2**40], ["2"], 3),
        "data_offsets": any_value([0, 8], [0, 0], [8, 0], [0, 2**63], [-8, 0], [0], "0,8"),
    },
)
tensor_names = st.sampled_from(
    ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", "junk", "", "\x00"]
)
safetensors_body = st.one_of(
    st.binary(max_size=64),
    st.builds(
        safetensors_bytes,
        st.dictionaries(tensor_names, header_entry, max_size=3),
        st.binary(max_size=32),
    ),
    st.builds(safetensors_bytes, json_value, st.binary(max_size=8)),
    st.builds(
        safetensors_bytes, st.just({}), st.just(b""), st.sampled_from([0, 2**63, 2**64 - 1, 10**6])
    ),
)
query_value = st.one_of(
    st.sampled_from(
        ["1", "-1", "x", "", "abort", "wait", "keep", "true", "false", "9" * 5000, "\x00"]
    ),
    st.text(max_size=8),
)
update_stream = st.builds(
    lambda body, params: FuzzRequest(
        "POST", "/update_weights", body, {"content-type": "application/octet-stream"}, params
    ),
    safetensors_body,
    st.dictionaries(st.sampled_from(["version", "mode", "recompute_kv"]), query_value, max_size=3),
)

# /upload_adapter: multipart bodies built by hand so parts can be malformed.
ADAPTER_CONFIGS = [
    b"[]",
    b"{}",
    b'{"r": 0, "lora_alpha": 8, "target_modules": ["q_proj"]}',
    b'{"r": -1}',
    b'{"r": "8"}',
    b'{"r": 8, "target_modules": 5}',
    b"{",
    b"null",
    b'{"r": 1e999}',
    b'{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}',
    b"\xff",
]
FILE_NAMES = [
    "adapter_config.json",
    "adapter_model.safetensors",
    "../adapter_config.json",
    "/etc/adapter_config.json",
    "a\\b",
    "",
    ".",
    "x" * 300,
    "adapter.zip",
    "a\x01b",
]


def multipart(fields: list[tuple[str, str | None, bytes]], boundary: str = "fuzzb") -> bytes:
    out = b""
    for name, filename, data in fields:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


upload_part = st.one_of(
    st.tuples(
        st.just("adapter_name"),
        st.none(),
        st.sampled_from([b"a", b"", b"\x00", b"\xff\xfe", b"x" * 5000, b"../a"]),
    ),
    st.tuples(
        st.just("files"), st.sampled_from(["adapter_config.json"]), st.sampled_from(ADAPTER_CONFIGS)
    ),
    st.tuples(
        st.sampled_from(["files", "file", ""]),
        st.sampled_from(FILE_NAMES),
        st.one_of(st.sampled_from(ADAPTER_CONFIGS), st.binary(max_size=64)),
    ),
)
upload_body = st.one_of(
    st.lists(upload_part, max_size=4).map(multipart),
    st.binary(max_size=64),
    st.sampled_from([b"", b"--fuzzb--\r\n", b"--fuzzb\r\n\r\n", b"--other\r\nx\r\n"]),
)
upload_content_type = st.sampled_from(
    [
        "multipart/form-data; boundary=fuzzb",
        "multipart/form-data; boundary=fuzzb",
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "application/json",
        "",
    ]
)
upload_adapter = st.builds(
    lambda body, ctype: FuzzRequest("POST", "/upload_adapter", body, {"content-type": ctype}),
    upload_body,
    upload_content_type,
)

# --- GET routes, methods and paths ----------------------------------------------------------

model_id = st.one_of(
    st.sampled_from(["rlserve-tiny", "nope", "..", "%00", "a/b", "x" * 3000]), st.text(max_size=20)
)
get_request = st.one_of(
    model_id.map(lambda m: FuzzRequest("GET", "/v1/models/" + quote(m, safe=""), headers={})),
    st.builds(
        lambda params, accept: FuzzRequest(
            "GET", "/metrics", headers={"accept": accept}, params=params
        ),
        st.dictionaries(st.sampled_from(["format", "x"]), query_value, max_size=2),
        st.sampled_from(["", "*/*", "text/plain", "application/openmetrics-text", "text/html"]),
    ),
    st.builds(
        lambda path, params: FuzzRequest("GET", path, headers={}, params=params),
        st.sampled_from(["/health", "/policy_version", "/v1/models"]),
        st.dictionaries(st.sampled_from(["x", "format"]), query_value, max_size=2),
    ),
)
ROUTES = [
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/models",
    "/generate",
    "/update_weights",
    "/load_adapter",
    "/upload_adapter",
    "/unload_adapter",
    "/pause",
    "/resume",
    "/abort",
    "/policy_version",
    "/health",
    "/metrics",
]
wrong_method = st.builds(
    lambda method, path: FuzzRequest(method, path, b"{}"),
    st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "POST"]),
    st.sampled_from([*ROUTES, "/v1/nowhere", "/v1/completions/", "//generate", "/v1/../health"]),
)

ADMIN_STRATEGIES: dict[str, st.SearchStrategy[FuzzRequest]] = {
    "update_weights_json": update_json,
    "update_weights_stream": update_stream,
    "load_adapter": load_adapter,
    "upload_adapter": upload_adapter,
    "unload_adapter": unload_adapter,
    "pause": pause,
    "resume": resume,
    "abort": abort,
}
