"""vLLM's weight-update lifecycle on rlserve (vllm/entrypoints/serve/dev/rlhf/api_router.py),
with the bodies TRL's WeightTransferClient (trl/generation/weight_transfer.py) posts:
`POST /pause?mode=keep`, `/start_weight_update` without a body, `/update_weights
{"update_info": ...}`, `/finish_weight_update` without a body, `/resume`, `GET
/get_world_size`; and vLLM's `{"is_checkpoint_format": true}` start and `{"weight_version"}`
finish. The chunks use vLLM's shared-disk `update_info` (`path`); TRL's NCCL `init_info` and
`update_info` must be clear 400s (no NCCL here)."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
import torch
from safetensors.torch import load_file, save_file

from rlserve import SamplingParams
from tests.support.checkpoints import build_checkpoint
from tests.support.servers import RunningServer, admin_server

ADMIN = "vllm-sync-admin"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
PROBE = "model.layers.0.self_attn.q_proj.weight"
PROMPT = [5, 17, 42, 9, 3]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """weights/B (a new policy), weights/chunks/part{1,2} (B's state dict split in two),
    weights/bad/unknown.safetensors (a name the model does not have)."""
    root = tmp_path_factory.mktemp("vllm_sync") / "weights"
    state = load_file(str(build_checkpoint(root / "B", "qwen3", seed=7) / "model.safetensors"))
    names = sorted(state)
    halves = names[: len(names) // 2], names[len(names) // 2 :]
    assert PROBE in halves[0]
    for folder in ("chunks", "bad"):
        (root / folder).mkdir()
    for part, half in enumerate(halves, start=1):
        save_file({n: state[n] for n in half}, str(root / f"chunks/part{part}.safetensors"))
    unknown = {"model.layers.0.mystery.weight": torch.zeros(2)}
    save_file(unknown, str(root / "bad/unknown.safetensors"))
    return root


@pytest.fixture(scope="module")
def server(make_engine, checkpoints, weights: Path):
    yield from admin_server(make_engine, checkpoints["qwen3"], weights, ADMIN)


@pytest.fixture
def http(server: RunningServer):
    """An admin client; each test must close the sessions it opens."""
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as client:
        yield client
        transfer = getattr(server.app.state, "vllm_weight_transfer", None)
        left_open = transfer is not None and transfer.session is not None
        if transfer is not None:
            transfer.session = None
        client.post("/resume", json={})
        assert not left_open, "the test left a weight update session open"


def probe(server: RunningServer) -> torch.Tensor:
    return server.engine.model.hf_weight_targets()[PROBE].detach().clone()


def policy_version(server: RunningServer) -> int:
    return server.app.state.rlserve.policy_version


def chunk(http: httpx.Client, path: str) -> httpx.Response:
    return http.post("/update_weights", json={"update_info": {"path": path}})


def active(http: httpx.Client) -> bool:
    return http.get("/weight_update_active").json()["weight_update_active"]


def greedy(server: RunningServer) -> openai.types.CompletionChoice:
    oai = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    model = oai.models.list().data[0].id
    extra = {"return_token_ids": True, "ignore_eos": True}
    reply = oai.completions.create(
        model=model, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=1, extra_body=extra
    )
    return reply.choices[0]


def test_two_chunks_install_in_one_commit_at_finish(server, http, weights, make_engine) -> None:
    before, version = probe(server), policy_version(server)
    old_logprobs = greedy(server).logprobs.token_logprobs
    assert http.post("/pause", params={"mode": "keep"}).json()["status"] == "paused"  # TRL
    init = http.post("/init_weight_transfer_engine", json={"init_info": {}})
    assert init.json()["message"] == "Weight transfer initialized", init.text
    start = http.post("/start_weight_update")  # TRL: no body
    assert start.json() == {"message": "Weight update started"} and active(http)
    first = chunk(http, str(weights / "chunks/part1.safetensors"))  # absolute, as vLLM's
    assert first.status_code == 200 and first.json()["message"] == "Weights updated", first.text
    staged = first.json()["staged"]
    assert chunk(http, "chunks/part1.safetensors").json()["staged"] == staged  # retry: last wins
    assert torch.equal(probe(server), before) and policy_version(server) == version  # staged only
    assert chunk(http, "chunks/part2.safetensors").status_code == 200
    done = http.post("/finish_weight_update", json={"weight_version": "step-3"})
    assert done.status_code == 200, done.text
    assert done.json()["message"] == "Weight update finished"
    assert done.json()["policy_version"] == version + 1 == policy_version(server)
    assert http.get("/is_paused").json()["is_paused"] is True  # the operator's pause holds
    assert http.post("/resume").json()["status"] == "resumed" and not active(http)  # TRL
    new_state = load_file(str(weights / "B/model.safetensors"))
    targets = server.engine.model.hf_weight_targets()
    assert all(torch.equal(targets[n].cpu(), t) for n, t in new_state.items() if n in targets)
    assert http.get("/weight_info").json()["weight_version"] == "step-3"

    choice = greedy(server)
    assert choice.model_extra["weight_versions"] == [version + 1] * 6
    assert choice.logprobs.token_logprobs != pytest.approx(old_logprobs)
    reference = make_engine(str(weights / "B"), num_blocks=16, block_size=8)
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    expected = reference.generate([PROMPT], params)[0].outputs[0]
    assert choice.model_extra["token_ids"] == expected.token_ids
    assert choice.logprobs.token_logprobs == pytest.approx(expected.logprobs, abs=1e-5)


@pytest.mark.parametrize(
    "init_info",
    [
        {"master_address": "127.0.0.1", "master_port": 29500, "rank_offset": 1, "world_size": 2},
        {"backend": "nccl"},
        {"backend": "ipc"},
        {"backend": "sparse_nccl"},
    ],
)
def test_device_backends_are_refused_saying_what_to_send(http, init_info) -> None:
    reply = http.post("/init_weight_transfer_engine", json={"init_info": init_info})
    assert reply.status_code == 400
    message = reply.json()["error"]["message"]
    assert "NCCL" in message and "update_info" in message and "--weights-dir" in message


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({}, "Missing 'init_info' in request body"),
        ({"init_info": ["disk"]}, "must be a JSON object"),
        ({"init_info": {"backend": "disk", "token": "x"}}, "no field 'token'"),
    ],
)
def test_bad_init_bodies_are_400(http, body, words) -> None:
    reply = http.post("/init_weight_transfer_engine", json=body)
    assert reply.status_code == 400 and words in reply.json()["error"]["message"]


def test_update_before_start_is_409_and_changes_nothing(server, http) -> None:
    before, version = probe(server), policy_version(server)
    reply = chunk(http, "chunks/part1.safetensors")
    assert reply.status_code == 409 and "start_weight_update" in reply.text
    assert http.post("/finish_weight_update").status_code == 409
    assert torch.equal(probe(server), before) and policy_version(server) == version


def test_double_start_is_409_and_an_empty_finish_bumps_nothing(server, http) -> None:
    version = policy_version(server)
    assert http.post("/start_weight_update").status_code == 200  # no body, as vLLM allows
    second = http.post("/start_weight_update", json={})
    assert second.status_code == 409 and "already in progress" in second.text
    done = http.post("/finish_weight_update", json={})
    assert done.status_code == 200 and done.json()["updated"] == 0
    assert policy_version(server) == version


def test_missing_update_info_is_400(http) -> None:
    reply = http.post("/update_weights", json={"update_info": None})
    assert reply.status_code == 400
    assert reply.json()["error"]["message"] == "Missing 'update_info' in request body"


@pytest.mark.parametrize(
    "update_info",
    [
        {  # TRL's, from its model's named_parameters
            "names": [PROBE],
            "dtype_names": ["float32"],
            "shapes": [[128, 64]],
            "packed": True,
            "is_checkpoint_format": True,
        },
        {
            "names": [PROBE],
            "dtype_names": ["float32"],
            "shapes": [[128, 64]],
            "packed": False,
            "ipc_handles_pickled": "gASVAAAAAAAAAAA=",
        },
    ],
)
def test_nccl_shaped_chunk_is_400_and_aborts_the_update(server, http, update_info) -> None:
    before, version = probe(server), policy_version(server)
    http.post("/start_weight_update")
    assert chunk(http, "chunks/part1.safetensors").status_code == 200
    reply = http.post("/update_weights", json={"update_info": update_info})
    assert reply.status_code == 400 and "no NCCL / CUDA-IPC data plane" in reply.text
    assert not active(http) and http.post("/finish_weight_update").status_code == 409
    assert torch.equal(probe(server), before) and policy_version(server) == version


def test_a_bad_tensor_name_aborts_and_leaves_the_weights(server, http) -> None:
    before, version = probe(server), policy_version(server)
    http.post("/start_weight_update", json={"is_checkpoint_format": True})
    assert chunk(http, "chunks/part1.safetensors").status_code == 200
    reply = chunk(http, "bad/unknown.safetensors")
    assert reply.status_code == 400 and "model.layers.0.mystery.weight" in reply.text
    assert "aborted" in reply.text
    finish = http.post("/finish_weight_update", json={"weight_version": "never"})
    assert finish.status_code == 409
    assert torch.equal(probe(server), before) and policy_version(server) == version
    assert http.get("/weight_info").json()["weight_version"] != "never"


@pytest.mark.parametrize(
    ("update_info", "param"),
    [
        ({"path": "../outside"}, "path"),
        ({"path": 7}, "path"),
        ({"path": []}, "path"),
        ({}, "path"),
        ({"path": "chunks/part1.safetensors", "weight_path": "B"}, "weight_path"),
        ({"path": "chunks/part1.safetensors", "version": 3}, "version"),
        ({"path": "chunks/part1.safetensors", "is_checkpoint_format": "maybe"}, None),
        ("chunks/part1.safetensors", "update_info"),
    ],
)
def test_bad_update_info_is_400(server, http, update_info, param) -> None:
    version = policy_version(server)
    http.post("/start_weight_update")
    reply = http.post("/update_weights", json={"update_info": update_info})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == (param or "is_checkpoint_format")
    assert not active(http) and policy_version(server) == version


def test_a_list_of_files_is_one_chunk_and_a_bad_label_keeps_the_session(server, http) -> None:
    version = policy_version(server)
    http.post("/start_weight_update")
    files = ["chunks/part1.safetensors", "chunks/part2.safetensors"]
    staged = http.post("/update_weights", json={"update_info": {"weight_path": files}})
    assert staged.status_code == 200, staged.text
    bad = http.post("/finish_weight_update", json={"weight_version": ""})
    assert bad.status_code == 400 and active(http)  # a refused finish body changes nothing
    done = http.post("/finish_weight_update", json={"weight_version": "step-4"})
    assert done.json()["policy_version"] == version + 1
    assert done.json()["weight_version"] == "step-4"


def test_weight_info_world_size_and_version_label(http) -> None:
    assert http.get("/get_world_size?include_dp=true").json() == {"world_size": 1}
    assert http.get("/get_world_size?include_dp=false").json() == {"world_size": 1}
    assert http.get("/get_world_size?include_dp=maybe").status_code == 400
    relabel = http.post("/update_weight_version", json={"new_version": "v9"})
    assert relabel.json()["success"] is True and relabel.json()["new_version"] == "v9"
    assert http.get("/weight_info").json()["weight_version"] == "v9"
    draft = http.post("/start_draft_weight_update")
    assert draft.status_code == 400 and "draft" in draft.text


def test_rlserve_update_bodies_keep_their_meaning(server, http) -> None:
    version = policy_version(server)
    reply = http.post("/update_weights", json={"path": "B"})
    assert reply.status_code == 200 and "message" not in reply.json()
    assert reply.json()["policy_version"] == version + 1


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/init_weight_transfer_engine", {"init_info": {}}),
        ("POST", "/start_weight_update", {"is_checkpoint_format": True}),
        ("POST", "/update_weights", {"update_info": {"path": "B"}}),
        ("POST", "/finish_weight_update", {"weight_version": "x"}),
        ("GET", "/weight_info", None),
        ("GET", "/weight_update_active", None),
        ("GET", "/get_world_size", None),
    ],
)
def test_routes_need_the_admin_key(server, method, path, body) -> None:
    reply = httpx.request(method, server.url + path, json=body, timeout=30)
    assert reply.status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.request(method, server.url + path, json=body, headers=wrong).status_code == 401


@pytest.mark.parametrize(
    "path",
    ["/init_weight_transfer_engine", "/start_weight_update", "/finish_weight_update"],
)
@pytest.mark.parametrize("raw", [b"[1]", b"not json", b'{"weight_version": 5, "init_info": 5}'])
def test_junk_bodies_are_400_and_open_no_update(http, path, raw) -> None:
    reply = http.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert not active(http)
