"""Seed 004's call shape: NeMo-Skills' `get_sandbox`, `get_prompt` and
`get_code_execution_model(...).generate(prompts=..., ...) -> [{"generation": ...}]`, on
rlserve's own machinery (`rlserve.eval.batch`: the rollout loop in TIR mode, rlserve's
sandbox, any backend), so a NeMo-Skills script runs with only its imports changed.

Differences from NeMo-Skills, by design: `tokens_to_generate` bounds each generation
round (NeMo-Skills subtracts earlier rounds); code output is appended as rlserve's TIR
mode writes it (an ```output block), so other `code_output_*` tags are refused; sampling
values are one per call (not per-prompt lists).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlserve._checks import ParamError, check_positive_int
from rlserve.backends import InferenceBackend, create_backend
from rlserve.eval.batch import BatchSettings, EvalPrompt, completion_text, run_batch
from rlserve.eval.seed004_prompt import SeedPrompt, get_prompt
from rlserve.rl import TIRConfig
from rlserve.sampling_params import SamplingParams
from rlserve.sandbox import Sandbox

__all__ = [
    "CodeExecutionConfig",
    "CodeExecutionModel",
    "SeedPrompt",
    "get_code_execution_model",
    "get_prompt",
    "get_sandbox",
]
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", "5000"  # NeMo-Skills' server defaults
# NeMo-Skills server types -> the remote backend's admin dialect (generation is the same).
REMOTE_DIALECTS = {"trtllm": "vllm", "vllm": "vllm", "sglang": "sglang", "openai": "vllm"}
REMOTE_DIALECTS["rlserve"] = "rlserve"
OUTPUT_TAGS = ("```output\n", "```\n")  # what rlserve's TIR mode writes around code output


@dataclass
class CodeExecutionConfig:
    """NeMo-Skills' code-execution settings (the ones rlserve's TIR mode has)."""

    max_code_executions: int = 3
    code_execution_timeout: float = 10.0
    max_code_output_characters: int = 1000

    def __post_init__(self) -> None:
        check_positive_int("max_code_executions", self.max_code_executions)
        TIRConfig(timeout_s=self.code_execution_timeout)  # ValueError naming timeout_s
        check_positive_int("max_code_output_characters", self.max_code_output_characters)


def get_sandbox(sandbox_type: str = "local") -> Sandbox:
    """rlserve's sandbox (a local child process per run; see `rlserve.sandbox`)."""
    if sandbox_type != "local":
        raise ParamError("sandbox_type", f"sandbox_type: only 'local' exists, got {sandbox_type!r}")
    return Sandbox()


def get_code_execution_model(
    server_type: str = "native",
    code_execution: dict[str, Any] | None = None,
    sandbox: Sandbox | None = None,
    backend: InferenceBackend | None = None,
    host: str | None = None,
    port: str | int | None = None,
    base_url: str | None = None,
    model: str | None = None,
) -> CodeExecutionModel:
    """A model that runs the code it writes. `backend` wins; else `server_type` "native"
    is an in-process engine on `model` (None: bundled), and "trtllm" | "vllm" | "sglang" |
    "openai" | "rlserve" a server at `base_url` (default http://host:port/v1's root,
    NeMo-Skills' 127.0.0.1:5000) with `model`'s tokenizer."""
    try:
        config = CodeExecutionConfig(**(code_execution or {}))
    except TypeError as exc:
        raise ParamError("code_execution", f"code_execution: {exc}") from None
    if backend is None:
        backend = _backend(server_type, host, port, base_url, model)
    return CodeExecutionModel(backend, sandbox if sandbox is not None else Sandbox(), config)


def _backend(
    server_type: str, host: str | None, port: str | int | None, base_url: str | None, model: Any
) -> InferenceBackend:
    if server_type == "native":
        return create_backend("native", model=model)
    if server_type not in REMOTE_DIALECTS:
        known = ", ".join(["native", *REMOTE_DIALECTS])
        raise ParamError("server_type", f"server_type must be one of {known}, got {server_type!r}")
    url = base_url or f"http://{host or DEFAULT_HOST}:{port or DEFAULT_PORT}"
    return create_backend("remote", base_url=url, model=model, dialect=REMOTE_DIALECTS[server_type])


@dataclass
class CodeExecutionModel:
    """`generate` as NeMo-Skills' `CodeExecutionWrapper.generate`."""

    backend: InferenceBackend
    sandbox: Sandbox
    config: CodeExecutionConfig = field(default_factory=CodeExecutionConfig)

    def generate(
        self,
        prompts: list[str],
        code_begin: str,
        code_end: str,
        code_output_begin: str = OUTPUT_TAGS[0],
        code_output_end: str = OUTPUT_TAGS[1],
        code_output_format: str = "qwen",
        tokens_to_generate: int = 512,
        temperature: float = 0.0,
        top_p: float = 0.95,
        top_k: int = 0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        random_seed: int = 0,
        stop_phrases: list[str] | None = None,
        remove_stop_phrases: bool = True,
    ) -> list[dict[str, Any]]:
        """One {"generation": text after the prompt, code outputs included,
        "num_generated_tokens": n} per prompt, in order; text prompts are sent as they
        are (render them with a prompt template first). `top_k` 0 means off."""
        if not isinstance(prompts, list) or not all(isinstance(p, str) and p for p in prompts):
            raise ParamError("prompts", "prompts must be a list of non-empty strings")
        if (code_output_begin.strip(), code_output_end.strip()) != tuple(
            t.strip() for t in OUTPUT_TAGS
        ):
            raise ParamError(
                "code_output_begin",
                f"code_output_begin / code_output_end: rlserve's TIR mode wraps code output "
                f"in {OUTPUT_TAGS!r}, got "
                f"{(code_output_begin, code_output_end)!r}",
            )
        stops = list(stop_phrases or [])
        params = SamplingParams(
            temperature=temperature,
            top_p=top_p,
            top_k=-1 if top_k == 0 else top_k,
            min_p=min_p,
            repetition_penalty=repetition_penalty,
            max_tokens=tokens_to_generate,
            seed=random_seed,
            stop=stops,
        )
        tir = TIRConfig(
            code_begin,
            code_end,
            self.config.code_execution_timeout,
            max(16, self.config.max_code_output_characters),
        )
        settings = BatchSettings(params, self.config.max_code_executions + 1, tir)
        batch = [EvalPrompt([{"role": "user", "content": p}], p) for p in prompts]
        trajs = run_batch(self.backend, batch, 1, settings, sandbox=self.sandbox)
        results = []
        for traj in trajs:
            text = completion_text(self.backend.tokenizer, traj)
            if remove_stop_phrases:
                text = _trim_after_stop_phrases(text, stops)
            results.append({"generation": text, "num_generated_tokens": sum(traj.loss_mask)})
        return results


def _trim_after_stop_phrases(text: str, stop_phrases: list[str]) -> str:
    """`text` up to its first stop phrase (NeMo-Skills' `trim_after_stop_phrases`)."""
    cuts = [text.find(s) for s in stop_phrases if s and s in text]
    return text[: min(cuts)] if cuts else text
