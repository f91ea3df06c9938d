"""The control plane's state: policy versions, LoRA adapters, the pause mode, staleness.

`Policy` holds which weights generate and the rules about them; `EngineCore` applies those
rules to its requests and scheduler. Every weight update (base weights or an adapter that
becomes the policy) makes a new policy version; each generated token records the version
that produced it, and prefix-cache entries are keyed by the weights that computed them.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable

from rlserve._checks import ParamError, is_int
from rlserve.engine.sequence import Sequence
from rlserve.models.lora import LoRAAdapter
from rlserve.pause_mode import PauseMode

PAUSE_MODES = tuple(mode.value for mode in PauseMode)


class AdapterInUse(ValueError):
    """`unload_lora` of an adapter that running or waiting requests still use."""


class Policy:
    """Versions, adapters and pause mode of one engine."""

    def __init__(self) -> None:
        self.version = 0  # the policy version: bumped by every update
        self.base_version = 0  # policy version of the current base weights
        self.adapters: dict[str, LoRAAdapter] = {}
        self._adapter_loads = itertools.count(1)  # a LoRAAdapter.load_id per load
        self.paused: PauseMode | None = None  # None, or the pause mode in force

    def check_version(self, version: int | None) -> int:
        """The policy version an update to `version` would set (None = the next one);
        ValueError unless it is an integer above the current one. Changes nothing."""
        if version is None:
            return self.version + 1
        if not is_int(version) or version <= self.version:
            raise ParamError(
                "version",
                f"version must be an integer > the current policy version {self.version}, "
                f"got {version!r}",
            )
        return version

    def check_staleness_args(self, min_version: object, max_staleness: object) -> None:
        """`add_request`'s `min_policy_version` and `max_staleness`: non-negative integers
        or None, and the weights at least `min_version`."""
        for name, value in (("min_policy_version", min_version), ("max_staleness", max_staleness)):
            if value is not None and (not is_int(value) or value < 0):  # type: ignore[operator]
                raise ParamError(name, f"{name} must be a non-negative integer, got {value!r}")
        if min_version is not None and self.version < min_version:  # type: ignore[operator]
            raise ValueError(
                f"request needs policy version >= {min_version} but the engine's "
                f"weights are version {self.version}"
            )

    def stale_reason(self, start_version: int, max_staleness: int | None) -> str | None:
        """Why a request that started at `start_version` must be aborted now, if it must:
        the policy moved on by more than its `max_staleness` versions."""
        behind = self.version - start_version
        if max_staleness is None or behind <= max_staleness:
            return None
        return f"stale: policy moved {behind} versions (max_staleness {max_staleness})"

    def check_adapter(self, lora_name: str | None) -> None:
        if lora_name is not None and lora_name not in self.adapters:
            raise ValueError(
                f"unknown LoRA adapter {lora_name!r}; loaded: {sorted(self.adapters) or 'none'}"
            )

    def add_adapter(self, adapter: LoRAAdapter, new_policy: bool) -> bool:
        """Register a freshly loaded adapter (a reload replaces the old one); True when it
        makes a new policy version: a reload, or `new_policy`."""
        # Its KV is cached under this id: a later adapter of the same name (a reload, or a
        # load after an unload) never reuses it.
        adapter.load_id = next(self._adapter_loads)
        bump = new_policy or adapter.name in self.adapters
        adapter.version = self.check_version(None) if bump else self.version
        self.adapters[adapter.name] = adapter
        return bump

    def remove_adapter(self, name: str, users: list[str]) -> None:
        """Forget adapter `name`; `users` are the ids of the requests that still use it."""
        if name not in self.adapters:
            raise ValueError(f"unknown LoRA adapter {name!r}")
        if users:
            raise AdapterInUse(
                f"adapter {name!r} is in use by {len(users)} request(s); abort "
                "them or let them finish first"
            )
        del self.adapters[name]

    def pause(self, mode: PauseMode | str) -> PauseMode:
        """Set the pause mode in force; ValueError for anything but keep / wait / abort."""
        try:
            self.paused = PauseMode(mode)
        except ValueError:
            raise ParamError(
                "mode", f"pause mode must be one of {PAUSE_MODES}, got {mode!r}"
            ) from None
        return self.paused

    def cache_key(self, seq: Sequence) -> Hashable:
        """Prefix-cache entries are valid only for the weights that computed them."""
        if seq.lora_name is None:
            return (self.base_version, None, None)
        return (self.base_version, seq.lora_name, self.adapters[seq.lora_name].load_id)
