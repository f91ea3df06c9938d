"""Memory release for colocated RL: the trainer borrows the accelerator between rollouts.

`release(engine, weights)` frees the KV cache (every block free, the prefix cache dropped:
its contents are forgotten) and, with `weights`, on CUDA moves the model's parameters and
buffers to host memory; `resume(engine, tags)` allocates the KV cache again and moves the
weights back. The weights are always kept: vLLM's sleep level 2 discards them, rlserve keeps
them on host, so a resume without a weight update generates exactly as before. On CPU the
weights already live in host memory and stay where they are; the KV cache is freed, and the
allocator is asked to give its pages back to the OS (`malloc_trim`), so the RSS drops.

While anything is released nothing may be scheduled: `release` pauses the engine ("keep")
unless a pause is in force already, and `resume` lifts only that pause, once everything is
back. `pause_in_force(engine)` is what `EngineCore.step` and `EngineCore.paused` should read,
so that an operator's resume in between still schedules nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from rlserve._checks import ParamError
from rlserve.pause_mode import PauseMode

if TYPE_CHECKING:
    from rlserve.engine.core import EngineCore

WEIGHTS = "weights"
KV_CACHE = "kv_cache"
MEMORY_TAGS = (WEIGHTS, KV_CACHE)  # resumed in this order: a weight update may come between


class MemoryBusy(ValueError):
    """A release while requests run (or, with `check_idle`, while any is queued)."""


@dataclass
class MemoryState:
    """What one engine has released, and whether the pause in force is the release's."""

    released: set[str] = field(default_factory=set)
    paused_by_release: bool = False


@dataclass(frozen=True)
class MemoryReport:
    """What a `release` / `resume` did. `changed`: the tags this call released or resumed;
    `released`: those released after it; `kv_cache_bytes` / `weight_bytes`: the bytes it
    freed or allocated (weights: moved between device and host; 0 when they stay put)."""

    changed: tuple[str, ...]
    released: tuple[str, ...]
    kv_cache_bytes: int
    weight_bytes: int
    weights_device: str  # where the weights are now

    def as_dict(self) -> dict[str, object]:
        return {
            "changed": list(self.changed),
            "released": list(self.released),
            "kv_cache_bytes": self.kv_cache_bytes,
            "weight_bytes": self.weight_bytes,
            "weights_device": self.weights_device,
        }


_STATES: weakref.WeakKeyDictionary[EngineCore, MemoryState] = weakref.WeakKeyDictionary()


def state_of(engine: EngineCore) -> MemoryState:
    """The memory state of `engine` (nothing released until the first `release`)."""
    return _STATES.setdefault(engine, MemoryState())


def released_tags(engine: EngineCore) -> tuple[str, ...]:
    """The released memory kinds, in MEMORY_TAGS order (empty: all resident)."""
    released = state_of(engine).released
    return tuple(tag for tag in MEMORY_TAGS if tag in released)


def is_released(engine: EngineCore) -> bool:
    """Whether any memory is released (the engine schedules nothing until `resume`)."""
    return bool(state_of(engine).released)


def pause_in_force(engine: EngineCore) -> PauseMode | None:
    """The engine's pause mode, "keep" whatever it is while memory is released."""
    return PauseMode.KEEP if is_released(engine) else engine.policy.paused


def parse_tags(tags: object, param: str = "tags") -> tuple[str, ...]:
    """`tags` (None or empty: all) as known memory kinds; ParamError otherwise. SGLang's
    "cuda_graph" is accepted and means nothing here (rlserve captures no CUDA graphs)."""
    if tags is None:
        return MEMORY_TAGS
    if not isinstance(tags, list | tuple) or not all(isinstance(t, str) for t in tags):
        raise ParamError(param, f"{param} must be a list of strings, got {tags!r}")
    unknown = sorted(set(tags) - {*MEMORY_TAGS, "cuda_graph"})
    if unknown:
        raise ParamError(param, f"unknown {param} {unknown}; known: {[*MEMORY_TAGS]}")
    kinds = tuple(tag for tag in MEMORY_TAGS if tag in tags)
    return kinds if kinds or "cuda_graph" in tags else MEMORY_TAGS


def check_idle(engine: EngineCore) -> None:
    """MemoryBusy unless no request is running or queued (SGLang's rule for a release)."""
    if engine.has_unfinished_requests():
        raise MemoryBusy(
            "memory can only be released when no request is running or queued: "
            "abort them or let them finish first"
        )


