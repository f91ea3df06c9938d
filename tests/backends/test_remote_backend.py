"""The remote backend's dialects against a REAL rlserve server on loopback (which serves
SGLang's and vLLM's admin routes beside its own): each dialect's calls reach the right
routes with the right bodies, seen in what the server did. SGLang's `/load_lora_adapter`
is the one route rlserve does not serve: that request is checked on a recording HTTP
server (tests/support/fake_http.py) instead, the only stand-in here."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import save_file

from rlserve import Engine, SamplingParams
from rlserve.backends import UNKNOWN_VERSION, BackendUnsupported, create_backend
from rlserve.backends.remote import RemoteBackend
from rlserve.backends.remote_wire import int_version, prompt_logprob_values, sglang_input_logprobs
from rlserve.client import APIStatusError, Client
from rlserve.config import BUNDLED_MODEL
from rlserve.models.loader import read_safetensors
from tests.support.fake_http import FakeHTTPServer
from tests.support.remote_backends import ADMIN_KEY, dialect_backend, remote_server
from tests.support.servers import RunningServer

DIALECTS = ("rlserve", "vllm", "sglang")
GREEDY = SamplingParams(temperature=0, max_tokens=8)
PROMPT = [5, 17, 42, 99]
NORM = "model.norm.weight"


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(num_blocks=128, block_size=8)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("remote-files")


@pytest.fixture(scope="module")
def server(engine, files) -> Iterator[RunningServer]:
    with remote_server(files, engine) as running:
        yield running


@pytest.fixture(params=DIALECTS)
def backend(request, server) -> Iterator[RemoteBackend]:
    remote = dialect_backend(server, request.param)
    yield remote
    remote.close()


def open_backend(server: RunningServer, dialect: str) -> RemoteBackend:
    return dialect_backend(server, dialect)


def generate(backend, prompt=PROMPT, params=GREEDY):
    samples = {}
    backend.generate([(prompt, params)], lambda k, s: samples.__setitem__(k, s))
    return samples[0]


def set_label(server: RunningServer, label: str) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    body = {"new_version": label}
    reply = httpx.post(server.url + "/update_weight_version", json=body, headers=headers)
    assert reply.status_code == 200, reply.text


# ---- generate, score and versions in every dialect ------------------------------------------


def test_generate_and_score_match_the_engine(backend, engine):
    sample = generate(backend)
    (expected,) = engine.generate([PROMPT], GREEDY)
    assert sample.error is None and sample.token_ids == expected.outputs[0].token_ids
    (score,) = backend.score([(PROMPT, sample.token_ids)])
    want = engine.score(PROMPT, sample.token_ids)
    assert max(abs(a - b) for a, b in zip(score, want, strict=True)) <= 1e-5


def test_only_the_rlserve_dialect_scores_at_another_temperature(backend, engine):
    pair = (PROMPT, [20, 21, 22])
    if backend.dialect == "rlserve":
        (score,) = backend.score([pair], temperature=0.7)
        want = engine.score(PROMPT, [20, 21, 22], temperature=0.7)
        assert max(abs(a - b) for a, b in zip(score, want, strict=True)) <= 1e-5
    else:
        with pytest.raises(BackendUnsupported, match="remote backend cannot score at") as info:
            backend.score([pair], temperature=0.7)
        assert info.value.backend == "remote" and backend.dialect in str(info.value)
    (at_zero,) = backend.score([pair], temperature=0)  # T = 0 scores at T = 1, as generate
    assert at_zero == pytest.approx(engine.score(PROMPT, [20, 21, 22]), abs=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        backend.score([pair], temperature=1e-7)


def test_policy_version_is_read_from_each_dialects_route(server):
    rlserve, vllm, sglang = (open_backend(server, d) for d in DIALECTS)
    try:
        health = httpx.get(server.url + "/health").json()
        assert rlserve.policy_version == health["policy_version"]
        set_label(server, "7")
        assert sglang.policy_version == 7  # /get_weight_version, read at call time
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        weight_info = httpx.get(server.url + "/weight_info", headers=admin)
        has_weight_info = weight_info.status_code != 404  # vLLM's route, served by rlserve
        assert vllm.policy_version == (7 if has_weight_info else UNKNOWN_VERSION)
        set_label(server, "step-a")  # a label that is not a number: unknown
        assert sglang.policy_version == UNKNOWN_VERSION
    finally:
        for backend in (rlserve, vllm, sglang):
            backend.close()


def test_logits_are_unsupported(backend):
    with pytest.raises(BackendUnsupported, match="cannot return logits: OpenAI-compatible"):
        backend.logits([(PROMPT, [20])])


# ---- the weight and adapter routes of each dialect -------------------------------------------


def test_sglang_updates_weights_from_disk_with_its_label(server, files):
    backend = open_backend(server, "sglang")
    norm = dict(read_safetensors(BUNDLED_MODEL / "model.safetensors"))[NORM]
    before = generate(backend)
    save_file({NORM: (norm * 3).contiguous()}, str(files / "scaled.safetensors"))
    save_file({NORM: norm.contiguous()}, str(files / "restore.safetensors"))
    try:
        assert backend.update_weights(str(files / "scaled.safetensors"), version=41) == 41
        assert backend.policy_version == 41  # `weight_version` label set by the update
        assert httpx.get(server.url + "/health").json()["policy_version"] > 0
        scaled = generate(backend)
        assert scaled.logprobs != before.logprobs
        with pytest.raises(BackendUnsupported, match="state dict in the sglang dialect"):
            backend.update_weights({NORM: norm})
        with pytest.raises(APIStatusError, match="model_path"):
            backend.update_weights(str(files / "no_such.safetensors"))
    finally:
        backend.update_weights(str(files / "restore.safetensors"), version=42)
        backend.close()
    again = generate(open_backend(server, "rlserve"))
    assert again.token_ids == before.token_ids and again.logprobs == before.logprobs


def test_vllm_weight_updates_are_unsupported(server, files):
    backend = open_backend(server, "vllm")
    try:
        for weights in ({NORM: torch.zeros(4)}, str(files / "restore.safetensors")):
            with pytest.raises(BackendUnsupported, match="NCCL") as info:
                backend.update_weights(weights)
            assert info.value.backend == "remote"
    finally:
        backend.close()


def test_vllm_loads_lora_adapters_and_runs_on_them(server, files, adapter_source):
    """`adapter_source`: tests/backends/conftest.py's random-weight PEFT adapter."""
    folder = shutil.copytree(adapter_source, files / "adapter-vllm")
    backend = open_backend(server, "vllm")
    try:
        before = generate(backend)
        backend.load_adapter("tuned-vllm", str(folder))
        ids = [card["id"] for card in httpx.get(server.url + "/v1/models").json()["data"]]
        assert "tuned-vllm" in ids and backend.model == "tuned-vllm"
        after = generate(backend)
        assert after.logprobs != before.logprobs
        with pytest.raises(APIStatusError, match="already been loaded"):  # vLLM's message
            backend.load_adapter("tuned-vllm", str(files / "adapter-vllm"))
    finally:
        backend.close()
        httpx.post(
            server.url + "/v1/unload_lora_adapter",
            json={"lora_name": "tuned-vllm"},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )


