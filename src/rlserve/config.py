"""Engine configuration, validated once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

BUNDLED_MODEL = Path(__file__).parent / "assets"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_KV_CACHE_MEMORY = 512 * 1024**2


@dataclass
class EngineConfig:
    """Everything that shapes an Engine. `model=None` means the bundled tiny model.

    The KV cache holds `num_blocks` blocks of `block_size` tokens; when `num_blocks` is not
    given it is derived from `kv_cache_memory` bytes (default 512 MiB, capped at what
    `max_num_seqs` full-length sequences could use). Memory is never guessed from the device.
    """

    model: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None  # default: the model's max_position_embeddings
    block_size: int = 16
    num_blocks: int | None = None
    kv_cache_memory: int | None = None
    enable_prefix_caching: bool = True
    seed: int = 0  # seeds the per-request noise of requests that bring no seed
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.model is not None:
            path = Path(self.model).expanduser()
            if not path.is_dir():
                raise ValueError(f"model path {self.model!r} is not a local checkpoint folder "
                                 "(rlserve loads Hugging Face checkpoints from disk)")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"device {self.device!r} is not a torch device: {e}") from None
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size"):
            _positive(name, getattr(self, name))
        for name in ("max_model_len", "num_blocks", "kv_cache_memory"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))

    @property
    def model_path(self) -> Path:
        return Path(self.model).expanduser().resolve() if self.model else BUNDLED_MODEL

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
