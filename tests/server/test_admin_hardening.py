"""Admin routes under hostile input: who may call them (admin key, API key, loopback), and
malformed adapters, names, paths and bodies getting a 400 in the OpenAI error shape."""

from __future__ import annotations

import asyncio
import json
import threading
import zipfile
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import save_file

from rlserve.server import ServerConfig, create_app
from rlserve.server.cli import main as serve_main
from tests.support.servers import RunningServer, wait_until

JSON_LIMIT = 2**20  # the hardening server's --max-request-bytes
VALID_CONFIG = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}


@pytest.fixture(scope="module")
def engine(make_engine, checkpoints):
    return make_engine(checkpoints["qwen3"], num_blocks=32, block_size=8)


def _status_from(app, client_host: str, path: str = "/policy_version") -> httpx.Response:
    """`GET path` on `app` as a client at `client_host` (the ASGI scope's client address:
    the one way to be a non-loopback client on a machine's loopback-only test network)."""

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(client_host, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path)

    return asyncio.run(get())


def test_api_key_alone_guards_the_admin_routes(engine) -> None:
    srv = RunningServer(engine, ServerConfig(api_key="inference-key", max_tokens=8))
    try:
        url, auth = srv.url, {"Authorization": "Bearer inference-key"}
        assert httpx.get(url + "/policy_version").status_code == 401
        assert httpx.post(url + "/pause", json={"mode": "keep"}).status_code == 401
        assert httpx.get(url + "/policy_version", headers=auth).status_code == 200
        assert engine.paused is None
    finally:
        srv.close()


def test_admin_key_wins_over_the_api_key(engine) -> None:
    config = ServerConfig(api_key="inference-key", admin_key="admin-key")
    app = create_app(engine, config)
    headers = {"Authorization": "Bearer inference-key"}

    async def get() -> int:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return (await client.get("/policy_version", headers=headers)).status_code

    assert asyncio.run(get()) == 401


def test_without_keys_only_loopback_clients_may_administer(engine) -> None:
    app = create_app(engine, ServerConfig())
    for host in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"):
        assert _status_from(app, host).status_code == 200, host
    for host in ("203.0.113.7", "192.168.1.2", "fd00::2", "::ffff:10.0.0.1"):
        resp = _status_from(app, host)
        assert resp.status_code == 403, host
        assert resp.json()["error"]["type"] == "permission_error"
    assert _status_from(app, "203.0.113.7", "/health").status_code != 403  # not admin
    open_app = create_app(engine, ServerConfig(allow_open_admin=True))
    assert _status_from(open_app, "203.0.113.7").status_code == 200


def test_public_host_without_a_key_is_refused(capsys) -> None:
    for host in ("0.0.0.0", "::", "192.0.2.2", "example.org"):
        with pytest.raises(ValueError, match="--admin-key"):
            ServerConfig(host=host)
    for ok in ({"admin_key": "k"}, {"api_key": "k"}, {"allow_open_admin": True}):
        assert ServerConfig(host="0.0.0.0", **ok).host == "0.0.0.0"
    assert ServerConfig(host="localhost").host == "localhost"
    with pytest.raises(SystemExit) as info:
        serve_main(["--host", "0.0.0.0"])
    assert info.value.code == 2 and "--allow-open-admin" in capsys.readouterr().err


def _lora_tensors(engine) -> dict[str, torch.Tensor]:
    """Well-formed LoRA weights for layer 0's q_proj (the configs are what is broken)."""
    c = engine.model.config
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    return {
        f"{prefix}.lora_A.weight": torch.zeros(4, c.hidden_size),
        f"{prefix}.lora_B.weight": torch.zeros(c.num_heads * c.head_dim, 4),
    }


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory, engine) -> Path:
    """Broken adapters under --weights-dir."""
    root = tmp_path_factory.mktemp("hardening-weights")
    configs = {
        "list-config": [1, 2],
        "rank-zero": {"r": 0, "lora_alpha": 8, "target_modules": ["q_proj"]},
        "rank-bool": {"r": True, "target_modules": ["q_proj"]},
        "rank-text": {"r": "4"},
        "alpha-inf": {"r": 4, "lora_alpha": "inf"},
        "bad-tensors": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]},
    }
    for name, config in configs.items():
        (root / name).mkdir()
        (root / name / "adapter_config.json").write_text(json.dumps(config))
        save_file(_lora_tensors(engine), str(root / name / "adapter_model.safetensors"))
    (root / "bad-tensors" / "adapter_model.safetensors").write_bytes(b"not safetensors")
    (root / "nested").mkdir()
    (root / "nested" / "adapter_config.json").write_text("[" * 100_000 + "]" * 100_000)
    return root


@pytest.fixture(scope="module")
def server(engine, weights: Path):
    config = ServerConfig(
        weights_dir=str(weights), max_upload_bytes=2**20, max_request_bytes=JSON_LIMIT
    )
    srv = RunningServer(engine, config)
    yield srv
    srv.close()


