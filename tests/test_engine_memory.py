"""Memory release for colocated RL (`rlserve.engine.memory`): the KV cache is freed and
re-allocated, weights go to host and back on CUDA, and after a resume the engine generates
exactly what it generated before."""

from __future__ import annotations

import pytest
import torch

from rlserve import SamplingParams
from rlserve._checks import ParamError
from rlserve.engine import memory
from rlserve.pause_mode import PauseMode

KV_MEMORY = 64 << 20  # big enough that freeing it is visible in the RSS
GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
PROMPTS = ["12+30=", "What is 7*6?"]


@pytest.fixture(scope="module")
def engine(make_engine):
    return make_engine(kv_cache_memory=KV_MEMORY)


@pytest.fixture(autouse=True)
def resident(engine):
    """Every test starts and ends with everything resident and generation on."""
    yield
    memory.resume(engine)
    engine.resume()


def greedy(engine) -> list[list[int]]:
    return [r.outputs[0].token_ids for r in engine.generate(PROMPTS, GREEDY)]


def finish(engine, request_id: str) -> list[int]:
    """Step until nothing is left; the tokens `request_id` got (its deltas joined)."""
    tokens: list[int] = []
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.request_id == request_id:
                tokens += out.outputs[0].token_ids
    return tokens


def rss_bytes() -> int:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("VmRSS"))
        return int(line.split()[1]) * 1024


def test_release_frees_the_kv_cache_and_resume_generates_the_same_tokens(engine) -> None:
    before = greedy(engine)
    kv_bytes = engine.runner.kv_cache_bytes
    assert engine.block_manager.cached_blocks  # the prompts' blocks are cached
    for _ in range(2):  # twice: re-allocated memory is freed again just as well
        rss = rss_bytes()
        report = memory.release(engine, weights=True)
        dropped = rss - rss_bytes()
        print(f"KV cache {kv_bytes / 2**20:.1f} MiB; RSS dropped {dropped / 2**20:.1f} MiB")
        assert report.kv_cache_bytes == kv_bytes and engine.runner.kv_cache_bytes == 0
        assert report.released == report.changed == ("weights", "kv_cache")
        assert memory.is_released(engine) and engine.paused == PauseMode.KEEP
        assert not engine.block_manager.cached_blocks  # the prefix cache is forgotten
        assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
        assert dropped >= kv_bytes // 2  # the tensors' pages went back to the OS
        resumed = memory.resume(engine)
        assert resumed.changed == ("weights", "kv_cache") and resumed.released == ()
        assert engine.runner.kv_cache_bytes == kv_bytes and engine.paused is None
        assert greedy(engine) == before


def test_a_released_engine_schedules_nothing_until_resumed(engine) -> None:
    before = greedy(engine)
    memory.release(engine, weights=True)
    request_id = engine.add_request(PROMPTS[0], GREEDY)  # queued, as vLLM queues them
    assert engine.step() == [] and engine.step() == []
    assert engine.stats()["num_waiting"] == 1
    memory.resume(engine)
    assert finish(engine, request_id) == before[0]


def test_release_is_refused_while_requests_run(engine) -> None:
    engine.add_request(PROMPTS[0], GREEDY, request_id="busy")
    engine.step()
    with pytest.raises(memory.MemoryBusy, match="running"):
        memory.release(engine, weights=True)
    assert not memory.is_released(engine) and engine.runner.kv_cache_bytes > 0
    with pytest.raises(memory.MemoryBusy, match="queued"):
        memory.check_idle(engine)
    engine.abort("busy")
    engine.step()


def test_recompute_frees_running_requests_kv_and_they_finish_the_same(engine) -> None:
    before = greedy(engine)
    engine.add_request(PROMPTS[0], GREEDY, request_id="frozen")
    tokens = [t for _ in range(3) for out in engine.step() for t in out.outputs[0].token_ids]
    assert tokens  # a few tokens in
    engine.pause("keep")  # as vLLM's /sleep?mode=keep
    memory.release(engine, weights=True, recompute=True)
    assert engine.block_manager.num_used_blocks == 0 and engine.num_running == 0
    memory.resume(engine)
    assert engine.paused == PauseMode.KEEP  # the operator's pause outlives the release
    engine.resume()
    assert tokens + finish(engine, "frozen") == before[0]


def test_partial_resume_weights_first_then_kv_cache(engine) -> None:
    memory.release(engine, weights=True)
    report = memory.resume(engine, ["weights"])
    assert report.changed == ("weights",) and report.released == ("kv_cache",)
    assert memory.pause_in_force(engine) == PauseMode.KEEP and engine.step() == []
    assert memory.resume(engine, ["weights"]).changed == ()  # not released: left as is
    assert memory.resume(engine, ["kv_cache"]).released == ()
    assert memory.pause_in_force(engine) is None


def test_weights_only_release_keeps_the_kv_cache(engine) -> None:
    report = memory.release(engine, weights=True, kv_cache=False)
    assert report.changed == ("weights",) and report.kv_cache_bytes == 0
    assert engine.runner.kv_cache_bytes > 0 and engine.paused == PauseMode.KEEP
    assert report.weight_bytes == 0 and report.weights_device == "cpu"  # CPU: they stay


def test_an_operator_resume_while_released_still_schedules_nothing(engine) -> None:
    memory.release(engine, weights=True)
    engine.resume()  # e.g. /resume or /continue_generation in between
    engine.add_request(PROMPTS[0], GREEDY, request_id="early")
    assert engine.step() == [] and engine.paused == PauseMode.KEEP
    memory.resume(engine)
    while engine.has_unfinished_requests():
        engine.step()


@pytest.mark.parametrize(
    ("tags", "parsed"),
    [
        (None, ("weights", "kv_cache")),
        ([], ("weights", "kv_cache")),  # SGLang: empty means all
        (["kv_cache", "cuda_graph"], ("kv_cache",)),
        (["cuda_graph"], ()),  # nothing rlserve holds
        (["weights"], ("weights",)),
    ],
)
def test_parse_tags(tags, parsed) -> None:
    assert memory.parse_tags(tags) == parsed


@pytest.mark.parametrize("tags", ["weights", ["kv"], [1], {"weights": 1}])
def test_bad_tags_name_the_field(engine, tags) -> None:
    with pytest.raises(ParamError) as info:
        memory.parse_tags(tags)
    assert info.value.field == "tags"
    with pytest.raises(ParamError):
        memory.resume(engine, ["kv"])
    assert not memory.is_released(engine)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="weights move to host on CUDA only")
def test_cuda_release_moves_weights_to_host_and_back(make_engine) -> None:
    engine = make_engine(device="cuda", kv_cache_memory=KV_MEMORY)
    before = greedy(engine)
    torch.cuda.synchronize()
    allocated = torch.cuda.memory_allocated()
    report = memory.release(engine, weights=True)
    freed = allocated - torch.cuda.memory_allocated()
    print(f"CUDA: freed {freed / 2**20:.1f} MiB ({report.as_dict()})")
    assert report.weights_device == "cpu" and report.weight_bytes > 0
    assert freed >= report.kv_cache_bytes + report.weight_bytes // 2
    assert memory.resume(engine).weights_device.startswith("cuda")
    assert greedy(engine) == before
