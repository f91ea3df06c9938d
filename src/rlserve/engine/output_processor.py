"""After the model ran: stop checks, detokenisation, prompt logprobs, and step() deltas."""

from __future__ import annotations

import torch

from rlserve.engine.request import Request
from rlserve.engine.sequence import Sequence
from rlserve.outputs import CompletionOutput, RequestOutput


class OutputProcessor:
    """Turns sampled tokens and prompt logits into the text, finish reasons and deltas of a
    request. `num_detokenized_tokens` counts the token ids passed to `tokenizer.decode`: with
    incremental detokenisation it grows by a constant per generated token, not by n."""

    def __init__(self, tokenizer, eos_token_ids: set[int], max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len
        self.num_detokenized_tokens = 0

    def banned_token_ids(self, seq: Sequence, num_output_tokens: int | None = None) -> list[int]:
        """Stop and EOS ids may not be sampled before min_tokens (as in vLLM); at
        `num_output_tokens` (default: the sequence's own) output tokens."""
        p = seq.params
        done = seq.num_output_tokens if num_output_tokens is None else num_output_tokens
        if done >= p.min_tokens:
            return []
        eos = [] if p.ignore_eos else sorted(self.eos_token_ids)
        return sorted(set(eos) | set(p.stop_token_ids))

    def check_stop(self, seq: Sequence) -> None:
        """Set finish_reason / stop_reason after the newest token, and update seq.text."""
        p, token = seq.params, seq.token_ids[-1]

        def decode(ids: list[int]) -> str:
            self.num_detokenized_tokens += len(ids)
            return self.tokenizer.decode(ids, skip_special_tokens=p.skip_special_tokens)

        seq.text = seq.detokenizer.update(seq.token_ids, seq.num_prompt_tokens, decode)
        past_min = seq.num_output_tokens >= p.min_tokens
        if past_min and not p.ignore_eos and token in self.eos_token_ids:
            seq.finish_reason = "stop"
        elif past_min and token in p.stop_token_ids:
            seq.finish_reason, seq.stop_reason = "stop", token
        elif past_min and p.stop and self._cut_at_stop_string(seq):
            seq.finish_reason = "stop"
        elif seq.num_output_tokens >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            seq.finish_reason = "length"

    def _cut_at_stop_string(self, seq: Sequence) -> bool:
        longest = max(len(s) for s in seq.params.stop)
        # Only the newest characters can complete a stop string not seen before.
        search_from = max(0, seq.num_emitted_chars - longest)
        hits = [(seq.text.find(s, search_from), s) for s in seq.params.stop]
        hits = [(at, s) for at, s in hits if at >= 0]
        if not hits:
            return False
        at, stop = min(hits)
        keep = at + len(stop) if seq.params.include_stop_str_in_output else at
        seq.text = seq.text[:keep]
        seq.stop_reason = stop
        return True

    def record_prompt_logprobs(self, seq: Sequence, first: int, logits: torch.Tensor) -> None:
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
        logits = logits[: max(0, seq.num_prompt_tokens - 1 - first)]
        if not len(logits):
            return
        logprobs = torch.log_softmax(logits / seq.params.logprob_temperature, dim=-1)
        targets = torch.tensor(
            seq.token_ids[first + 1 : first + 1 + len(logits)], device=logits.device
        )
        seq.prompt_logprobs.extend(logprobs.gather(1, targets[:, None]).squeeze(1).tolist())
        k = seq.params.prompt_logprobs or 0
        if k:
            values, ids = torch.topk(logprobs, min(k, logprobs.shape[1]), dim=-1)
            seq.prompt_top_logprobs.extend(
                dict(zip(i, v, strict=True))
                for i, v in zip(ids.tolist(), values.tolist(), strict=True)
            )
        else:
            seq.prompt_top_logprobs.extend([None] * len(logits))

    def request_delta(self, request: Request) -> RequestOutput:
        """What `request` produced since its last delta; prompt info in its first one,
        prompt logprobs and `error` in its last one."""
        first = not request.announced
        request.announced = True
        seq0 = request.seqs[0]
        outputs = [self.delta(s) for s in request.seqs if self.has_news(s)]
        finished = request.finished
        return RequestOutput(
            request_id=request.request_id,
            prompt=request.prompt if first else None,
            prompt_token_ids=request.prompt_token_ids if first else [],
            outputs=outputs,
            finished=finished,
            prompt_logprobs=seq0.prompt_logprobs if finished and seq0.prompt_logprobs else None,
            prompt_top_logprobs=(
                seq0.prompt_top_logprobs if finished and seq0.params.prompt_logprobs else None
            ),
            num_cached_tokens=seq0.num_cached_tokens,
            error=request.error if finished else None,
        )

    @staticmethod
    def has_news(seq: Sequence) -> bool:
        """New tokens, or a finish not reported yet."""
        return seq.num_emitted_tokens < seq.num_output_tokens or (
            seq.finish_reason is not None and not seq.finish_emitted
        )

    def delta(self, seq: Sequence) -> CompletionOutput:
        """What `seq` produced since the last delta (tokens, logprobs, text)."""
        start, end = seq.num_emitted_tokens, seq.num_output_tokens
        ids_from = seq.num_prompt_tokens
        text_end = len(seq.text) if seq.finish_reason else _stable_end(seq)
        out = CompletionOutput(
            index=seq.index,
            text=seq.text[seq.num_emitted_chars : text_end],
            token_ids=seq.token_ids[ids_from + start : ids_from + end],
            logprobs=seq.logprobs[start:end],
            sampling_logprobs=seq.sampling_logprobs[start:end],
            top_logprobs=seq.top_logprobs[start:end] if seq.params.logprobs else None,
            weight_versions=seq.weight_versions[start:end],
            finish_reason=seq.finish_reason,
            stop_reason=seq.stop_reason,
            spec_verify_steps=seq.spec_verify_steps,
            spec_proposed_tokens=seq.spec_proposed_tokens,
            spec_accepted_tokens=seq.spec_accepted_tokens,
        )
        seq.num_emitted_tokens = end
        seq.finish_emitted = seq.finish_reason is not None
        seq.num_emitted_chars = max(seq.num_emitted_chars, text_end)
        return out


def _stable_end(seq: Sequence) -> int:
    """Where the text that later tokens cannot change ends: before an unfinished UTF-8
    character (U+FFFD) and anything that may be the start of a stop string."""
    end = len(seq.text)
    while end and seq.text[end - 1] == "\ufffd":
        end -= 1
    if seq.params.stop:
        hold = max(len(s) for s in seq.params.stop) - 1
        end = min(end, max(seq.num_emitted_chars, end - hold))
    return end
