"""The engine: requests -> tokens (scheduler, paged KV + prefix cache, runner, sampler).

`EngineCore` is the streaming core and control plane the server and rollouts drive;
`Engine` adds the convenience loops (`generate`, `chat`, `score`, `logits`).
"""

from rlserve.engine.core import EngineCore
from rlserve.engine.engine import Engine
from rlserve.engine.policy import AdapterInUse

__all__ = ["AdapterInUse", "Engine", "EngineCore"]
