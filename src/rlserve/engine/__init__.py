"""The engine core: requests -> tokens (scheduler, paged KV + prefix cache, runner, sampler)."""

from rlserve.engine.engine import Engine

__all__ = ["Engine"]
