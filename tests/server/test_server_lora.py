"""`rlserve serve --adapter-path`: the adapter is served by default and as its own model id;
loading an adapter without a name makes it the policy (seed 002's hot reload)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import httpx
import pytest
import torch

from rlserve.config import BUNDLED_MODEL
from rlserve.server.cli import build_parser, config_from_args, load_engine
from tests.support.servers import TEST_MODEL, RunningServer, shared_server, wait_until

PROMPT = "What is 7 + 8?"


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from peft import LoraConfig, get_peft_model

    from tests.support.checkpoints import load_hf

    torch.manual_seed(0)
    base = load_hf(Path(TEST_MODEL or BUNDLED_MODEL))
    config = LoraConfig(r=4, lora_alpha=32, init_lora_weights=False, target_modules=["q_proj"])
    out = tmp_path_factory.mktemp("adapters") / "calc-lora"
    get_peft_model(base, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def lora_server(adapter: Path, pytestconfig) -> RunningServer:
    def make() -> RunningServer:
        argv = ["--adapter-path", str(adapter), "--max-tokens", "16", "--max-batch", "8"]
        args = build_parser().parse_args(argv + (["--model", TEST_MODEL] if TEST_MODEL else []))
        config = config_from_args(args)
        return RunningServer(load_engine(config, args), config)

    return shared_server("lora", make, pytestconfig)


def _greedy(url: str, model: str | None) -> list[int]:
    body = {"prompt": PROMPT, "max_tokens": 8, "temperature": 0, "model": model}
    resp = httpx.post(url + "/generate", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    return resp.json()["completion_ids"]


def test_adapter_is_listed_and_served_by_default(lora_server: RunningServer) -> None:
    models = httpx.get(lora_server.url + "/v1/models").json()["data"]
    base, lora = models[0]["id"], models[1]["id"]
    assert lora == "calc-lora" and models[1]["parent"] == base
    assert _greedy(lora_server.url, None) == _greedy(lora_server.url, "calc-lora")
    assert _greedy(lora_server.url, base) != _greedy(lora_server.url, "calc-lora")
    assert wait_until(lora_server.idle, 10)


def _save_adapter(out: Path, seed: int) -> Path:
    from peft import LoraConfig, get_peft_model

    from tests.support.checkpoints import load_hf

    torch.manual_seed(seed)
    base = load_hf(Path(TEST_MODEL or BUNDLED_MODEL))
    config = LoraConfig(r=4, lora_alpha=32, init_lora_weights=False, target_modules=["q_proj"])
    get_peft_model(base, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def policy_server(adapter: Path, tmp_path_factory: pytest.TempPathFactory):
    """A server of its own (the test changes its default adapter): the start-up adapter
    `calc-lora`, and two more under --weights-dir."""
    weights = tmp_path_factory.mktemp("policy-weights")
    _save_adapter(weights / "step-1", seed=1)
    _save_adapter(weights / "step-2", seed=2)
    argv = [
        "--adapter-path",
        str(adapter),
        "--weights-dir",
        str(weights),
        "--max-tokens",
        "16",
        "--max-batch",
        "8",
    ] + (["--model", TEST_MODEL] if TEST_MODEL else [])
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    server = RunningServer(load_engine(config, args), config)
    yield server, weights
    server.close()


def _version_everywhere(url: str) -> int:
    """The policy version, checked to agree across /policy_version, /health and /metrics."""
    version = httpx.get(url + "/policy_version").json()["policy_version"]
    assert httpx.get(url + "/health").json()["policy_version"] == version
    assert httpx.get(url + "/metrics?format=json").json()["current_policy_version"] == version
    return version


def test_unnamed_loads_become_the_policy(policy_server) -> None:
    """Seed 002's hot reload: `/load_adapter` with only a path makes that adapter what
    unnamed requests run on, and the policy version advances at once."""
    server, weights = policy_server
    url = server.url
    base_model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
    base, startup = _greedy(url, base_model), _greedy(url, "calc-lora")
    assert _greedy(url, None) == startup
    # A named load adds a model id and leaves the default alone.
    named = httpx.post(
        url + "/load_adapter", json={"adapter_path": "step-1", "adapter_name": "one"}
    )
    assert named.status_code == 200, named.text
    assert _greedy(url, None) == startup
    step1 = _greedy(url, "one")
    version = _version_everywhere(url)
    # Unnamed: replaces the default adapter in place, under its name.
    loaded = httpx.post(url + "/load_adapter", json={"adapter_path": "step-1"})
    assert loaded.status_code == 200, loaded.text
    body = loaded.json()
    assert body["status"] == "success" and "step-1" in body["message"]
    assert body["adapter_name"] == "calc-lora" and body["default"] is True
    assert body["policy_version"] == version + 1 == _version_everywhere(url)
    assert _greedy(url, None) == _greedy(url, "calc-lora") == step1 != startup
    # An upload with only the file (no adapter_name) works the same way.
    archive = weights / "step-2.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in (weights / "step-2").iterdir():
            zf.write(f, f.name)
    with archive.open("rb") as fh:
        uploaded = httpx.post(url + "/upload_adapter", files={"file": ("step-2.zip", fh)})
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["policy_version"] == version + 2 == _version_everywhere(url)
    step2 = _greedy(url, None)
    assert step2 not in (startup, step1)
    # Unloading the default adapter: unnamed requests run on the base weights.
    assert httpx.post(url + "/unload_adapter", json={"adapter_name": "calc-lora"}).is_success
    assert _greedy(url, None) == base
    # With no default, an unnamed load becomes the default under its folder's name.
    fresh = httpx.post(url + "/load_adapter", json={"adapter_path": "step-2"}).json()
    assert fresh["adapter_name"] == "step-2" and fresh["default"] is True
    assert fresh["policy_version"] == version + 3 == _version_everywhere(url)
    assert _greedy(url, None) == _greedy(url, "step-2") == step2
    assert wait_until(server.idle, 10)
