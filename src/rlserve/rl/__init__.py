"""rl layer (see docs/ARCHITECTURE.md): multi-turn trajectories with loss masks for RL training.

`rollout` / `rollout_batch` run conversations with tools (or tool-integrated reasoning
with a code sandbox) through an `Engine` or a `Client`, token in and token out, and
return `Trajectory` objects: prompt and completion ids, aligned logprobs, loss mask,
weight versions and segments. The policy is reached through `rlserve.backends`; tool
calls are parsed, formatted and executed by `rlserve.tools`.
"""

from rlserve.backends import EngineBackend, InferenceBackend, RemoteBackend, Sample
from rlserve.rl.chat_turns import TemplateError
from rlserve.rl.loop import RolloutWatch
from rlserve.rl.rollout import RolloutConfig, rollout, rollout_batch
from rlserve.rl.tir import TIRConfig
from rlserve.rl.trajectory import Segment, Trajectory
from rlserve.tools import ToolError

# The backends' names from when they lived in this package; public, so they keep working.
EngineGenerator, ClientGenerator, TokenGenerator = EngineBackend, RemoteBackend, InferenceBackend

__all__ = [
    "ClientGenerator",
    "EngineGenerator",
    "RolloutConfig",
    "RolloutWatch",
    "Sample",
    "Segment",
    "TIRConfig",
    "TemplateError",
    "TokenGenerator",
    "ToolError",
    "Trajectory",
    "rollout",
    "rollout_batch",
]
