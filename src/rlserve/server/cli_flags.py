"""`rlserve serve` flags, generated from the config dataclasses' fields.

Each field is one flag, `--field-name`; its help text and any `choices` come from the
field's metadata, its default from the dataclass only (metadata may rename the flag and
give its value type, e.g. a JSON string for a config object). A bool defaulting to False is a
`store_true` switch, one defaulting to True a `--x/--no-x` pair. An EngineConfig field
whose metadata names a `server_flag` is set by that ServerConfig flag instead.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, Field, fields
from typing import Any

from rlserve.config import FLAG_NAME, FLAG_TYPE, SERVER_FLAG

_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}


def flag_name(f: Field[Any]) -> str:
    return f.metadata.get(FLAG_NAME) or "--" + f.name.replace("_", "-")


def value_type(f: Field[Any]) -> type:
    """int / float / str / bool from an annotation such as "int | None"."""
    if FLAG_TYPE in f.metadata:
        return f.metadata[FLAG_TYPE]
    annotation = f.type if isinstance(f.type, str) else f.type.__name__
    return _TYPES[annotation.split("|")[0].strip()]


def has_own_flag(f: Field[Any]) -> bool:
    return SERVER_FLAG not in f.metadata


def add_flags(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One flag per field of `config_class` (fields set by another flag excepted)."""
    for f in fields(config_class):
        if has_own_flag(f):
            parser.add_argument(flag_name(f), dest=f.name, **flag_options(f))


def flag_options(f: Field[Any]) -> dict[str, Any]:
    default = None if f.default is MISSING else f.default
    help_text = f.metadata["help"]
    kind = value_type(f)
    if kind is bool:
        action = argparse.BooleanOptionalAction if default else "store_true"
        return {"action": action, "default": default, "help": help_text}
    if default is not None:
        help_text += " (default: %(default)s)"
    options: dict[str, Any] = {"type": kind, "default": default, "help": help_text}
    if "choices" in f.metadata:
        options["choices"] = f.metadata["choices"]
        options["type"] = str.upper  # --log-level debug works too
    return options


def values_of(args: argparse.Namespace, config_class: type) -> dict[str, Any]:
    """The parsed values of `config_class`'s own flags, by field name."""
    return {f.name: getattr(args, f.name) for f in fields(config_class) if has_own_flag(f)}
