"""Reading seed 003's config: a YAML file or a mapping into an `InferenceEngineConfig`.

Every key is checked against the dataclass fields (plus the VERL keys that have no effect
here); an unknown key is a `ParamError` naming its dotted path. OmegaConf interpolations
(`${...}`) are not resolved: such a value is an error naming its key.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from rlserve._checks import ParamError
from rlserve.compat.engine_config import (
    MULTI_TURN_NO_EFFECT,
    ROLLOUT_NO_EFFECT,
    InferenceEngineConfig,
    MultiTurnOptions,
    RolloutOptions,
)

ConfigSource = str | os.PathLike | Mapping[str, Any]


def load_engine_config(source: ConfigSource) -> InferenceEngineConfig:
    """The config in YAML file `source` (a path), or in mapping `source` (a dict or an
    OmegaConf DictConfig). Relative paths in a file's config are looked up next to it."""
    if isinstance(source, InferenceEngineConfig):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        return _config(read_yaml(path, "config"), str(path.resolve().parent))
    if isinstance(source, Mapping):
        return _config(source, None)
    raise ParamError(
        "config",
        "config must be a YAML file path or a mapping (dict / DictConfig), "
        f"got {type(source).__name__}",
    )


def read_yaml(path: Path, key: str) -> Any:
    """The YAML document at `path`; errors name `key` (the setting that gave the path)."""
    if not path.is_file():
        raise ParamError(key, f"{key}: no such file: {str(path)!r}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamError(key, f"{key}: {str(path)!r} is not valid YAML: {exc}") from None


def _config(data: Any, base_dir: str | None) -> InferenceEngineConfig:
    if not isinstance(data, Mapping):
        raise ParamError("config", f"config: the top level must be a mapping, got {data!r:.80}")
    values = _values(InferenceEngineConfig, data, "", (), {"rollout": _rollout})
    return InferenceEngineConfig(**values, base_dir=base_dir)


def _rollout(data: Any) -> RolloutOptions:
    values = _values(
        RolloutOptions,
        _mapping(data, "rollout"),
        "rollout.",
        ROLLOUT_NO_EFFECT,
        {"multi_turn": _multi},
    )
    return RolloutOptions(**values)


def _multi(data: Any) -> MultiTurnOptions:
    if isinstance(data, bool):  # VERL's older `multi_turn: True`
        return MultiTurnOptions(enable=data)
    prefix = "rollout.multi_turn."
    return MultiTurnOptions(
        **_values(MultiTurnOptions, _mapping(data, prefix[:-1]), prefix, MULTI_TURN_NO_EFFECT, {})
    )


def _mapping(data: Any, key: str) -> Mapping[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ParamError(key, f"{key} must be a mapping, got {data!r:.80}")
    return data


def _values(
    cls: type,
    data: Mapping[str, Any],
    prefix: str,
    no_effect: tuple[str, ...],
    sections: dict[str, Callable[[Any], Any]],
) -> dict[str, Any]:
    known = [f.name for f in fields(cls) if f.name != "base_dir"]
    values: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key in no_effect:
            continue
        if key not in known:
            raise ParamError(
                path, f"unknown config key {path!r}; the keys here are {', '.join(known)}"
            )
        values[key] = sections[key](value) if key in sections else _plain(path, value)
    return values


def _plain(path: str, value: Any) -> Any:
    """`value` as plain Python (DictConfig / ListConfig copied into dicts and lists)."""
    if isinstance(value, str) and "${" in value:
        raise ParamError(
            path, f"{path}: interpolations ({value!r}) are not resolved; write the value itself"
        )
    if isinstance(value, Mapping):
        return {str(k): _plain(f"{path}.{k}", v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [_plain(f"{path}[{i}]", v) for i, v in enumerate(value)]
    return value
