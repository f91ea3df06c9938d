"""rlserve: an LLM inference engine for reinforcement-learning post-training."""

from rlserve.config import EngineConfig
from rlserve.engine import Engine
from rlserve.outputs import CompletionOutput, RequestOutput
from rlserve.sampling_params import SamplingParams

__all__ = ["CompletionOutput", "Engine", "EngineConfig", "RequestOutput", "SamplingParams"]
__version__ = "0.1.0"