def release(
    engine: EngineCore, weights: bool, kv_cache: bool = True, recompute: bool = False
) -> MemoryReport:
    """Free the KV cache (unless not `kv_cache`), and with `weights` move them to host
    (CUDA only). MemoryBusy while requests run, unless `recompute`: then they drop their KV
    and recompute it once resumed. A weights-only release keeps running requests frozen."""
    kinds = {tag for tag, wanted in ((WEIGHTS, weights), (KV_CACHE, kv_cache)) if wanted}
    scheduler = engine.scheduler
    if scheduler.running and KV_CACHE in kinds:
        if not recompute:
            raise MemoryBusy(
                f"{len(scheduler.running)} request(s) are running: pause generation "
                "(abort or wait) or let them finish before releasing memory"
            )
        scheduler.recompute_running()
    state = state_of(engine)
    kv_bytes = _free_kv(engine) if KV_CACHE in kinds - state.released else 0
    weight_bytes = _move_weights(engine, torch.device("cpu")) if WEIGHTS in kinds else 0
    changed = kinds - state.released
    state.released |= kinds
    if state.released and engine.policy.paused is None:
        engine.pause(PauseMode.KEEP)
        state.paused_by_release = True
    _give_back_memory(engine.device)
    return _report(engine, changed, kv_bytes, weight_bytes)


def resume(engine: EngineCore, tags: Iterable[str] | None = None) -> MemoryReport:
    """Re-allocate the released `tags` (None: all): the weights back on their device first,
    then a zeroed KV cache. Once nothing is released, the pause `release` set is lifted.
    A tag that is not released is left as it is."""
    wanted = set(MEMORY_TAGS if tags is None else tags)
    if not wanted <= set(MEMORY_TAGS):
        unknown = sorted(wanted - set(MEMORY_TAGS))
        raise ParamError("tags", f"unknown tags {unknown}; known: {[*MEMORY_TAGS]}")
    state = state_of(engine)
    changed = wanted & state.released
    weight_bytes = _move_weights(engine, engine.device) if WEIGHTS in changed else 0
    kv_bytes = 0
    if KV_CACHE in changed:
        engine.runner.allocate_kv_cache()
        kv_bytes = engine.runner.kv_cache_bytes
    state.released -= changed
    if not state.released and state.paused_by_release:
        if engine.policy.paused == PauseMode.KEEP:
            engine.resume()
        state.paused_by_release = False
    return _report(engine, changed, kv_bytes, weight_bytes)


def _free_kv(engine: EngineCore) -> int:
    """Every block free and forgotten, then the tensors dropped; the bytes freed."""
    blocks = engine.block_manager
    if blocks.num_used_blocks:
        raise MemoryBusy(f"{blocks.num_used_blocks} KV blocks are still in use")
    blocks.reset_prefix_cache()
    blocks.pending_copies.clear()
    return engine.runner.free_kv_cache()


def _move_weights(engine: EngineCore, device: torch.device) -> int:
    """Move parameters and buffers to `device` on CUDA engines (on CPU they stay); bytes."""
    model = engine.model
    if engine.device.type == "cpu" or _weights_device(engine) == device:
        return 0
    tensors = [*model.parameters(), *model.buffers()]
    moved = sum(t.numel() * t.element_size() for t in tensors)
    model.to(device)
    return moved


def _weights_device(engine: EngineCore) -> torch.device:
    return next(engine.model.parameters()).device


def _give_back_memory(device: torch.device) -> None:
    """Hand freed memory back: CUDA's cached blocks to the driver, the C heap's free pages
    to the OS (glibc keeps freed heap memory otherwise, and the RSS would not drop)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    trim = getattr(ctypes.CDLL(libc_name), "malloc_trim", None)
    if trim is not None:
        trim(0)


def _report(
    engine: EngineCore, changed: set[str], kv_bytes: int, weight_bytes: int
) -> MemoryReport:
    return MemoryReport(
        changed=tuple(tag for tag in MEMORY_TAGS if tag in changed),
        released=released_tags(engine),
        kv_cache_bytes=kv_bytes,
        weight_bytes=weight_bytes,
        weights_device=str(_weights_device(engine)),
    )