def test_sglang_adapter_and_version_requests_on_a_recording_server():
    """rlserve serves no SGLang /load_lora_adapter: the request is checked as sent."""

    def answer(request, n):
        if request.path == "/get_weight_version":
            return 404, {"detail": "Not Found"}, {}
        return 200, {"success": True, "message": "Success"}, {}

    fake = FakeHTTPServer(answer)
    client = Client(fake.url, max_retries=0, tokenizer=str(BUNDLED_MODEL), admin_key="k")
    backend = RemoteBackend(client, dialect="sglang")
    try:
        backend.load_adapter("tuned", "/adapters/tuned")
        assert backend.policy_version == UNKNOWN_VERSION  # no route: unknown, not an error
    finally:
        client.close()
        fake.close()
    load, version = fake.requests
    assert (load.method, load.path) == ("POST", "/load_lora_adapter")
    assert load.body == {"lora_name": "tuned", "lora_path": "/adapters/tuned"}
    assert load.headers["Authorization"] == "Bearer k"
    assert (version.method, version.path) == ("GET", "/get_weight_version")
    assert backend.model == "tuned"


# ---- construction, close, bad input --------------------------------------------------------


def test_from_config_builds_its_own_client_and_close_closes_it(server):
    backend = create_backend("remote", base_url=server.url, admin_key=ADMIN_KEY, dialect="sglang")
    assert isinstance(backend, RemoteBackend) and backend.dialect == "sglang"
    assert backend.name == "remote" and backend.client.admin_key == ADMIN_KEY
    assert backend.tokenizer.encode("1+1=") == server.engine.tokenizer.encode("1+1=")
    assert generate(backend).error is None
    backend.close()
    backend.close()  # idempotent
    with pytest.raises(RuntimeError):
        backend.client.models()  # the client this backend created is closed
    with Client(server.url, tokenizer=server.engine.tokenizer, max_retries=0) as client:
        borrowed = RemoteBackend(client)
        borrowed.close()  # a client passed in stays the caller's
        assert client.models()["data"]


def test_bad_input_names_the_field(server):
    client = Client(server.url, tokenizer=server.engine.tokenizer, max_retries=0)
    with pytest.raises(ValueError, match="dialect"):
        RemoteBackend(client, dialect="triton")
    backend = RemoteBackend(client)
    with pytest.raises(ValueError, match="version"):
        backend.update_weights("x.safetensors", version="3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weights"):
        backend.update_weights(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name"):
        backend.load_adapter("", "adapter")
    with pytest.raises(ValueError, match="path"):
        backend.load_adapter("tuned", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pairs"):
        backend.score([(PROMPT,)])
    with pytest.raises(ValueError, match="base_url"):
        create_backend("remote")
    client.close()


def test_reply_parsers_refuse_what_they_cannot_read():
    assert [int_version(v) for v in (3, "12", "-1", "default", None, True, 2.0)] == [
        3,
        12,
        -1,
        UNKNOWN_VERSION,
        UNKNOWN_VERSION,
        UNKNOWN_VERSION,
        UNKNOWN_VERSION,
    ]
    entries = [None, {"7": {"logprob": -0.5}}, {"8": {"logprob": -1.5}}]
    assert prompt_logprob_values(entries, [6, 7, 8], 1) == [-0.5, -1.5]
    with pytest.raises(RuntimeError, match="prompt_logprobs"):
        prompt_logprob_values(None, [6, 7, 8], 1)
    with pytest.raises(RuntimeError, match="position 2"):
        prompt_logprob_values([None, entries[1], {"9": {"logprob": -1.0}}], [6, 7, 8], 1)
    reply = {"meta_info": {"input_token_logprobs": [[-0.25, 7, None], [-2.0, 8, None]]}}
    assert sglang_input_logprobs(reply, [7, 8]) == [-0.25, -2.0]
    with pytest.raises(RuntimeError, match="do not match"):
        sglang_input_logprobs(reply, [7, 9])
    with pytest.raises(RuntimeError, match="input_token_logprobs"):
        sglang_input_logprobs({"meta_info": {}}, [7, 8])
