"""A Request: one prompt's n samples, as the engine core tracks them until the last delta."""

from __future__ import annotations

from dataclasses import dataclass, field

from rlserve.engine.sequence import Sequence
from rlserve.sampling_params import SamplingParams


@dataclass
class Request:
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

    def new_sequence(self, index: int, seed: int) -> Sequence:
        """Sample `index` of this request, not started."""
        return Sequence(
            self.request_id, index, self.prompt_token_ids, self.params, seed, self.lora_name
        )
