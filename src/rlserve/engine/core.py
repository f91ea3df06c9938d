"""EngineCore: requests in, token deltas out; what the server and rollouts drive.

`add_request` / `step` / `abort` are the streaming core: each `step()` schedules one batch
(continuous batching over a paged KV cache), runs the model once, samples, and returns a
delta per request that progressed. The control plane (weight updates, adapters, pause
modes, staleness) acts between steps. Not thread-safe: drive it from one thread.
"""

from __future__ import annotations

import logging
import random
import uuid
from pathlib import Path

import torch
from transformers import AutoTokenizer

from rlserve.config import EngineConfig
from rlserve.engine.admission import check_fits, check_params
from rlserve.engine.block_manager import BlockManager
from rlserve.engine.call_args import Prompt, tokenize_prompt
from rlserve.engine.loading import eos_token_ids, num_kv_blocks
from rlserve.engine.memory import pause_in_force
from rlserve.engine.model_runner import ModelRunner
from rlserve.engine.output_processor import OutputProcessor
from rlserve.engine.penalties import prepare as prepare_penalties
from rlserve.engine.policy import Policy
from rlserve.engine.prefix_constraint import TokenTexts
from rlserve.engine.request import Request
from rlserve.engine.scheduler import Scheduler
from rlserve.engine.sequence import Sequence
from rlserve.engine.step import COUNTERS, StepRunner
from rlserve.models.loader import WeightSource, load_model, read_config, update_weights
from rlserve.models.lora import LoRAAdapter, load_adapter
from rlserve.models.quant import quantize_model
from rlserve.outputs import RequestOutput
from rlserve.pause_mode import PauseMode
from rlserve.sampling_params import SamplingParams

log = logging.getLogger(__name__)


