"""The Engine: requests in, tokens and logprobs out.

`add_request` / `step` / `abort` are the streaming core: each `step()` schedules one
batch (continuous batching over a paged KV cache), runs the model once, samples, and
returns a delta per request that progressed. `generate`, `chat` and `score` are loops
over it. The Engine is not thread-safe: drive it from one thread.
"""

from __future__ import annotations

import itertools
import logging
import random
import uuid
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer, GenerationConfig

from rlserve.config import DEFAULT_KV_CACHE_MEMORY, EngineConfig
from rlserve.engine.admission import check_params, check_token_ids, is_token_ids
from rlserve.engine.block_manager import BlockManager
from rlserve.engine.call_args import Prompt, params_list, prompt_list, score_pairs, score_params
from rlserve.engine.failures import run_isolating
from rlserve.engine.model_runner import ModelRunner, RunnerOutput
from rlserve.engine.output_processor import OutputProcessor
from rlserve.engine.prefix_constraint import TokenTexts, allowed_token_ids
from rlserve.engine.sampler import SamplerOutput, SamplingRow, noise_seed, sample
from rlserve.engine.scheduler import ScheduledBatch, Scheduler
from rlserve.engine.sequence import Sequence
from rlserve.models.loader import WeightSource, load_model, read_config, update_weights
from rlserve.models.lora import LoRAAdapter, load_adapter
from rlserve.outputs import RequestOutput
from rlserve.sampling_params import SamplingParams

log = logging.getLogger(__name__)

PAUSE_MODES = ("keep", "wait", "abort")


@dataclass
class _Request:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    lora_name: str | None = None
    start_version: int = 0  # policy version when the request arrived
    max_staleness: int | None = None
    seqs: list[Sequence] = field(default_factory=list)
    announced: bool = False  # the first delta (with prompt info) was sent
    error: str | None = None  # why it failed inside step() (it was aborted alone)

    @property
    def finished(self) -> bool:
        return len(self.seqs) == self.params.n and all(s.is_finished for s in self.seqs)


class AdapterInUse(ValueError):
    """`unload_lora` of an adapter that running or waiting requests still use."""


