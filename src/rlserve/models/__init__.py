"""Model definitions (Llama, Qwen2, Qwen3) and safetensors weight loading."""

from rlserve.models.config import SUPPORTED_ARCHITECTURES, ModelConfig
from rlserve.models.llama import LlamaModel
from rlserve.models.loader import load_model, load_weights

__all__ = ["SUPPORTED_ARCHITECTURES", "LlamaModel", "ModelConfig", "load_model", "load_weights"]