class EngineCore:
    """Continuous batching over a paged KV cache with prefix caching, and the RL control
    plane. `EngineCore()` loads the bundled model; `EngineCore(path, dtype=..., ...)` any
    local Llama / Qwen2 / Qwen3 checkpoint. Keyword arguments are `EngineConfig` fields."""

    def __init__(self, model: str | Path | None = None, **config: object) -> None:
        self.config = c = EngineConfig(model=None if model is None else str(model), **config)
        self.model_path = str(c.model_path)
        self.device = torch.device(c.device)
        model_config, hf_config = read_config(self.model_path, c.trust_remote_code)
        self.max_model_len = c.max_model_len or model_config.max_position_embeddings
        self.model = load_model(
            self.model_path, c.torch_dtype, self.device, self.max_model_len, c.trust_remote_code
        )
        quantize_model(self.model, c.quantization)
        self.tokenizer = AutoTokenizer.from_pretrained(
            self.model_path, trust_remote_code=c.trust_remote_code
        )
        vocab_size = self.model.config.vocab_size
        self.eos_token_ids = eos_token_ids(self.model_path, self.tokenizer, hf_config, vocab_size)
        num_blocks = num_kv_blocks(c, self.model, self.max_model_len)
        self.block_manager = BlockManager(num_blocks, c.block_size, c.enable_prefix_caching)
        self.runner = ModelRunner(self.model, num_blocks, c.block_size, self.device, c.torch_dtype)
        self.policy = Policy()
        self.scheduler = Scheduler(
            self.block_manager, c.max_num_seqs, c.max_num_batched_tokens, self.policy.cache_key
        )
        self.outputs = OutputProcessor(self.tokenizer, self.eos_token_ids, self.max_model_len)
        # ~0.5 s for a 151k vocabulary: paid here, not by the first prefix_choices request.
        self.token_texts = TokenTexts(self.tokenizer, vocab_size)
        self._requests: dict[str, Request] = {}
        self._aborted: list[Request] = []
        self._rng = random.Random(c.seed)
        self._counters = dict.fromkeys(COUNTERS, 0)
        self.step_runner = StepRunner(
            self.runner,
            self.scheduler,
            self.outputs,
            self.token_texts,
            self.policy,
            self._requests,
            self._counters,
            self._fail_request,
            c.speculative,
        )

    def add_request(
        self,
        prompt: Prompt,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        *,
        lora_name: str | None = None,
        min_policy_version: int | None = None,
        max_staleness: int | None = None,
    ) -> str:
        """Queue a prompt (text or token ids); returns its request id.

        `lora_name` picks a loaded adapter. `min_policy_version` refuses the request if the
        weights are older; `max_staleness` aborts it if the policy version moves on by more
        than that many versions while it runs.
        """
        params = SamplingParams() if params is None else params
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params must be a SamplingParams, got {type(params).__name__}")
        request_id = uuid.uuid4().hex if request_id is None else str(request_id)
        if request_id in self._requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        self.policy.check_adapter(lora_name)
        self.policy.check_staleness_args(min_policy_version, max_staleness)
        vocab_size = self.model.config.vocab_size
        text, token_ids = tokenize_prompt(prompt, self.tokenizer, vocab_size)
        params = prepare_penalties(params, self.tokenizer, vocab_size)
        truncated = params.truncated_prompt(token_ids, self.max_model_len)
        if truncated is not token_ids:
            text, token_ids = None, truncated
        check_fits(token_ids, params, self.max_model_len, self.block_manager)
        check_params(
            params, vocab_size, self.eos_token_ids, self.token_texts, self.config.max_num_seqs
        )
        request = Request(
            request_id, text, token_ids, params, lora_name, self.policy.version, max_staleness
        )
        seed = params.seed if params.seed is not None else self._rng.getrandbits(63)
        seq = request.new_sequence(0, seed)
        seq.num_forks = params.n - 1
        request.seqs.append(seq)
        self._requests[request_id] = request
        self.scheduler.add(seq)
        self._counters["prompt_tokens_total"] += len(token_ids)
        return request_id

    def step(self) -> list[RequestOutput]:
        """Run one batch; return a delta for every request that progressed or finished.

        A request whose own processing fails here is aborted alone: its last delta has
        finish_reason "abort" and `error` set; the rest of the batch goes on."""
        progressed: list[Sequence] = []
        paused = pause_in_force(self)
        if paused in (None, PauseMode.WAIT):  # "wait" drains: running requests go on
            batch = self.scheduler.schedule(admit=paused is None)
            if batch:
                progressed = self.step_runner.run(batch)
        # Aborted before this step, or failed in it; then those that progressed.
        touched = {r.request_id: r for r in self._aborted}
        self._aborted = []
        for seq in progressed:
            touched.setdefault(seq.request_id, self._requests[seq.request_id])
        return [self._delta(r) for r in touched.values()]

    def abort(self, request_id: str, reason: str | None = None) -> bool:
        """Stop a request now and free its KV blocks; the next step() reports it
        (finish_reason "abort", stop_reason `reason`)."""
        request = self._requests.get(request_id)
        if request is None or request.finished:
            return False
        for index in range(len(request.seqs), request.params.n):  # forks never made
            request.seqs.append(request.new_sequence(index, seed=0))
        for seq in request.seqs:
            if not seq.is_finished:
                self.scheduler.finish(seq)
                seq.finish_reason, seq.stop_reason = "abort", reason
        self._aborted.append(request)
        return True

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests)

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    def stats(self) -> dict[str, int]:
        """Counters: scheduling, KV-cache use and prefix-cache effectiveness."""
        bm = self.block_manager
        return {
            **self._counters,
            "num_running": len(self.scheduler.running),
            "num_waiting": len(self.scheduler.waiting),
            "num_waiting_sequences": self.scheduler.num_waiting_sequences,
            "num_requests": len(self._requests),
            "kv_blocks_used": bm.num_used_blocks,
            "kv_blocks_total": bm.num_blocks,
            "prefix_cache_hit_tokens": bm.num_hit_tokens,
            "preemptions": self.scheduler.num_preemptions,
            "policy_version": self.policy.version,
            "num_adapters": len(self.policy.adapters),
        }

    def reset_prefix_cache(self) -> None:
        self.block_manager.reset_prefix_cache()
        if self.step_runner.speculator is not None:
            self.step_runner.speculator.reset()

    @property
    def policy_version(self) -> int:
        return self.policy.version

    @property
    def adapters(self) -> dict[str, LoRAAdapter]:
        return self.policy.adapters

    @property
    def paused(self) -> PauseMode | None:
        """None while generating, else the pause mode in force (it equals its string);
        "keep" while memory is released (engine/memory.py)."""
        return pause_in_force(self)

    def check_version(self, version: int | None) -> int:
        """The version an update to `version` would set: see `Policy.check_version`."""
        return self.policy.check_version(version)

    def update_weights(
        self, weights: WeightSource, version: int | None = None, recompute_kv: bool = False
    ) -> int:
        """Replace base weights in place; returns the new policy version.

        `weights`: a state dict, an iterable of (Hugging Face name, tensor) pairs, or a
        safetensors file or folder. Every name, shape and dtype is checked before anything
        is written: on error nothing changes. Running requests continue on the new weights
        ("keep"); with `recompute_kv` their KV is recomputed under them first. Use
        `pause("wait")` or `pause("abort")` beforehand for the other update modes.
        """
        new_version = self.policy.check_version(version)
        update_weights(self.model, weights)
        self.policy.base_version = new_version
        self._set_version(new_version, recompute_kv)
        return new_version

    def load_lora(
        self, name: str, path: str | Path, recompute_kv: bool = False, new_policy: bool = False
    ) -> int:
        """Load (or reload) a PEFT adapter under `name`; returns its version. A reload bumps
        the policy version and its cached prefixes are no longer reused; `new_policy` bumps
        it on a first load too (the adapter becomes the policy being trained)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"adapter name must be a non-empty string, got {name!r}")
        adapter = load_adapter(name, path, self.model)
        if self.policy.add_adapter(adapter, new_policy):
            self._set_version(adapter.version, recompute_kv)
        return adapter.version

    def unload_lora(self, name: str) -> None:
        """Forget adapter `name`; AdapterInUse while requests still use it."""
        users = [r.request_id for r in self._requests.values() if r.lora_name == name]
        self.policy.remove_adapter(name, users)

    def pause(self, mode: PauseMode | str = PauseMode.KEEP) -> None:
        """Stop generating, for a weight update. "keep": freeze running requests with their
        KV; "wait": admit nothing new but let running requests finish (keep calling step()
        until `num_running` is 0); "abort": abort every request, partial outputs returned."""
        if self.policy.pause(mode) == PauseMode.ABORT:
            for request_id in list(self._requests):
                self.abort(request_id, reason="aborted for a weight update")

    def resume(self, recompute_kv: bool = False) -> None:
        """Generate again; with `recompute_kv`, running requests first recompute their KV."""
        if recompute_kv:
            self.scheduler.recompute_running()
        self.policy.paused = None

    def _set_version(self, version: int, recompute_kv: bool) -> None:
        self.policy.version = version
        if recompute_kv:
            self.scheduler.recompute_running()
        else:  # their KV mixes old and new weights from here on: never share it
            for seq in self.scheduler.running:
                seq.cacheable = False
        for request in list(self._requests.values()):
            reason = self.policy.stale_reason(request.start_version, request.max_staleness)
            if reason is not None:
                self.abort(request.request_id, reason=reason)

    def _delta(self, request: Request) -> RequestOutput:
        out = self.outputs.request_delta(request)
        if out.finished:
            del self._requests[request.request_id]
            self._counters["requests_finished"] += 1
        return out

    def _fail_request(self, seq: Sequence, error: Exception) -> None:
        """Abort the request of `seq` alone; its next delta carries the error."""
        request = self._requests.get(seq.request_id)
        if request is None or request.error is not None:
            return
        message = f"{type(error).__name__}: {error}"
        log.warning(
            "request %s failed inside the engine step and is aborted alone: %s",
            seq.request_id,
            message,
        )
        log.debug("the failure of request %s", seq.request_id, exc_info=error)
        if self.abort(seq.request_id, reason=message):
            request.error = message
        else:  # every sample had finished already: its outputs are whole, report them as is
            self._aborted.append(request)