def _assert_400(resp: httpx.Response, root: Path, what: object) -> None:
    assert resp.status_code == 400, (what, resp.status_code, resp.text)
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, what
    assert error["type"] == "invalid_request_error", what
    assert str(root) not in error["message"] and "/tmp/" not in error["message"], what


def test_malformed_adapters_and_paths_are_400s(server, weights: Path) -> None:
    url = server.url
    bad_loads = [
        {"adapter_path": name}
        for name in (
            "list-config",
            "rank-zero",
            "rank-bool",
            "rank-text",
            "alpha-inf",
            "bad-tensors",
            "nested",
        )
    ] + [
        {"adapter_path": "rank-zero", "adapter_name": ["x"]},
        {"adapter_path": "bad-tensors", "adapter_name": {"a": 1}},
        {"adapter_path": "bad-tensors", "adapter_name": "bad\x00name"},
        {"adapter_path": "bad-tensors", "adapter_name": "n" * 5000},
        {"adapter_path": "list\x00config"},
        {"adapter_path": "x" * 100_000},
        {"adapter_path": "a/" * 3000},
        {"adapter_path": ("y" * 300) + "/z"},
        {"adapter_path": ["list-config"]},
    ]
    for body in bad_loads:
        _assert_400(httpx.post(url + "/load_adapter", json=body), weights, body)
    for body in (
        {"adapter_name": ["x"]},
        {"adapter_name": {"a": 1}},
        {"adapter_name": 3},
        {"adapter_name": "never-loaded"},
        {},
    ):
        _assert_400(httpx.post(url + "/unload_adapter", json=body), weights, body)
    for body in (
        {"path": "a\x00b"},
        {"path": "p" * 100_000},
        {"path": "bad-tensors"},
        {"path": "list-config", "version": "²"},
        {"path": "list-config", "version": "9" * 5000},
        {"path": "list-config", "recompute_kv": "maybe"},
        {"path": "list-config", "mode": ["abort"]},
    ):
        _assert_400(httpx.post(url + "/update_weights", json=body), weights, body)
    for route, body in (
        ("/resume", {"recompute_kv": "maybe"}),
        ("/pause", {"mode": ["x"]}),
        ("/pause", {"mode": "sometimes"}),
    ):
        _assert_400(httpx.post(url + route, json=body), weights, body)
    nested = ("[" * 100_000 + "]" * 100_000).encode()
    for route in ("/pause", "/load_adapter", "/unload_adapter", "/update_weights"):
        resp = httpx.post(url + route, content=nested, headers={"content-type": "application/json"})
        _assert_400(resp, weights, route)
    header = ("{" + '"a":{' * 50_000 + "}" * 50_001).encode()
    body = len(header).to_bytes(8, "little") + header
    resp = httpx.post(
        url + "/update_weights", content=body, headers={"content-type": "application/octet-stream"}
    )
    _assert_400(resp, weights, "nested safetensors header")
    assert httpx.get(url + "/health").status_code == 200
    assert server.engine.adapters == {} and server.engine.policy_version == 0


def test_malformed_uploads_are_400s(server, weights: Path) -> None:
    url = server.url
    rank_zero = (weights / "rank-zero" / "adapter_config.json").read_bytes()
    uploads = [
        ({}, [("files", ("adapter_config.json", rank_zero))]),
        ({}, [("files", ("adapter_config.json", b"[1, 2]"))]),
        ({}, [("files", ("adapter_config.json", b"{" * 50_000))]),
        ({}, [("files", ("bad\x00name.json", b"{}"))]),
        ({}, [("files", ("f" * 300, b"{}"))]),
        ({}, [("files", ("adapter.zip", b"PK\x03\x04 not really a zip"))]),
    ]
    for data, files in uploads:
        resp = httpx.post(url + "/upload_adapter", data=data, files=files)
        _assert_400(resp, weights, files[0][1][0][:40])
    boundary = "b0undary"
    raw = (
        (f'--{boundary}\r\nContent-Disposition: form-data; name="adapter_name"\r\n\r\n').encode()
        + b"\xff\xfe\xfd"
        + f"\r\n--{boundary}--\r\n".encode()
    )
    resp = httpx.post(
        url + "/upload_adapter",
        content=raw,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    _assert_400(resp, weights, "non-UTF-8 field")
    assert wait_until(lambda: httpx.get(url + "/health").status_code == 200, 5)
    assert server.engine.adapters == {}


def test_admin_json_bodies_are_strict_and_limited(server) -> None:
    """The admin routes parse JSON as the inference routes do: no NaN/Infinity, no lone
    surrogates, and a 413 past --max-request-bytes."""
    url, json_type = server.url, {"content-type": "application/json"}
    for route, raw in (
        ("/resume", b'{"ignored": NaN}'),
        ("/resume", b'{"ignored": -Infinity}'),
        ("/abort", b'{"request_id": "\\ud800"}'),
    ):
        resp = httpx.post(url + route, content=raw, headers=json_type)
        assert resp.status_code == 400 and "malformed JSON" in resp.text, (route, raw)
    big = b'{"x": "' + b"y" * JSON_LIMIT + b'"}'
    for route in ("/pause", "/resume", "/abort", "/load_adapter", "/unload_adapter"):
        resp = httpx.post(url + route, content=big, headers=json_type)
        assert resp.status_code == 413, route
        assert resp.json()["error"]["code"] == "request_too_large", route
    resp = httpx.post(url + "/update_weights", content=big, headers=json_type)
    assert resp.status_code == 413
    assert server.engine.paused is None and server.engine.policy_version == 0


def _valid_adapter(folder: Path, engine) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(VALID_CONFIG))
    save_file(_lora_tensors(engine), str(folder / "adapter_model.safetensors"))
    return folder


