"""Admin routes over HTTP: weight updates (streamed and from --weights-dir), adapters,
pause/resume/abort, the admin key, size limits, and freezing clients during a sync."""

from __future__ import annotations

import os
import threading
import time
import zipfile
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

from rlserve import Engine, SamplingParams
from rlserve.client import APIStatusError, Client, WeightSyncController
from rlserve.server import ServerConfig
from tests.support.checkpoints import build_checkpoint, load_hf
from tests.support.numeric import max_abs_diff
from tests.support.servers import RunningServer, wait_until

ADMIN = "admin-secret"
PROMPTS = [[11, 42, 7, 99, 5], [3, 8, 250, 17]]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory, checkpoints: dict) -> dict[str, Path]:
    """weights/ holds checkpoint B, an adapter and a link out; checkpoint A lives outside."""
    root = tmp_path_factory.mktemp("admin")
    weights = root / "weights"
    weights.mkdir()
    b = build_checkpoint(weights / "B", "qwen3", seed=1)
    os.symlink(checkpoints["qwen3"], weights / "link-out")
    torch.manual_seed(0)
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=32, init_lora_weights=False, target_modules=["q_proj"])
    get_peft_model(load_hf(b), config).save_pretrained(weights / "lora")
    return {"A": checkpoints["qwen3"], "B": b, "weights": weights, "root": root}


@pytest.fixture(scope="module")
def server(make_engine, dirs: dict[str, Path]):
    engine = make_engine(dirs["A"], num_blocks=256, block_size=8)
    config = ServerConfig(
        max_tokens=32,
        flush_interval_ms=1.0,
        admin_key=ADMIN,
        weights_dir=str(dirs["weights"]),
        max_upload_bytes=2**20,
        max_update_bytes=8 * 2**20,
    )
    srv = RunningServer(engine, config)
    yield srv
    srv.close()


@pytest.fixture
def client(server: RunningServer):
    with Client(server.url, admin_key=ADMIN, max_retries=0, timeout=60) as c:
        yield c


def greedy(client: Client, prompt: list[int], model: str | None = None) -> tuple[list, list]:
    out = client.completion(prompt, max_tokens=8, temperature=0, model=model)
    train = out["rlserve_train"]
    return train["response_tokens"], train["response_logprobs"]


def status_of(fn, *args, **kwargs) -> int:
    with pytest.raises(APIStatusError) as info:
        fn(*args, **kwargs)
    return info.value.status_code


def test_streamed_update_matches_fresh_engine(server, client, dirs) -> None:
    before = client.policy_version()
    state = load_file(str(dirs["B"] / "model.safetensors"))
    reply = client.update_weights(state)
    assert reply["policy_version"] == before + 1 == client.policy_version()
    fresh = Engine(dirs["B"], num_blocks=64, block_size=8)
    params = SamplingParams(temperature=0, max_tokens=8, logprobs=0)
    for prompt in PROMPTS:  # one at a time, as the server runs them: same batch shapes
        want = fresh.generate(prompt, params)[0]
        tokens, logprobs = greedy(client, prompt, server.app.state.rlserve.model_name)
        assert tokens == want.outputs[0].token_ids
        assert max_abs_diff(logprobs, want.outputs[0].logprobs) <= 1e-6
    # The same bytes without a Content-Length (chunked) take the other receive path.
    body = (dirs["B"] / "model.safetensors").read_bytes()
    headers = {"Authorization": f"Bearer {ADMIN}", "content-type": "application/octet-stream"}
    chunked = httpx.post(
        server.url + "/update_weights", headers=headers, content=iter([body[:1000], body[1000:]])
    )
    assert chunked.json()["policy_version"] == before + 2
    want = fresh.generate(PROMPTS[0], params)[0].outputs[0].token_ids
    assert greedy(client, PROMPTS[0])[0] == want


def test_path_update_and_refusals(client, dirs) -> None:
    version = client.update_weights_from_path("B", mode="wait")["policy_version"]
    assert client.policy_version() == version
    outside = str(dirs["A"] / "model.safetensors")
    for bad in ["../B", "../../", outside, "link-out", "link-out/model.safetensors", "nope"]:
        assert status_of(client.update_weights_from_path, bad) == 400, bad
    assert status_of(client.load_adapter, str(dirs["A"])) == 400
    assert client.policy_version() == version


def test_no_weights_dir_refuses_paths(make_engine, checkpoints) -> None:
    srv = RunningServer(
        make_engine(checkpoints["qwen3"], num_blocks=32, block_size=8), ServerConfig(max_tokens=8)
    )
    try:
        resp = httpx.post(srv.url + "/update_weights", json={"path": "B"})
        assert resp.status_code == 403 and "--weights-dir" in resp.json()["error"]["message"]
        assert httpx.get(srv.url + "/policy_version").json()["policy_version"] == 0  # open
    finally:
        srv.close()


def test_admin_key(server, client) -> None:
    url = server.url + "/policy_version"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.post(server.url + "/pause", json={"mode": "keep"}).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
    assert server.app.state.rlserve.loop.engine.paused is None
    assert greedy(client, PROMPTS[0])[0]  # inference needs no admin key


