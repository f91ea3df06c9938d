"""After a token is sampled: stop conditions, detokenisation, and step() deltas."""

from __future__ import annotations

from rlserve.engine.sequence import Sequence
from rlserve.outputs import CompletionOutput


class OutputProcessor:
    def __init__(self, tokenizer, eos_token_ids: set[int], max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len

    def banned_token_ids(self, seq: Sequence) -> list[int]:
        """Stop and EOS ids may not be sampled before min_tokens (as in vLLM)."""
        p = seq.params
        if seq.num_output_tokens >= p.min_tokens:
            return []
        eos = [] if p.ignore_eos else sorted(self.eos_token_ids)
        return sorted(set(eos) | set(p.stop_token_ids))

    def check_stop(self, seq: Sequence) -> None:
        """Set finish_reason / stop_reason after the newest token, and update seq.text."""
        p, token = seq.params, seq.token_ids[-1]
        seq.text = self._decode(seq)
        past_min = seq.num_output_tokens >= p.min_tokens
        if past_min and not p.ignore_eos and token in self.eos_token_ids:
            seq.finish_reason = "stop"
        elif past_min and token in p.stop_token_ids:
            seq.finish_reason, seq.stop_reason = "stop", token
        elif past_min and p.stop and self._cut_at_stop_string(seq):
            seq.finish_reason = "stop"
        elif seq.num_output_tokens >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            seq.finish_reason = "length"

    def _decode(self, seq: Sequence) -> str:
        return self.tokenizer.decode(seq.output_token_ids,
                                     skip_special_tokens=seq.params.skip_special_tokens)

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

    @staticmethod
    def has_news(seq: Sequence) -> bool:
        """New tokens, or a finish not reported yet."""
        return seq.num_emitted_tokens < seq.num_output_tokens or (
            seq.finish_reason is not None and not seq.finish_emitted)

    def delta(self, seq: Sequence) -> CompletionOutput:
        """What `seq` produced since the last delta (tokens, logprobs, text)."""
        start = seq.num_emitted_tokens
        end = seq.num_output_tokens
        text = seq.text if seq.finish_reason else self._stable_text(seq)
        out = CompletionOutput(
            index=seq.index,
            text=text[seq.num_emitted_chars:],
            token_ids=seq.output_token_ids[start:end],
            logprobs=seq.logprobs[start:end],
            sampling_logprobs=seq.sampling_logprobs[start:end],
            top_logprobs=seq.top_logprobs[start:end] if seq.params.logprobs else None,
            weight_versions=seq.weight_versions[start:end],
            finish_reason=seq.finish_reason,
            stop_reason=seq.stop_reason,
        )
        seq.num_emitted_tokens = end
        seq.finish_emitted = seq.finish_reason is not None
        seq.num_emitted_chars = max(seq.num_emitted_chars, len(text))
        return out

    @staticmethod
    def _stable_text(seq: Sequence) -> str:
        """Text that later tokens cannot change: hold back an unfinished UTF-8 character
        and anything that may be the start of a stop string."""
        text = seq.text.rstrip("\ufffd")
        if seq.params.stop:
            hold = max(len(s) for s in seq.params.stop) - 1
            text = text[:max(seq.num_emitted_chars, len(text) - hold)]
        return text