def _unload_all(url: str, engine) -> None:
    for name in list(engine.adapters):
        assert httpx.post(url + "/unload_adapter", json={"adapter_name": name}).is_success


def test_unusable_folder_names_fall_back_alike(server, weights: Path, tmp_path: Path) -> None:
    """An unnamed adapter whose folder (or zip) is named like the base model is installed
    as "adapter", by a load and an upload alike; with a default adapter the folder name
    is not even needed."""
    url, state = server.url, server.app.state.rlserve
    _valid_adapter(weights / state.model_name, server.engine)
    archive = tmp_path / f"{state.model_name}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            zf.write(weights / state.model_name / name, name)
    try:
        first = httpx.post(url + "/load_adapter", json={"adapter_path": state.model_name})
        assert first.status_code == 200, first.text
        assert first.json()["adapter_name"] == "adapter" and first.json()["default"] is True
        again = httpx.post(url + "/load_adapter", json={"adapter_path": state.model_name})
        assert again.status_code == 200, again.text  # replaces the default in place
        assert again.json()["adapter_name"] == "adapter"
        _unload_all(url, server.engine)
        files = {"file": (archive.name, archive.read_bytes())}
        uploaded = httpx.post(url + "/upload_adapter", files=files)
        assert uploaded.status_code == 200, uploaded.text
        assert uploaded.json()["adapter_name"] == "adapter"
    finally:
        _unload_all(url, server.engine)


def test_concurrent_unnamed_loads_install_one_default(server, weights, monkeypatch) -> None:
    """Two unnamed loads with no default adapter: the first becomes the default, the
    second replaces it in place (never two defaults racing). Fault injection: the first
    engine call waits until the second request has started, so the two always overlap."""
    from rlserve.server import admin_adapters

    url, state = server.url, server.app.state.rlserve
    for name in ("race-a", "race-b"):
        _valid_adapter(weights / name, server.engine)
    second_started = asyncio.Event()
    checked = []

    def counting_check(folder: Path, origin: str) -> None:
        checked.append(origin)
        if len(checked) == 2:
            second_started.set()
        real_check(folder, origin)

    async def gated_call(fn, check=None):
        if not second_started.is_set():
            await asyncio.wait_for(second_started.wait(), 30)
        return await real_call(fn, check=check)

    real_check, real_call = admin_adapters.check_adapter_config, state.loop.call
    monkeypatch.setattr(admin_adapters, "check_adapter_config", counting_check)
    monkeypatch.setattr(state.loop, "call", gated_call)
    replies: dict[str, httpx.Response] = {}

    def load(name: str) -> None:
        replies[name] = httpx.post(url + "/load_adapter", json={"adapter_path": name}, timeout=60)

    threads = [threading.Thread(target=load, args=(name,)) for name in ("race-a", "race-b")]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert all(r.status_code == 200 for r in replies.values()), replies
        names = {r.json()["adapter_name"] for r in replies.values()}
        assert len(names) == 1 and set(server.engine.adapters) == names
        assert state.default_adapter in names
    finally:
        monkeypatch.undo()
        _unload_all(url, server.engine)


def test_admin_replies_show_the_published_state(engine) -> None:
    """/policy_version reports what /health does: the state the engine thread published,
    never the engine's attributes read from the event loop. Fault injection: the engine
    (its thread not started here) is paused behind the loop's back."""
    app = create_app(engine, ServerConfig())
    engine.pause("keep")
    try:
        reply = _status_from(app, "127.0.0.1").json()
        health = _status_from(app, "127.0.0.1", "/health").json()
    finally:
        engine.resume()
    assert reply["paused"] is None
    assert reply["policy_version"] == health["policy_version"]


def test_long_model_names_are_cut_in_errors(server) -> None:
    body = {"model": "m" * 10_000, "prompt": "hi", "max_tokens": 1}
    resp = httpx.post(server.url + "/v1/completions", json=body)
    assert resp.status_code == 404
    assert len(resp.json()["error"]["message"]) < 500
