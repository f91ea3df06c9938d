"""The Engine: EngineCore plus the convenience loops `generate`, `chat`, `score`, `logits`.

Each loop adds its requests, steps the core until they finish and merges their deltas
(`RequestOutput.merge`). `chat` only renders the chat template: tool-call parsing is the
tools layer's (`rlserve.tools.batch_generate_with_tools`).
"""

from __future__ import annotations

import torch

from rlserve.engine.call_args import Prompt, params_list, prompt_list, score_pairs, score_params
from rlserve.engine.core import EngineCore
from rlserve.outputs import RequestOutput
from rlserve.sampling_params import SamplingParams


class Engine(EngineCore):
    """Generate with continuous batching, paged KV and prefix caching; score sequences.

    `Engine()` loads the bundled model; `Engine(path, dtype=..., device=..., ...)` any local
    Llama / Qwen2 / Qwen3 checkpoint. Keyword arguments are `EngineConfig` fields.
    """

    def generate(
        self,
        prompts: Prompt | list[Prompt],
        params: SamplingParams | list[SamplingParams] | None = None,
        lora_name: str | None | list[str | None] = None,
    ) -> list[RequestOutput]:
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

    def chat(
        self,
        conversations: list[dict] | list[list[dict]],
        params: SamplingParams | list[SamplingParams] | None = None,
        tools: list[dict] | None = None,
        lora_name: str | None | list[str | None] = None,
    ) -> list[RequestOutput]:
        """Apply the chat template (offering `tools` when given) to one conversation or a
        list of them, and generate. The replies are text: to get their tool calls parsed,
        use `rlserve.tools.batch_generate_with_tools`."""
        if conversations and isinstance(conversations[0], dict):
            conversations = [conversations]  # type: ignore[list-item]
        prompts = [self.render_chat(conv, tools) for conv in conversations]
        outs = self.generate(prompts, params, lora_name)
        for out, prompt in zip(outs, prompts, strict=True):
            out.prompt = self.tokenizer.decode(prompt)
        return outs

    def render_chat(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """Token ids of `messages` rendered by the chat template, ready for the assistant."""
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ValueError("a conversation must be a list of message dicts")
        text = self.tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=True
        )
        return self.tokenizer.encode(text, add_special_tokens=False)

    def score(
        self,
        prompt_token_ids: list[int] | list[list[int]],
        response_token_ids: list[int] | list[list[int]],
        temperature: float = 1.0,
        lora_name: str | None = None,
    ) -> list[float] | list[list[float]]:
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
        scores = [out.prompt_logprobs[len(p) :] for out, p in zip(outs, prompts, strict=True)]
        return scores[0] if single else scores

    def logits(self, token_ids: list[int], lora_name: str | None = None) -> torch.Tensor:
        """Teacher-forced fp32 logits [len(token_ids), vocab] of every position."""
        request_id = self.add_request(token_ids, SamplingParams(max_tokens=1), lora_name=lora_name)
        seq = self._requests[request_id].seqs[0]
        seq.score_only = seq.keep_logits = True
        _raise_failures(self._run_to_completion([request_id]))
        return torch.cat(seq.logits)

    def _run_to_completion(self, ids: list[str]) -> list[RequestOutput]:
        """Step until the requests `ids` finish; their merged outputs, in order."""
        if self.paused is not None:  # nothing new would be scheduled: never spin forever
            self._withdraw(ids)
            raise RuntimeError(f"the engine is paused ('{self.paused}'); call resume() first")
        results = {i: RequestOutput(i, None, [], []) for i in ids}
        while any(not results[i].finished for i in ids):
            for delta in self.step():
                if delta.request_id in results:
                    results[delta.request_id].merge(delta)
        for out in results.values():
            out.outputs.sort(key=lambda c: c.index)
        return [results[i] for i in ids]

    def _withdraw(self, ids: list[str]) -> None:
        """Take back requests of one call that no one will see the outputs of (a later one
        was refused): freed and forgotten now, no step() needed to report them."""
        withdrawn = set(ids)
        for request_id in ids:
            self.abort(request_id)
            self._requests.pop(request_id, None)
        self._aborted = [r for r in self._aborted if r.request_id not in withdrawn]


def _raise_failures(outs: list[RequestOutput]) -> list[RequestOutput]:
    """Scores have no partial answer: a request that failed fails the call."""
    failed = [out for out in outs if out.error]
    if failed:
        raise RuntimeError(
            f"{len(failed)} of {len(outs)} request(s) failed inside the "
            f"engine; first: {failed[0].error}"
        )
    return outs
