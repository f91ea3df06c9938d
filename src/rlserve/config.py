"""Engine configuration, validated once. Torch is imported only to check and use a config,
so that reading the fields (e.g. to build `rlserve serve` flags) stays cheap."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlserve._checks import ParamError, check_int, check_number, check_positive_int

if TYPE_CHECKING:
    import torch

BUNDLED_MODEL = Path(__file__).parent / "assets"
DTYPES = ("float32", "bfloat16", "float16", "auto")
DEFAULT_KV_CACHE_MEMORY = 512 * 1024**2
QUANTIZATIONS = ("int8",)  # weight formats `quantization` may name (None: as loaded)
SERVER_FLAG = "server_flag"  # metadata: the `rlserve serve` flag that sets this field
FLAG_NAME = "flag_name"  # metadata: this field's own flag, when not --field-name
FLAG_TYPE = "flag_type"  # metadata: the flag's value type, when not the annotation's
SPECULATIVE_METHODS = ("ngram", "draft")


@dataclass(frozen=True)
class SpeculativeConfig:
    """Speculative decoding (vLLM's `speculative_config` keys). A proposer guesses up to
    `num_speculative_tokens` tokens per sequence; the target verifies them in one forward
    and keeps a guess only where it equals the token the target's own sampler picks, so
    outputs are exactly those of decoding without speculation.

    "ngram" (prompt lookup) matches the last `prompt_lookup_max`..`prompt_lookup_min`
    tokens earlier in the prompt and output and proposes what followed; "draft" runs the
    smaller checkpoint `draft_model` (same tokenizer) with its own paged KV
    (`draft_num_blocks` blocks). Speculation turns itself off while more than
    `max_batch_size` sequences decode or the running acceptance is below `min_acceptance`.
    """

    method: str
    num_speculative_tokens: int = 4
    prompt_lookup_max: int = 4
    prompt_lookup_min: int = 1
    draft_model: str | None = None
    draft_num_blocks: int | None = None
    max_batch_size: int = 8
    min_acceptance: float = 0.3

    def __post_init__(self) -> None:
        if self.method not in SPECULATIVE_METHODS:
            raise ParamError(
                "method",
                f"speculative method must be one of {list(SPECULATIVE_METHODS)}, "
                f"got {self.method!r}",
            )
        check_int("num_speculative_tokens", self.num_speculative_tokens, minimum=1, maximum=16)
        check_positive_int("prompt_lookup_min", self.prompt_lookup_min)
        check_int("prompt_lookup_max", self.prompt_lookup_max, minimum=self.prompt_lookup_min)
        check_positive_int("max_batch_size", self.max_batch_size)
        check_number("min_acceptance", self.min_acceptance, finite=True)
        if not 0.0 <= self.min_acceptance <= 1.0:
            raise ParamError(
                "min_acceptance", f"min_acceptance must be in [0, 1], got {self.min_acceptance}"
            )
        if self.draft_num_blocks is not None:
            check_positive_int("draft_num_blocks", self.draft_num_blocks)
        if self.method == "draft" and not self.draft_model:
            raise ParamError("draft_model", 'speculative method "draft" needs draft_model')
        if self.draft_model is not None and not Path(self.draft_model).expanduser().is_dir():
            raise ParamError(
                "draft_model", f"draft_model {self.draft_model!r} is not a local checkpoint folder"
            )

    @classmethod
    def parse(cls, value: SpeculativeConfig | dict[str, Any] | str) -> SpeculativeConfig:
        """From a config, a dict or a JSON object string; vLLM's "model" names draft_model.
        Unknown keys are refused by name."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise ParamError("speculative", f"speculative config is not JSON: {e}") from None
        if not isinstance(value, dict):
            raise ParamError("speculative", f"speculative config must be an object, got {value!r}")
        value = dict(value)
        if "model" in value:
            if "draft_model" in value:
                raise ParamError("model", 'give "model" or "draft_model", not both')
            value["draft_model"] = value.pop("model")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ParamError(
                unknown[0],
                f"unknown speculative config key(s) {unknown}; known: {sorted(known | {'model'})}",
            )
        if "method" not in value:
            raise ParamError("method", "speculative config needs a method")
        return cls(**value)


@dataclass
class EngineConfig:
    """Everything that shapes an Engine. `model=None` means the bundled tiny model.

    The KV cache holds `num_blocks` blocks of `block_size` tokens; when `num_blocks` is not
    given it is derived from `kv_cache_memory` bytes (default 512 MiB, capped at what
    `max_num_seqs` full-length sequences could use). Memory is never guessed from the device.
    Each field's `help` metadata is its `rlserve serve` flag's help text.
    """

    model: str | None = field(
        default=None,
        metadata={
            "help": "local checkpoint folder (None: the bundled model)",
            SERVER_FLAG: "--model",
        },
    )
    dtype: str = field(
        default="float32",
        metadata={
            "help": "engine dtype; auto: bfloat16 where the device has bf16 arithmetic "
            "(CPUs with AVX512-BF16 / AMX, CUDA GPUs that support it), else float32"
        },
    )
    device: str = field(default="cpu", metadata={"help": "engine device"})
    max_num_seqs: int = field(
        default=256,
        metadata={"help": "most sequences per engine step", SERVER_FLAG: "--max-batch"},
    )
    max_num_batched_tokens: int = field(
        default=2048, metadata={"help": "most tokens (prefill included) per engine step"}
    )
    max_model_len: int | None = field(
        default=None, metadata={"help": "context length (default: the model's)"}
    )
    block_size: int = field(default=16, metadata={"help": "tokens per KV-cache block"})
    num_blocks: int | None = field(
        default=None, metadata={"help": "KV-cache blocks (default: from memory)"}
    )
    kv_cache_memory: int | None = field(
        default=None,
        metadata={"help": "KV-cache bytes when --num-blocks is not given (default: 512 MiB)"},
    )
    enable_prefix_caching: bool = field(
        default=True, metadata={"help": "reuse the KV of prompt prefixes seen before"}
    )
    seed: int = field(
        default=0, metadata={"help": "seeds the noise of requests that bring no seed"}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "run the checkpoint's own model and tokenizer code",
            SERVER_FLAG: "--trust-remote-code",
        },
    )
    quantization: str | None = field(
        default=None,
        metadata={
            "help": "int8: decoder linear weights in int8 with per-output-channel scales "
            "(embeddings, head and logits stay float; weight updates re-quantise)"
        },
    )
    speculative: SpeculativeConfig | None = field(
        default=None,
        metadata={
            "help": 'speculative decoding as JSON, vLLM\'s keys: {"method": "ngram" | '
            '"draft", "num_speculative_tokens": 4, "draft_model": PATH, ...} (outputs '
            "unchanged; off by default)",
            FLAG_NAME: "--speculative-config",
            FLAG_TYPE: str,
        },
    )

    def __post_init__(self) -> None:
        import torch

        if self.model is not None:
            path = Path(self.model).expanduser()
            if not path.is_dir():
                raise ValueError(
                    f"model path {self.model!r} is not a local checkpoint folder "
                    "(rlserve loads Hugging Face checkpoints from disk)"
                )
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"device {self.device!r} is not a torch device: {e}") from None
        if self.dtype == "auto":
            self.dtype = auto_dtype(self.device)
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            raise ValueError(
                f"quantization must be None or one of {list(QUANTIZATIONS)}, "
                f"got {self.quantization!r}"
            )
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size"):
            check_positive_int(name, getattr(self, name))
        for name in ("max_model_len", "num_blocks", "kv_cache_memory"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        if self.speculative is not None:
            self.speculative = SpeculativeConfig.parse(self.speculative)

    @property
    def model_path(self) -> Path:
        return Path(self.model).expanduser().resolve() if self.model else BUNDLED_MODEL

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.dtype)


def auto_dtype(device: str) -> str:
    """What `dtype="auto"` means on `device`: bfloat16 where it computes bf16 natively."""
    import torch

    kind = torch.device(device).type
    if kind == "cuda":
        return (
            "bfloat16"
            if torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            else "float32"
        )
    return "bfloat16" if kind == "cpu" and cpu_has_bf16_dot() else "float32"


def cpu_has_bf16_dot() -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512-BF16; every AMX CPU has
    them too). Not `torch.ops.mkldnn._is_mkldnn_bf16_supported()`: that is true on any
    AVX-512 CPU, where oneDNN emulates bf16 and runs slower than fp32."""
    import torch

    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if probe is not None:
        return bool(probe())
    try:  # an older torch: the kernel's view of the CPU
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
