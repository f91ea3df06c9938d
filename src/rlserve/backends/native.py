"""The native backend: an in-process `Engine`, driven step by step on the calling thread."""

from __future__ import annotations

from rlserve.backends.base import OnDone, Request, Sample
from rlserve.engine import Engine
from rlserve.outputs import CompletionOutput


class EngineBackend:
    """Adds every request to `engine`, then steps it until all of them finish. The backend
    owns the engine meanwhile: it must have no other requests in flight."""

    def __init__(self, engine: Engine, lora_name: str | None = None) -> None:
        if engine.has_unfinished_requests():
            raise RuntimeError(
                "the backend drives the engine itself: finish or abort the requests "
                "already in it first"
            )
        self.engine = engine
        self.lora_name = lora_name
        self.tokenizer = engine.tokenizer
        self.max_model_len: int | None = engine.max_model_len

    def generate(self, requests: list[Request], on_done: OnDone) -> None:
        engine = self.engine
        if engine.paused is not None:
            raise RuntimeError(f"the engine is paused ({engine.paused!r}); call resume() first")
        pending: dict[str, int] = {}  # request id -> index in `requests`
        totals: dict[int, CompletionOutput] = {}
        try:
            for k, (prompt, params) in enumerate(requests):
                try:
                    request_id = engine.add_request(prompt, params, lora_name=self.lora_name)
                except ValueError as exc:  # this request only: the others go on
                    on_done(k, Sample.failed(f"request rejected: {exc}"))
                    continue
                pending[request_id], totals[k] = k, CompletionOutput(index=0)
            while pending:
                for delta in engine.step():
                    k = pending.get(delta.request_id)
                    if k is None:
                        continue
                    for out in delta.outputs:
                        totals[k].extend(out)
                    if delta.finished:
                        del pending[delta.request_id]
                        total = totals.pop(k)
                        if delta.error is not None:  # broke inside the engine
                            on_done(k, Sample.failed(delta.error))
                        else:
                            on_done(k, Sample.from_output(total))
        except BaseException:
            for request_id in pending:
                engine.abort(request_id)
            engine.step()  # reports (and forgets) the aborted requests; frees their KV
            raise
