"""Seed 002 (the MLX RL inference server's client) against a real rlserve server.

The server is started with the seed's command line (`--max-batch 5 --flush-interval-ms 10
--max-tokens 128`, the bundled model in place of the MLX one, and `--weights-dir` for
the adapters), and the seed's example client runs with only its import changed
(`from inference_client import InferenceClient` -> `from rlserve.client import ...`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from rlserve.client import APIStatusError, InferenceClient
from rlserve.config import BUNDLED_MODEL
from rlserve.server.cli import build_parser, config_from_args, load_engine
from tests.support.servers import TEST_MODEL, RunningServer

SEED_REPLY_KEYS = {
    "request_id",
    "policy_version",
    "step_id",
    "prompt_ids",
    "completion_ids",
    "text",
    "logprobs",
    "finish_reason",
    "metadata",
}


def save_adapter(out: Path, seed: int) -> Path:
    from peft import LoraConfig, get_peft_model

    from tests.support.checkpoints import load_hf

    torch.manual_seed(seed)
    base = load_hf(Path(TEST_MODEL or BUNDLED_MODEL))
    config = LoraConfig(r=4, lora_alpha=32, init_lora_weights=False, target_modules=["q_proj"])
    get_peft_model(base, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("seed002-weights")
    save_adapter(root / "adapter", seed=1)
    return root


@pytest.fixture(scope="module")
def server(weights: Path):
    """Its own server: the tests change its policy (adapter loads)."""
    argv = ["--max-batch", "5", "--flush-interval-ms", "10", "--max-tokens", "128"]
    argv += ["--weights-dir", str(weights)] + (["--model", TEST_MODEL] if TEST_MODEL else [])
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    running = RunningServer(load_engine(config, args), config)
    yield running
    running.close()


def test_example_client_usage(server: RunningServer, weights: Path) -> None:
    """The seed's example, its prints turned into checks."""
    seen: dict = {}

    async def main():
        async with InferenceClient(server.url) as client:
            # Generate text
            result = await client.generate(
                prompt="What is reinforcement learning?",
                temperature=0.7,
                max_tokens=100,
                policy_version=1,
                step_id=100,
            )
            seen["result"] = result
            # Load new adapter
            adapter_result = await client.load_adapter(str(weights / "adapter"))
            seen["adapter"] = adapter_result
            seen["after"] = await client.generate(prompt="What is 7 + 8?", max_tokens=4)

    before = server.app.state.rlserve.policy_version
    asyncio.run(main())
    result, adapter = seen["result"], seen["adapter"]
    assert SEED_REPLY_KEYS <= set(result)
    assert result["policy_version"] == 1 and result["step_id"] == 100
    assert result["request_id"]
    assert 0 < len(result["completion_ids"]) == len(result["logprobs"]) <= 100
    assert all(lp <= 0.0 for lp in result["logprobs"])
    assert result["finish_reason"] in ("stop", "length")
    tokenizer = server.app.state.rlserve.tokenizer
    assert result["prompt_ids"] == tokenizer.encode("What is reinforcement learning?")
    assert result["text"] == tokenizer.decode(result["completion_ids"], skip_special_tokens=True)
    assert {"batch_size", "latency_ms", "current_policy_version"} <= set(result["metadata"])
    assert adapter["status"] == "success" and "adapter" in adapter["message"]
    assert adapter["policy_version"] == before + 1
    after = seen["after"]
    assert after["policy_version"] == after["metadata"]["current_policy_version"] == before + 1


def test_seed_request_fields_round_trip(server: RunningServer) -> None:
    """The seed's `/generate` request, every field, and its echoed metadata."""

    async def call() -> dict:
        async with InferenceClient(server.url) as client:
            return await client.generate(
                prompt="What is machine learning?",
                temperature=0.7,
                top_p=1.0,
                max_tokens=128,
                logprobs=1,
                policy_version=42,
                step_id=1000,
                request_id="unique-request-id",
            )

    reply = asyncio.run(call())
    assert reply["request_id"] == "unique-request-id"
    assert (reply["policy_version"], reply["step_id"]) == (42, 1000)
    assert len(reply["top_logprobs"]) == len(reply["completion_ids"])
    assert reply["rlserve_train"]["response_tokens"] == reply["completion_ids"]


def test_batch_of_prompts_health_and_metrics(server: RunningServer) -> None:
    async def calls() -> tuple[dict, dict, dict]:
        async with InferenceClient(server.url) as client:
            prompts = [f"What is {i} + {i}?" for i in range(6)]
            batch = await client.generate(prompt=prompts, max_tokens=4, temperature=0)
            return batch, await client.health(), await client.metrics()

    batch, health, metrics = asyncio.run(calls())
    assert len(batch["results"]) == 6
    assert all(item["completion_ids"] for item in batch["results"])
    assert 1 <= batch["metadata"]["batch_size"] <= 5  # --max-batch 5
    assert health["status"] == "healthy" and health["model_loaded"] is True
    assert metrics["max_batch_size"] == 5 and metrics["flush_interval_ms"] == 10
    assert {"current_policy_version", "queue_depth"} <= set(metrics)


def test_upload_adapter_advances_the_policy(server: RunningServer, weights: Path) -> None:
    local = save_adapter(weights.parent / "local-adapter", seed=2)

    async def upload() -> dict:
        async with InferenceClient(server.url) as client:
            return await client.upload_adapter(local)

    before = server.app.state.rlserve.policy_version
    reply = asyncio.run(upload())
    assert reply["status"] == "success" and reply["policy_version"] == before + 1


def test_bad_input_is_refused_and_the_client_keeps_working(server: RunningServer) -> None:
    async def calls() -> dict:
        async with InferenceClient(server.url, max_retries=0) as client:
            with pytest.raises(ValueError, match="prompt"):
                await client.generate(prompt=5)
            with pytest.raises(ValueError, match="exactly one of prompt or input_ids"):
                await client.generate(prompt="hi", input_ids=[1, 2])
            with pytest.raises(ValueError, match="input_ids"):
                await client.generate(input_ids=[[1, "x"]])
            with pytest.raises(ValueError, match="policy_version"):
                await client.generate(prompt="hi", policy_version="7")
            with pytest.raises(ValueError, match="max_tokens"):
                await client.generate(prompt="hi", max_tokens=0)
            with pytest.raises(ValueError, match="adapter_path"):
                await client.load_adapter("")
            with pytest.raises(APIStatusError) as too_long:
                await client.generate(prompt="hi", max_tokens=1000)  # over --max-tokens 128
            assert too_long.value.status_code == 400
            with pytest.raises(APIStatusError) as outside:
                await client.load_adapter("/etc")  # not under --weights-dir
            assert outside.value.status_code == 400 and "outside" in outside.value.message
            return await client.generate(input_ids=[1, 2, 3], max_tokens=2)

    reply = asyncio.run(calls())
    assert reply["prompt_ids"] == [1, 2, 3] and len(reply["completion_ids"]) <= 2


def test_constructor_checks_the_url() -> None:
    with pytest.raises(ValueError, match="base_url"):
        InferenceClient("")
