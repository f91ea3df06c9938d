"""The remote and tinker backends of the shared backend suite (tests/backends/).

`remote_backend(tmp_path)`: a `RemoteBackend` over a REAL rlserve server on loopback (the
bundled model, its own engine, `tmp_path` as --weights-dir, admin key `ADMIN_KEY`), in any
admin dialect. `tinker_backend()`: a `TinkerBackend` over `LocalSamplingClient`, a local
STAND-IN for tinker's `SamplingClient`: the Tinker service cannot be reached from here, so
the stand-in has the SDK's method signatures, returns futures and the SDK's own response
types (`tinker.types.SampleResponse`, float32 logprobs like the SDK's arrays), and computes
every number with the native engine on the bundled model, so the numbers are real.
Both are context managers: `with remote_backend(tmp_path) as backend: ...`;
`remote_server` + `dialect_backend` give several backends (dialects) over one server.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from rlserve import Engine, SamplingParams
from rlserve.backends.remote import RemoteBackend
from rlserve.backends.tinker import TinkerBackend
from tests.support.servers import RunningServer

ADMIN_KEY = "remote-backend-admin"


@contextmanager
def remote_backend(
    tmp_path: Path, dialect: str = "rlserve", engine: Engine | None = None
) -> Iterator[RemoteBackend]:
    """A RemoteBackend (its own sync Client, closed on exit) over a fresh rlserve server on
    `engine` (default: a new engine on the bundled model), reading paths under `tmp_path`."""
    with remote_server(tmp_path, engine) as server:
        backend = dialect_backend(server, dialect)
        try:
            yield backend
        finally:
            backend.close()


@contextmanager
def remote_server(tmp_path: Path, engine: Engine | None = None) -> Iterator[RunningServer]:
    """A real rlserve server on loopback: `engine` (default: a new bundled-model engine)
    behind admin key ADMIN_KEY, with `tmp_path` as its --weights-dir."""
    from rlserve.server import ServerConfig

    engine = engine if engine is not None else Engine(num_blocks=128, block_size=8)
    config = ServerConfig(admin_key=ADMIN_KEY, weights_dir=str(tmp_path), max_tokens=64)
    server = RunningServer(engine, config)
    try:
        yield server
    finally:
        server.close()


def dialect_backend(server: RunningServer, dialect: str, **options: Any) -> RemoteBackend:
    """A RemoteBackend in `dialect` over `server`, owning its new Client (as
    `RemoteBackend.from_config` builds it: `close()` closes the client)."""
    from rlserve.client import Client

    tokenizer = server.engine.tokenizer
    client = Client(server.url, max_retries=0, tokenizer=tokenizer, admin_key=ADMIN_KEY)
    backend = RemoteBackend(client, dialect=dialect, **options)
    backend._owns_client = True
    return backend


@contextmanager
def tinker_backend(engine: Engine | None = None) -> Iterator[TinkerBackend]:
    """A TinkerBackend over `LocalSamplingClient(engine)` (default: a new bundled engine)."""
    stand_in = LocalSamplingClient(engine if engine is not None else Engine())
    try:
        yield TinkerBackend(stand_in, stand_in.engine.tokenizer)
    finally:
        stand_in.close()


class LocalSamplingClient:
    """A stand-in for `tinker.SamplingClient` (tinker 0.38: `sample`, `compute_logprobs`,
    `get_tokenizer`, `get_base_model`). One worker thread owns the engine (it is not
    thread-safe), so requests run one after another; the futures are real."""

    def __init__(self, engine: Engine) -> None:
        from tinker import types

        self.types = types
        self.engine = engine
        self.calls: list[dict[str, Any]] = []  # what each sample() was asked
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="tinker-stand-in")

    def sample(
        self,
        prompt: Any,
        num_samples: int,
        sampling_params: Any,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
        topk_sample_logprobs: int = 0,
        target_prompt_logprobs: Any = None,
        prompt_alt_tokens_k: int = 0,
        prompt_logprobs_last_n: int | None = None,
    ) -> Any:
        if topk_prompt_logprobs or topk_sample_logprobs or target_prompt_logprobs is not None:
            raise NotImplementedError("the stand-in computes no top-k or target logprobs")
        if prompt_alt_tokens_k or prompt_logprobs_last_n is not None:
            raise NotImplementedError("the stand-in draws no alternatives and scores whole prompts")
        self.calls.append({"num_samples": num_samples, "sampling_params": sampling_params})
        tokens = prompt.to_ints()
        params = self._engine_params(sampling_params, num_samples, include_prompt_logprobs)
        future = self._worker.submit(self._sample, tokens, params, include_prompt_logprobs)
        return as_api_future(future)

    def compute_logprobs(self, prompt: Any, prompt_logprobs_last_n: int | None = None) -> Any:
        """The SDK's: a one-token sample with prompt logprobs, returning only those."""
        if prompt_logprobs_last_n is not None:
            raise NotImplementedError("the stand-in scores whole prompts")
        params = self.types.SamplingParams(max_tokens=1)
        future = self.sample(prompt, 1, params, include_prompt_logprobs=True)
        plain = future.future() if hasattr(future, "future") else future
        return as_api_future(_then(plain, lambda response: response.prompt_logprobs))

    def get_tokenizer(self) -> Any:
        return self.engine.tokenizer

    def get_base_model(self) -> str:
        return "rlserve-bundled"

    def close(self) -> None:
        self._worker.shutdown(wait=True)

    def _engine_params(self, sp: Any, num_samples: int, with_prompt: bool) -> SamplingParams:
        stop = sp.stop
        strings = [s for s in stop or [] if isinstance(s, str)]
        ids = [s for s in stop or [] if not isinstance(s, str)]
        return SamplingParams(
            n=num_samples,
            max_tokens=sp.max_tokens if sp.max_tokens is not None else 16,
            temperature=sp.temperature,
            top_p=sp.top_p,
            top_k=sp.top_k,
            seed=sp.seed,
            stop=strings,
            stop_token_ids=ids,
            ignore_eos=stop is not None and not strings,  # a stop list replaces EOS
            include_stop_str_in_output=True,
            prompt_logprobs=0 if with_prompt else None,
        )

    def _sample(self, tokens: list[int], params: SamplingParams, with_prompt: bool) -> Any:
        (output,) = self.engine.generate([tokens], params)
        if output.error is not None:
            raise RuntimeError(output.error)
        sequences = [
            self.types.SampledSequence(
                stop_reason="stop" if out.finish_reason == "stop" else "length",
                sequence_id=f"{output.request_id}-{out.index}",
                tokens_np=np.array(out.token_ids, dtype=np.int32),
                logprobs_np=np.array(out.logprobs, dtype=np.float32),
            )
            for out in output.outputs
        ]
        prompt_lps = None
        if with_prompt:
            values = [np.nan if lp is None else lp for lp in output.prompt_logprobs or []]
            prompt_lps = np.array(values, dtype=np.float32)
        return self.types.SampleResponse(sequences=sequences, prompt_logprobs_np=prompt_lps)


def as_api_future(future: Future) -> Any:
    """What the SDK's `sample` / `compute_logprobs` return: its `APIFuture` wrapper of a
    concurrent future (`.result()`, `.future()`, awaitable)."""
    try:  # private in the SDK (0.38): a later SDK may move it; the backend takes either
        from tinker.lib.backcompat_concurrent_future import _AwaitableFutureCompatWrapper
    except ImportError:
        return future
    return _AwaitableFutureCompatWrapper(future)


def _then(future: Future, fn: Any) -> Future:
    """A future of `fn(future.result())`."""
    out: Future = Future()

    def done(f: Future) -> None:
        try:
            out.set_result(fn(f.result()))
        except Exception as exc:  # passed on to whoever waits
            out.set_exception(exc)

    future.add_done_callback(done)
    return out
