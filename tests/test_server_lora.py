"""`rlserve serve --adapter-path`: the adapter is served by default and as its own model id."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch

from rlserve.config import BUNDLED_MODEL
from rlserve.server.cli import build_parser, config_from_args, load_engine
from tests.conftest_server import TEST_MODEL, RunningServer, shared_server, wait_until

PROMPT = "What is 7 + 8?"


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from peft import LoraConfig, get_peft_model

    from tests.checkpoints import load_hf

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