def test_size_limits_and_corrupt_body(server, client, dirs) -> None:
    version = client.policy_version()
    headers = {"Authorization": f"Bearer {ADMIN}", "content-type": "application/octet-stream"}
    big = httpx.post(server.url + "/update_weights", content=b"\0" * (9 * 2**20), headers=headers)
    assert big.status_code == 413
    assert big.json()["error"]["code"] == "request_too_large"  # the inference routes' 413
    assert "--max-update-bytes" in big.json()["error"]["message"]
    body = (dirs["B"] / "model.safetensors").read_bytes()
    cut = httpx.post(
        server.url + "/update_weights", content=body[: len(body) // 2], headers=headers
    )
    assert cut.status_code == 400 and "safetensors" in cut.json()["error"]["message"]
    chunked_big = httpx.post(
        server.url + "/update_weights", headers=headers, content=iter([b"\0" * 2**20] * 9)
    )  # no Content-Length
    assert chunked_big.status_code == 413
    chunked_cut = httpx.post(
        server.url + "/update_weights", headers=headers, content=iter([body[: len(body) // 3]])
    )
    assert chunked_cut.status_code == 400
    huge = dirs["root"] / "huge"
    huge.mkdir(exist_ok=True)
    (huge / "adapter_model.safetensors").write_bytes(os.urandom(2**20 + 10))
    assert status_of(client.upload_adapter, huge, "huge") == 413
    too_big = httpx.post(
        server.url + "/upload_adapter",
        content=b"\0" * (2**20 + 1),
        headers={
            "Authorization": f"Bearer {ADMIN}",
            "content-type": "multipart/form-data; boundary=x",
        },
    )
    error = too_big.json()["error"]
    assert error["code"] == "request_too_large" and "--max-upload-bytes" in error["message"]
    assert client.policy_version() == version
    assert greedy(client, PROMPTS[0])[0]


def test_adapters_load_upload_unload(server, client, dirs) -> None:
    assert client.load_adapter("lora", "lora-path")["adapter_name"] == "lora-path"
    client.upload_adapter(dirs["weights"] / "lora", "lora-files")
    archive = dirs["root"] / "lora.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in (dirs["weights"] / "lora").iterdir():
            zf.write(f, f"nested/{f.name}")
    client.upload_adapter(archive, "lora-zip")
    base = greedy(client, PROMPTS[0])
    tuned = greedy(client, PROMPTS[0], "lora-path")
    assert tuned[0] != base[0] or tuned[1] != base[1]
    assert (
        greedy(client, PROMPTS[0], "lora-files") == tuned == greedy(client, PROMPTS[0], "lora-zip")
    )
    evil = dirs["root"] / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../adapter_config.json", "{}")
    assert status_of(client.upload_adapter, evil, "evil") == 400
    for name in ("lora-path", "lora-files", "lora-zip"):
        client.unload_adapter(name)
    assert status_of(greedy, client, PROMPTS[0], "lora-zip") == 404


def test_unloading_an_adapter_in_use_is_a_conflict(server, client) -> None:
    """409 (not 400: nothing is wrong with the request) while a request runs on the
    adapter; once it finished, the unload succeeds and says so."""
    client.load_adapter("lora", "busy")
    client.pause("keep")
    try:
        thread, box = _in_thread(
            client.generate_rl, input_ids=PROMPTS[0], max_tokens=4, model="busy"
        )
        assert wait_until(lambda: server.engine.has_unfinished_requests(), 10)
        with pytest.raises(APIStatusError) as info:
            client.unload_adapter("busy")
        assert info.value.status_code == 409
        assert "in use" in str(info.value)
    finally:
        client.resume()
        thread.join(30)
    assert box["result"]["finish_reason"] == "length"
    unloaded = client.unload_adapter("busy")
    assert unloaded["status"] == "success" and "busy" in unloaded["message"]
    assert unloaded["adapter_name"] == "busy" and "policy_version" in unloaded
    assert wait_until(server.idle, 10)


def _in_thread(fn, *args, **kwargs) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def run() -> None:
        box["result"] = fn(*args, **kwargs)
        box["done_at"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def test_pause_keep_then_resume(server, client) -> None:
    client.pause("keep")
    try:
        thread, box = _in_thread(client.generate_rl, input_ids=PROMPTS[0], max_tokens=4)
        time.sleep(0.3)
        assert not box
    finally:
        client.resume()
    thread.join(30)
    assert box["result"]["finish_reason"] == "length"
    assert wait_until(server.idle, 10)


def test_abort_one_and_all(server, client) -> None:
    client.pause("keep")
    loop = server.app.state.rlserve.loop
    calls = [
        _in_thread(client.generate_rl, input_ids=PROMPTS[0], max_tokens=16, request_id=f"r{i}")
        for i in range(3)
    ]
    assert wait_until(lambda: len(loop._routes) == 3, 10)
    assert client.abort("r0")["aborted"] == 1
    calls[0][0].join(10)
    assert calls[0][1]["result"]["finish_reason"] == "abort"
    assert client.abort()["aborted"] == 2
    client.resume()
    for thread, box in calls:
        thread.join(10)
        assert box["result"]["finish_reason"] == "abort"
    assert wait_until(server.idle, 10)


def test_update_in_abort_mode_ends_requests(server, client, dirs) -> None:
    client.pause("keep")
    thread, box = _in_thread(client.generate_rl, input_ids=PROMPTS[1], max_tokens=16)
    assert wait_until(lambda: server.engine.has_unfinished_requests(), 10)
    client.resume()
    client.pause("keep")  # keep it in flight until the update aborts it
    version = client.update_weights_from_path("B", mode="abort")["policy_version"]
    thread.join(10)
    assert box["result"]["finish_reason"] == "abort"
    client.resume()
    assert client.policy_version() == version
    assert wait_until(server.idle, 10)


def test_freeze_waits_for_the_update(server, dirs) -> None:
    controller = WeightSyncController()
    state = load_file(str(dirs["B"] / "model.safetensors"))

    def slow_tensors():
        time.sleep(0.5)  # the sync is in progress (begun) while this runs
        yield from state.items()

    a = Client(server.url, admin_key=ADMIN, weight_sync=controller, timeout=60)
    b = Client(server.url, weight_sync=controller, freeze_for_weight_sync=True, timeout=60)
    with a, b:
        updater, update_box = _in_thread(a.update_weights, slow_tensors())
        assert wait_until(controller.is_syncing, 5)
        caller, call_box = _in_thread(b.generate_rl, input_ids=PROMPTS[0], max_tokens=4)
        updater.join(30)
        caller.join(30)
    new = update_box["result"]["policy_version"]
    assert controller.version() == new
    assert call_box["done_at"] >= update_box["done_at"]
    result = call_box["result"]
    assert result["policy_version"] == new
    assert set(result["weight_versions"]) == {new}


def _paused_state(server: RunningServer) -> str | None:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    return httpx.get(server.url + "/policy_version", headers=headers).json()["paused"]


def test_bad_update_in_abort_mode_aborts_nothing(server, client, dirs) -> None:
    """The update is read and checked before anything is aborted: on error a request in
    flight goes on and finishes normally, and the version stays."""
    state = load_file(str(dirs["B"] / "model.safetensors"))
    name = next(iter(state))
    wrong_shape = {**state, name: torch.zeros(3, dtype=state[name].dtype)}
    (dirs["weights"] / "bad").mkdir(exist_ok=True)
    save_file(wrong_shape, str(dirs["weights"] / "bad" / "model.safetensors"))
    whole = (dirs["B"] / "model.safetensors").read_bytes()
    (dirs["weights"] / "cut.safetensors").write_bytes(whole[: len(whole) // 2])
    version = client.policy_version()
    bad_updates = [
        lambda: client.update_weights_from_path("bad", mode="abort"),
        lambda: client.update_weights_from_path("cut.safetensors", mode="abort"),
        lambda: client.update_weights_from_path("B", version=version, mode="abort"),
        lambda: client.update_weights({"model.nope.weight": torch.zeros(2)}, mode="abort"),
        lambda: client.update_weights({name: wrong_shape[name]}, mode="abort"),
        lambda: client.update_weights_from_path("bad", mode="wait"),
    ]
    client.pause("keep")  # hold the request in flight while the updates are refused
    try:
        thread, box = _in_thread(client.generate_rl, input_ids=PROMPTS[1], max_tokens=8)
        assert wait_until(server.engine.has_unfinished_requests, 10)
        for update in bad_updates:
            with pytest.raises(APIStatusError) as info:
                update()
            assert info.value.status_code == 400
            assert str(dirs["root"]) not in str(info.value)  # no server paths
        assert server.engine.has_unfinished_requests() and not box
        assert _paused_state(server) == "keep"
    finally:
        client.resume()
    thread.join(30)
    assert box["result"]["finish_reason"] == "length"
    assert client.policy_version() == version


def test_updates_keep_an_operators_pause(server, client) -> None:
    client.pause("wait")
    try:
        client.update_weights_from_path("B", mode="wait")
        assert _paused_state(server) == "wait"
        client.update_weights_from_path("B", mode="abort")
        assert _paused_state(server) == "wait"
    finally:
        client.resume()
    assert _paused_state(server) is None
    assert greedy(client, PROMPTS[0])[0]


def test_health_and_metrics_show_the_new_version_at_once(server, client) -> None:
    """Read-your-writes: no waiting for the engine loop to republish its stats."""
    for _ in range(3):
        new = client.update_weights_from_path("B")["policy_version"]
        assert httpx.get(server.url + "/health").json()["policy_version"] == new
        as_json = {"Accept": "application/json"}
        metrics = httpx.get(server.url + "/metrics", headers=as_json).json()
        assert metrics["current_policy_version"] == new
        text = httpx.get(server.url + "/metrics?format=prometheus").text
        assert f"rlserve_policy_version {float(new)}" in text