class Engine:
    """Generate with continuous batching, paged KV and prefix caching; score sequences.

    `Engine()` loads the bundled model; `Engine(path, dtype=..., device=..., ...)` any local
    Llama / Qwen2 / Qwen3 checkpoint. Keyword arguments are `EngineConfig` fields.
    """

    def __init__(self, model: str | Path | None = None, **config: object) -> None:
        self.config = EngineConfig(model=None if model is None else str(model), **config)
        self.model_path = str(self.config.model_path)
        self.device = torch.device(self.config.device)
        model_config, hf_config = read_config(self.model_path, self.config.trust_remote_code)
        self.max_model_len = self.config.max_model_len or model_config.max_position_embeddings
        self.model = load_model(self.model_path, self.config.torch_dtype, self.device,
                                self.max_model_len, self.config.trust_remote_code)
        self.tokenizer = AutoTokenizer.from_pretrained(
            self.model_path, trust_remote_code=self.config.trust_remote_code)
        vocab_size = self.model.config.vocab_size
        # A generation_config may name ids the model has no logits for: they never come.
        self.eos_token_ids = {t for t in _eos_token_ids(self.model_path, self.tokenizer,
                                                        hf_config) if 0 <= t < vocab_size}
        num_blocks = self._num_kv_blocks()
        self.block_manager = BlockManager(num_blocks, self.config.block_size,
                                          self.config.enable_prefix_caching)
        self.runner = ModelRunner(self.model, num_blocks, self.config.block_size, self.device,
                                  self.config.torch_dtype)
        self.scheduler = Scheduler(self.block_manager, self.config.max_num_seqs,
                                   self.config.max_num_batched_tokens, self._cache_key)
        self.outputs = OutputProcessor(self.tokenizer, self.eos_token_ids, self.max_model_len)
        # ~0.5 s for a 151k vocabulary: paid here, not by the first prefix_choices request.
        self.token_texts = TokenTexts(self.tokenizer, vocab_size)
        self.policy_version = 0
        self._base_version = 0  # policy version of the current base weights
        self.adapters: dict[str, LoRAAdapter] = {}
        self._adapter_loads = itertools.count(1)  # a LoRAAdapter.load_id per load_lora
        self.paused: str | None = None  # None, or the pause mode in force
        self._requests: dict[str, _Request] = {}
        self._aborted: list[_Request] = []
        self._rng = random.Random(self.config.seed)
        self._next_seq_id = 0
        self._counters = dict.fromkeys(
            ("prompt_tokens_total", "prompt_tokens_computed", "generated_tokens",
             "requests_finished", "steps"), 0)

    # ---- streaming core -------------------------------------------------------------------

    def add_request(self, prompt: Prompt, params: SamplingParams | None = None,
                    request_id: str | None = None, *, lora_name: str | None = None,
                    min_policy_version: int | None = None,
                    max_staleness: int | None = None) -> str:
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
        if lora_name is not None and lora_name not in self.adapters:
            raise ValueError(f"unknown LoRA adapter {lora_name!r}; loaded: "
                             f"{sorted(self.adapters) or 'none'}")
        self._check_staleness_args(min_policy_version, max_staleness)
        text, token_ids = self._tokenize_prompt(prompt)
        self._check_fits(token_ids, params)
        check_params(params, self.model.config.vocab_size, self.eos_token_ids,
                     self.token_texts, self.config.max_num_seqs)
        request = _Request(request_id, text, token_ids, params, lora_name,
                           self.policy_version, max_staleness)
        seed = params.seed if params.seed is not None else self._rng.getrandbits(63)
        seq = self._new_seq(request_id, 0, token_ids, params, seed, lora_name)
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
        if self.paused in (None, "wait"):  # "wait" drains: running requests go on
            batch = self.scheduler.schedule(admit=self.paused is None)
            if batch:
                progressed = self._run(batch)
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
            request.seqs.append(self._new_seq(request_id, index, request.prompt_token_ids,
                                              request.params, 0, request.lora_name))
        for seq in request.seqs:
            if not seq.is_finished:
                self.scheduler.finish(seq)
                seq.finish_reason, seq.stop_reason = "abort", reason
        self._aborted.append(request)
        return True

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests)

    def stats(self) -> dict[str, int]:
        """Counters: scheduling, KV-cache use and prefix-cache effectiveness."""
        bm = self.block_manager
        return {**self._counters,
                "num_running": len(self.scheduler.running),
                "num_waiting": len(self.scheduler.waiting),
                "num_waiting_sequences": self.scheduler.num_waiting_sequences,
                "num_requests": len(self._requests),
                "kv_blocks_used": bm.num_used_blocks,
                "kv_blocks_total": bm.num_blocks,
                "prefix_cache_hit_tokens": bm.num_hit_tokens,
                "preemptions": self.scheduler.num_preemptions,
                "policy_version": self.policy_version,
                "num_adapters": len(self.adapters)}

    def reset_prefix_cache(self) -> None:
        self.block_manager.reset_prefix_cache()

    # ---- RL control plane ------------------------------------------------------------------

    def update_weights(self, weights: WeightSource, version: int | None = None,
                       recompute_kv: bool = False) -> int:
        """Replace base weights in place; returns the new policy version.

        `weights`: a state dict, an iterable of (Hugging Face name, tensor) pairs, or a
        safetensors file or folder. Every name, shape and dtype is checked before anything
        is written: on error nothing changes. Running requests continue on the new weights
        ("keep"); with `recompute_kv` their KV is recomputed under them first. Use
        `pause("wait")` or `pause("abort")` beforehand for the other update modes.
        """
        new_version = self.check_version(version)
        update_weights(self.model, weights)
        self._base_version = new_version
        self._set_version(new_version, recompute_kv)
        return new_version

    def load_lora(self, name: str, path: str | Path, recompute_kv: bool = False,
                  new_policy: bool = False) -> int:
        """Load (or reload) a PEFT adapter under `name`; returns its version. A reload bumps
        the policy version and its cached prefixes are no longer reused; `new_policy` bumps
        it on a first load too (the adapter becomes the policy being trained)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"adapter name must be a non-empty string, got {name!r}")
        adapter = load_adapter(name, path, self.model)
        # Its KV is cached under this id: a later adapter of the same name (a reload, or a
        # load after unload_lora) never reuses it.
        adapter.load_id = next(self._adapter_loads)
        bump = new_policy or name in self.adapters
        adapter.version = self.check_version(None) if bump else self.policy_version
        self.adapters[name] = adapter
        if bump:
            self._set_version(adapter.version, recompute_kv)
        return adapter.version

    def unload_lora(self, name: str) -> None:
        if name not in self.adapters:
            raise ValueError(f"unknown LoRA adapter {name!r}")
        users = [r.request_id for r in self._requests.values() if r.lora_name == name]
        if users:
            raise AdapterInUse(f"adapter {name!r} is in use by {len(users)} request(s); abort "
                               "them or let them finish first")
        del self.adapters[name]

    def pause(self, mode: str = "keep") -> None:
        """Stop generating, for a weight update. "keep": freeze running requests with their
        KV; "wait": admit nothing new but let running requests finish (keep calling step()
        until `num_running` is 0); "abort": abort every request, partial outputs returned."""
        if mode not in PAUSE_MODES:
            raise ValueError(f"pause mode must be one of {PAUSE_MODES}, got {mode!r}")
        self.paused = mode
        if mode == "abort":
            for request_id in list(self._requests):
                self.abort(request_id, reason="aborted for a weight update")

    def resume(self, recompute_kv: bool = False) -> None:
        """Generate again; with `recompute_kv`, running requests first recompute their KV."""
        if recompute_kv:
            self.scheduler.recompute_running()
        self.paused = None

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    def check_version(self, version: int | None) -> int:
        """The policy version an update to `version` would set (None = the next one);
        ValueError unless it is an integer above the current one. Changes nothing."""
        if version is None:
            return self.policy_version + 1
        if isinstance(version, bool) or not isinstance(version, int) or \
                version <= self.policy_version:
            raise ValueError(f"version must be an integer > the current policy version "
                             f"{self.policy_version}, got {version!r}")
        return version

    def _set_version(self, version: int, recompute_kv: bool) -> None:
        self.policy_version = version
        if recompute_kv:
            self.scheduler.recompute_running()
        else:  # their KV mixes old and new weights from here on: never share it
            for seq in self.scheduler.running:
                seq.cacheable = False
        for request in list(self._requests.values()):
            behind = version - request.start_version
            if request.max_staleness is not None and behind > request.max_staleness:
                self.abort(request.request_id, reason=f"stale: policy moved {behind} versions "
                           f"(max_staleness {request.max_staleness})")

    def _check_staleness_args(self, min_version: int | None, max_staleness: int | None) -> None:
        for name, value in (("min_policy_version", min_version), ("max_staleness", max_staleness)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 0):
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if min_version is not None and self.policy_version < min_version:
            raise ValueError(f"request needs policy version >= {min_version} but the engine's "
                             f"weights are version {self.policy_version}")

    # ---- convenience loops ----------------------------------------------------------------

    def generate(self, prompts: Prompt | list[Prompt],
                 params: SamplingParams | list[SamplingParams] | None = None,
                 lora_name: str | None | list[str | None] = None) -> list[RequestOutput]:
        """Complete prompts (a string, token ids, or a list of either); outputs in order.
        `lora_name`: one adapter for all prompts, or one per prompt (None = base model).
        A request that fails inside the engine does not take the others down: its output
        has `error` set and its samples end with finish_reason "abort" (as vLLM's
        LLM.generate, one output per request). Bad arguments raise before anything runs."""
        prompts = prompt_list(prompts)
        params = params_list(params, len(prompts))
        loras = lora_name if isinstance(lora_name, list) else [lora_name] * len(prompts)
        if len(loras) != len(prompts):
            raise ValueError(f"got {len(loras)} lora names for {len(prompts)} prompts")
        ids: list[str] = []
        try:
            for prompt, p, lora in zip(prompts, params, loras, strict=True):
                ids.append(self.add_request(prompt, p, lora_name=lora))
        except Exception:
            self._withdraw(ids)
            raise
        return self._run_to_completion(ids)

    def chat(self, conversations: list[dict] | list[list[dict]],
             params: SamplingParams | list[SamplingParams] | None = None,
             tools: list[dict] | None = None,
             lora_name: str | None | list[str | None] = None,
             tool_parser: str = "hermes") -> list[RequestOutput]:
        """Apply the chat template (with `tools` when given) and generate. With `tools`,
        each completion also carries the calls parsed from its text (`tool_calls`) and the
        ones that failed to parse (`tool_call_errors`), by the `tool_parser` format."""
        if conversations and isinstance(conversations[0], dict):
            conversations = [conversations]  # type: ignore[list-item]
        if tools:
            from rlserve.tools import get_parser, validate_tools  # the tools layer sits above

            validate_tools(tools)  # before generating: parsing the replies needs the names
            parser = get_parser(tool_parser)
        prompts = [self.render_chat(conv, tools) for conv in conversations]
        outs = self.generate(prompts, params, lora_name)
        for out, prompt in zip(outs, prompts, strict=True):
            out.prompt = self.tokenizer.decode(prompt)
            for c in out.outputs if tools else []:
                parsed = parser.parse(c.text, tools)
                c.tool_calls, c.tool_call_errors = parsed.calls, parsed.errors
        return outs

    def render_chat(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """Token ids of `messages` rendered by the chat template, ready for the assistant."""
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ValueError("a conversation must be a list of message dicts")
        text = self.tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                                  add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def score(self, prompt_token_ids: list[int] | list[list[int]],
              response_token_ids: list[int] | list[list[int]],
              temperature: float = 1.0,
              lora_name: str | None = None) -> list[float] | list[list[float]]:
        """Teacher-forced logprobs of each response token after its prompt, under
        log_softmax(logits / temperature): the numbers `generate` reports for them.
        Token ids only (text is refused: see `call_args.score_pairs`)."""
        single, prompts, responses = score_pairs(prompt_token_ids, response_token_ids)
        params = score_params(temperature)
        ids: list[str] = []
        try:
            for prompt, response in zip(prompts, responses, strict=True):
                ids.append(self.add_request(prompt + response, params, lora_name=lora_name))
                self._requests[ids[-1]].seqs[0].score_only = True
        except Exception:
            self._withdraw(ids)
            raise
        outs = _raise_failures(self._run_to_completion(ids))
        scores = [out.prompt_logprobs[len(p):] for out, p in zip(outs, prompts, strict=True)]
        return scores[0] if single else scores

    def logits(self, token_ids: list[int], lora_name: str | None = None) -> torch.Tensor:
        """Teacher-forced fp32 logits [len(token_ids), vocab] of every position."""
        request_id = self.add_request(token_ids, SamplingParams(max_tokens=1),
                                      lora_name=lora_name)
        seq = self._requests[request_id].seqs[0]
        seq.score_only = seq.keep_logits = True
        _raise_failures(self._run_to_completion([request_id]))
        return torch.cat(seq.logits)

    # ---- internals -------------------------------------------------------------------------

    def _run(self, batch: ScheduledBatch) -> list[Sequence]:
        """Forward one batch and apply its results; returns the sequences that progressed.
        If the forward raises, only the sequences that fail on their own fail their
        requests; the others go on in smaller groups (see failures.py: a rerun writes the
        same KV into the same slots, and nothing was booked yet)."""
        # Copy-on-write first, outside the failure handling: every rerun needs the copies.
        self.runner.copy_blocks(batch.block_copies)
        samples = [seq.num_computed_tokens + n == seq.num_tokens and not seq.score_only
                   for seq, n in zip(batch.seqs, batch.num_new_tokens, strict=True)]

        def forward(group: list[int]) -> tuple[ScheduledBatch, RunnerOutput]:
            part = batch if len(group) == len(batch) else ScheduledBatch(
                [batch.seqs[i] for i in group], [batch.num_new_tokens[i] for i in group])
            return part, self.runner.run(part, [samples[i] for i in group], self.adapters)

        done, culprits = run_isolating(list(range(len(batch))), forward)
        for i, error in culprits:
            self._fail_request(batch.seqs[i], error)
        progressed = []
        self._counters["steps"] += bool(done)
        for _, (part, result) in done:
            progressed += self._apply(part, result)
        return progressed

    def _apply(self, batch: ScheduledBatch, result: RunnerOutput) -> list[Sequence]:
        """Book a forward's results and sample; returns the sequences that progressed."""
        progressed = []
        for i, (seq, num_new) in enumerate(zip(batch.seqs, batch.num_new_tokens, strict=True)):
            if seq.is_finished:  # aborted with a sibling of its n > 1 group that failed
                continue
            try:
                if self._apply_forward(seq, num_new, result.prompt_logits.get(i)):
                    progressed.append(seq)
            except Exception as exc:
                self._fail_request(seq, exc)
        rows, row_seqs = [], []
        for row, i in enumerate(result.sample_seqs):
            if batch.seqs[i].is_finished:  # failed above
                continue
            for seq in self._fork_group(batch.seqs[i]):
                rows.append(row)
                row_seqs.append(seq)
        if row_seqs:
            progressed.extend(self._sample(_take_rows(result.sample_logits, rows), row_seqs))
        return progressed

    def _apply_forward(self, seq: Sequence, num_new: int,
                       prompt_logits: tuple[int, torch.Tensor] | None) -> bool:
        """Book one sequence's forward results; True when that finished it (score-only)."""
        if seq.num_computed_tokens < seq.num_prompt_tokens:
            self._counters["prompt_tokens_computed"] += min(
                num_new, seq.num_prompt_tokens - seq.num_computed_tokens)
        seq.num_computed_tokens += num_new
        if seq.cacheable:
            self.block_manager.cache_full_blocks(seq, self._cache_key(seq))
        if prompt_logits is not None:
            self._record_prompt_logprobs(seq, *prompt_logits)
        if seq.score_only and seq.num_computed_tokens == seq.num_tokens:
            seq.finish_reason = "stop"
            self.scheduler.finish(seq)
            return True
        return False

    def _fail_request(self, seq: Sequence, error: Exception) -> None:
        """Abort the request of `seq` alone; its next delta carries the error."""
        request = self._requests.get(seq.request_id)
        if request is None or request.error is not None:
            return
        message = f"{type(error).__name__}: {error}"
        log.warning("request %s failed inside the engine step and is aborted alone: %s",
                    seq.request_id, message)
        log.debug("the failure of request %s", seq.request_id, exc_info=error)
        if self.abort(seq.request_id, reason=message):
            request.error = message
        else:  # every sample had finished already: its outputs are whole, report them as is
            self._aborted.append(request)

    def _fork_group(self, seq: Sequence) -> list[Sequence]:
        """A prefilled n > 1 parent becomes n samples sharing its prompt blocks."""
        if seq.num_forks == 0:
            return [seq]
        request = self._requests[seq.request_id]
        children = []
        for index in range(1, seq.num_forks + 1):
            child = seq.fork(self._take_seq_id(), index)
            self.block_manager.fork(seq, child)
            children.append(child)
        seq.num_forks = 0
        request.seqs.extend(children)
        self.scheduler.add_forks(seq, children)
        return [seq, *children]

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[Sequence]:
        """Sample one token for each of `seqs` (row j of `logits` is seqs[j]'s); returns
        those that got one. A sequence whose row cannot be sampled fails its request."""
        rows: dict[int, SamplingRow] = {}
        for j, seq in enumerate(seqs):
            try:
                rows[j] = self._sampling_row(seq)
            except Exception as exc:
                self._fail_request(seq, exc)
        done = []
        for j, out, k in self._sample_rows(logits, rows, seqs):
            seq = seqs[j]
            if seq.is_finished:  # a sibling of an n > 1 group failed
                continue
            try:
                if out.errors[k] is not None:
                    raise ValueError(f"cannot sample: {out.errors[k]}")
                self._append_token(seq, out, k)
                done.append(seq)
            except Exception as exc:
                self._fail_request(seq, exc)
        return done

    def _sampling_row(self, s: Sequence) -> SamplingRow:
        return SamplingRow(temperature=s.params.temperature, top_k=s.params.top_k,
                           top_p=s.params.top_p, min_p=s.params.min_p,
                           noise_seed=noise_seed(s.seed, s.index, s.num_tokens),
                           banned_token_ids=self.outputs.banned_token_ids(s),
                           num_top_logprobs=s.params.logprobs or 0,
                           allowed_token_ids=self._allowed_token_ids(s))

    def _sample_rows(self, logits: torch.Tensor, rows: dict[int, SamplingRow],
                     seqs: list[Sequence]) -> list[tuple[int, SamplerOutput, int]]:
        """(seq index, sampler output, row in it) for every row sampled. All rows go in one
        call (rows with nothing to sample come back in its `errors`); if it raises, the
        rows that raise alone fail and the others are sampled in groups (sampling is
        row-wise: they get exactly the same tokens)."""
        order = [j for j in rows if not seqs[j].is_finished]
        if not order:
            return []

        def run(group: list[int]) -> SamplerOutput:
            return sample(_take_rows(logits, group), [rows[j] for j in group])

        done, culprits = run_isolating(order, run)
        for j, error in culprits:
            self._fail_request(seqs[j], error)
        return [(j, out, k) for group, out in done for k, j in enumerate(group)]

    def _append_token(self, seq: Sequence, out: SamplerOutput, k: int) -> None:
        seq.token_ids.append(out.token_ids[k])
        seq.logprobs.append(out.logprobs[k])
        seq.sampling_logprobs.append(out.sampling_logprobs[k])
        if out.top_logprobs[k] is not None:
            seq.top_logprobs.append(out.top_logprobs[k])
        seq.weight_versions.append(self.policy_version)
        self._counters["generated_tokens"] += 1
        self.outputs.check_stop(seq)
        if seq.finish_reason is not None:
            self.scheduler.finish(seq)

    def _allowed_token_ids(self, seq: Sequence) -> list[int] | None:
        if not seq.params.prefix_choices:
            return None
        # While constrained, every token adds at least one byte: the longest choice's
        # length in tokens is all the output that can matter.
        longest = max(len(c.encode()) for c in seq.params.prefix_choices)
        output = self.token_texts.spell(seq.output_token_ids[:longest])
        # An empty list (nothing continues) is refused at admission (dead_end), and the
        # sampler's `errors` catch it should a banned stop id make it so.
        return allowed_token_ids(self.token_texts, seq.params.prefix_choices, output)

    def _record_prompt_logprobs(self, seq: Sequence, first: int, logits: torch.Tensor) -> None:
        """Keep logprobs (and raw logits if asked) of prompt rows first, first + 1, ..."""
        if not seq.prompt_logprobs:
            seq.prompt_logprobs.append(None)  # the first token has no context
            seq.prompt_top_logprobs.append(None)
        # After a preemption the same rows are computed again: keep the first copy.
        skip = max(0, seq.num_prompt_rows_done - first)
        logits, first = logits[skip:], first + skip
        seq.num_prompt_rows_done = max(seq.num_prompt_rows_done, first + len(logits))
        if seq.keep_logits:
            seq.logits.append(logits)
        logits = logits[:max(0, seq.num_prompt_tokens - 1 - first)]
        if not len(logits):
            return
        t = seq.params.logprob_temperature
        logprobs = torch.log_softmax(logits / t, dim=-1)
        targets = torch.tensor(seq.token_ids[first + 1:first + 1 + len(logits)],
                               device=logits.device)
        seq.prompt_logprobs.extend(logprobs.gather(1, targets[:, None]).squeeze(1).tolist())
        k = seq.params.prompt_logprobs or 0
        if k:
            values, ids = torch.topk(logprobs, min(k, logprobs.shape[1]), dim=-1)
            seq.prompt_top_logprobs.extend(
                dict(zip(i, v, strict=True))
                for i, v in zip(ids.tolist(), values.tolist(), strict=True))
        else:
            seq.prompt_top_logprobs.extend([None] * len(logits))

    def _delta(self, request: _Request) -> RequestOutput:
        first = not request.announced
        request.announced = True
        seq0 = request.seqs[0]
        outputs = [self.outputs.delta(s) for s in request.seqs if self.outputs.has_news(s)]
        finished = request.finished
        if finished:
            del self._requests[request.request_id]
            self._counters["requests_finished"] += 1
        return RequestOutput(
            request_id=request.request_id,
            prompt=request.prompt if first else None,
            prompt_token_ids=request.prompt_token_ids if first else [],
            outputs=outputs,
            finished=finished,
            prompt_logprobs=seq0.prompt_logprobs if finished and seq0.prompt_logprobs else None,
            prompt_top_logprobs=(seq0.prompt_top_logprobs
                                 if finished and seq0.params.prompt_logprobs else None),
            num_cached_tokens=seq0.num_cached_tokens,
            error=request.error if finished else None,
        )

    def _withdraw(self, ids: list[str]) -> None:
        """Take back requests of one call that no one will see the outputs of (a later one
        was refused): freed and forgotten now, no step() needed to report them."""
        withdrawn = set(ids)
        for request_id in ids:
            self.abort(request_id)
            self._requests.pop(request_id, None)
        self._aborted = [r for r in self._aborted if r.request_id not in withdrawn]

    def _run_to_completion(self, ids: list[str]) -> list[RequestOutput]:
        if self.paused is not None:  # nothing new would be scheduled: never spin forever
            self._withdraw(ids)
            raise RuntimeError(f"the engine is paused ({self.paused!r}); call resume() first")
        results = {i: RequestOutput(i, None, [], []) for i in ids}
        while any(not results[i].finished for i in ids):
            for delta in self.step():
                if delta.request_id in results:
                    results[delta.request_id].merge(delta)
        for out in results.values():
            out.outputs.sort(key=lambda c: c.index)
        return [results[i] for i in ids]

    def _tokenize_prompt(self, prompt: Prompt) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            token_ids = self.tokenizer.encode(prompt)
            text: str | None = prompt
        elif is_token_ids(prompt):
            token_ids, text = list(prompt), None
        else:
            raise ValueError("a prompt must be a string or a list of token ids, got "
                             f"{type(prompt).__name__}")
        if not token_ids:
            raise ValueError("the prompt is empty")
        # Text too: a tokenizer may know more tokens than the model has embeddings for.
        check_token_ids("prompt", token_ids, self.model.config.vocab_size)
        return text, token_ids

    def _check_fits(self, token_ids: list[int], params: SamplingParams) -> None:
        if len(token_ids) >= self.max_model_len:
            raise ValueError(f"prompt is {len(token_ids)} tokens long but the model's context "
                             f"is {self.max_model_len} tokens (at least one must be left for "
                             "the output)")
        longest = min(len(token_ids) + params.max_tokens, self.max_model_len)
        needed = self.block_manager.blocks_needed(longest)
        if needed > self.block_manager.num_blocks:
            raise ValueError(f"a sequence of {longest} tokens needs {needed} KV blocks but the "
                             f"cache has {self.block_manager.num_blocks}; raise num_blocks or "
                             "kv_cache_memory, or lower max_tokens")

    def _new_seq(self, request_id: str, index: int, token_ids: list[int],
                 params: SamplingParams, seed: int, lora_name: str | None) -> Sequence:
        return Sequence(self._take_seq_id(), request_id, index, token_ids, params, seed,
                        arrival=self._next_seq_id, lora_name=lora_name)

    def _take_seq_id(self) -> int:
        self._next_seq_id += 1
        return self._next_seq_id

    def _cache_key(self, seq: Sequence) -> Hashable:
        """Prefix-cache entries are valid only for the weights that computed them."""
        if seq.lora_name is None:
            return (self._base_version, None, None)
        return (self._base_version, seq.lora_name, self.adapters[seq.lora_name].load_id)

    def _num_kv_blocks(self) -> int:
        c = self.config
        if c.num_blocks is not None:
            return c.num_blocks
        per_block = ModelRunner.kv_bytes_per_block(self.model, c.block_size, c.torch_dtype)
        budget = c.kv_cache_memory or DEFAULT_KV_CACHE_MEMORY
        useful = c.max_num_seqs * -(-self.max_model_len // c.block_size)
        return max(1, min(budget // per_block, useful))



def _eos_token_ids(path: str, tokenizer, hf_config) -> set[int]:
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    try:
        gen_eos = GenerationConfig.from_pretrained(path).eos_token_id
    except OSError:
        gen_eos = getattr(hf_config, "eos_token_id", None)
    if gen_eos is not None:
        ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return ids


def _raise_failures(outs: list[RequestOutput]) -> list[RequestOutput]:
    """Scores have no partial answer: a request that failed fails the call."""
    failed = [out for out in outs if out.error]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(outs)} request(s) failed inside the "
                           f"engine; first: {failed[0].error}")
    return outs


def _take_rows(values: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """values[rows], without copying when that is all of them in order."""
    return values if rows == list(range(len(values))) else values[rows]
