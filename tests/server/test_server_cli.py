"""`rlserve serve` flags are generated from ServerConfig and EngineConfig fields."""

from __future__ import annotations

from dataclasses import MISSING, fields

import pytest

from rlserve.config import SERVER_FLAG, EngineConfig
from rlserve.server.cli import build_parser, config_from_args, engine_options
from rlserve.server.cli_flags import flag_name
from rlserve.server.config import ServerConfig

CONFIGS = (ServerConfig, EngineConfig)


def _flags() -> dict[str, object]:
    return {a.option_strings[0]: a for a in build_parser()._actions if a.option_strings}


@pytest.mark.parametrize("config_class", CONFIGS)
def test_every_field_has_a_flag_and_help(config_class: type) -> None:
    flags = _flags()
    for f in fields(config_class):
        assert f.metadata.get("help"), f"{config_class.__name__}.{f.name} has no help"
        flag = f.metadata.get(SERVER_FLAG, flag_name(f))
        assert flag in flags, f"{config_class.__name__}.{f.name} has no flag {flag}"
        assert flags[flag].help, flag


def test_no_flags_give_the_dataclass_defaults() -> None:
    args = build_parser().parse_args([])
    assert config_from_args(args) == ServerConfig()
    options = engine_options(ServerConfig(), args)
    for f in fields(EngineConfig):
        if SERVER_FLAG not in f.metadata:
            assert f.default is not MISSING and options[f.name] == f.default, f.name
    assert options["max_num_seqs"] == ServerConfig().max_batch


def test_special_flags_keep_their_behaviour() -> None:
    args = build_parser().parse_args(
        ["--log-level", "debug", "--tool-call-parser", "none", "--no-enable-prefix-caching"]
    )
    config = config_from_args(args)
    assert config.log_level == "DEBUG" and config.tool_call_parser is None
    assert engine_options(config, args)["enable_prefix_caching"] is False
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--log-level", "loud"])
