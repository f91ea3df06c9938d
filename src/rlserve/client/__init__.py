"""HTTP clients for rlserve and other OpenAI-compatible servers (vLLM, SGLang).

Imports neither torch nor the rest of rlserve (only its torch-free base modules:
`_checks`, `pause_mode`, `chat_messages`), so trainers and rollout workers can use it
anywhere. One core builds every request and parses every reply (`endpoints`, `admin`,
`flows`); `Client` and `AsyncClient` only perform its effects (`effects`). Responses are
plain dicts that carry training data under `rlserve_train`.

The seed systems' client shapes sit on top: NexRL's `InferenceServiceClient`,
`OpenAIInferenceServiceClient` and `RemoteApiInferenceServiceClient` (seed 000, replies
also carry `nexrl_train`), and the RL server's `InferenceClient` (seed 002).
"""

from rlserve.client.async_client import AsyncClient
from rlserve.client.errors import APIConnectionError, APIError, APIStatusError, APITimeoutError
from rlserve.client.inference_client import InferenceClient
from rlserve.client.nexrl_data import NEXRL_TRAIN_KEY
from rlserve.client.payloads import TRAINING_EXTRA_BODY
from rlserve.client.retry import RetryPolicy
from rlserve.client.service_base import InferenceServiceClient
from rlserve.client.service_clients import (
    OpenAIInferenceServiceClient,
    RemoteApiInferenceServiceClient,
)
from rlserve.client.service_config import InferenceServiceConfig
from rlserve.client.sync_client import Client
from rlserve.client.tokenizer import apply_chat_template, hf_tokenizer
from rlserve.client.training_data import (
    TRAIN_KEY,
    chat_training_data,
    completion_training_data,
    generate_training_data,
    parse_token_id,
)
from rlserve.client.weight_sync import WeightSyncController

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "Client",
    "InferenceClient",
    "InferenceServiceClient",
    "InferenceServiceConfig",
    "NEXRL_TRAIN_KEY",
    "OpenAIInferenceServiceClient",
    "RemoteApiInferenceServiceClient",
    "RetryPolicy",
    "TRAINING_EXTRA_BODY",
    "TRAIN_KEY",
    "WeightSyncController",
    "apply_chat_template",
    "chat_training_data",
    "completion_training_data",
    "generate_training_data",
    "hf_tokenizer",
    "parse_token_id",
]
