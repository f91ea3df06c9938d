"""rlserve: an LLM inference engine for reinforcement-learning post-training.

Names are imported lazily so that `import rlserve.client` (HTTP only) never imports torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlserve.config import EngineConfig
    from rlserve.engine import Engine, EngineCore
    from rlserve.outputs import CompletionOutput, RequestOutput
    from rlserve.sampling_params import SamplingParams

_EXPORTS = {
    "Engine": "rlserve.engine",
    "EngineCore": "rlserve.engine",
    "EngineConfig": "rlserve.config",
    "CompletionOutput": "rlserve.outputs",
    "RequestOutput": "rlserve.outputs",
    "SamplingParams": "rlserve.sampling_params",
    "InferenceModule": "rlserve.compat.inference_module",
    "create_inference_module": "rlserve.compat.inference_module",
    "GenerationResult": "rlserve.compat.generation_result",
    "ToolCall": "rlserve.tools",  # seed 001: ToolCall(name, arguments, raw_text, start, end)
    "InferenceEngine": "rlserve.compat.inference_engine",  # seed 003
    "GenerationOutput": "rlserve.compat.generation_output",
}
__all__ = [
    "CompletionOutput",
    "Engine",
    "EngineConfig",
    "EngineCore",
    "GenerationOutput",
    "GenerationResult",
    "InferenceEngine",
    "InferenceModule",
    "RequestOutput",
    "SamplingParams",
    "ToolCall",
    "create_inference_module",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rlserve' has no attribute {name!r}")
