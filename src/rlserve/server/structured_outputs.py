"""Request fields -> the grammar constraint (`StructuredOutput`), with vLLM's rules.

Read: OpenAI's `response_format` ({"type": "text" | "json_object" | "json_schema",
"json_schema": {"name", "schema", "strict", "description"}}), vLLM's `structured_outputs`
({json, regex, choice, grammar, json_object, disable_any_whitespace, ...}) and vLLM's older
`guided_json` / `guided_regex` / `guided_choice` / `guided_grammar`. At most one
constraint per request (vLLM: "You can only use one kind of structured outputs
constraint"); every error is a 400 naming the request field it came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rlserve._checks import ParamError
from rlserve.engine.structured import KINDS, StructuredOutput, check_structured
from rlserve.server.errors import APIError

GUIDED_FIELDS = {
    "guided_json": "json",
    "guided_regex": "regex",
    "guided_choice": "choice",
    "guided_grammar": "grammar",
}
STRUCTURED_FIELDS = ("response_format", "structured_outputs", *GUIDED_FIELDS)
"""The request fields read here (the protocol models must declare them)."""


def structured_from_request(body: Mapping[str, Any] | object) -> StructuredOutput | None:
    """The constraint a request asks for (None: free text); APIError 400 otherwise.
    `body`: the parsed request model, or a dict of its fields. As in vLLM, options in
    `structured_outputs` (disable_any_whitespace) also apply to `response_format`."""
    options = _field(body, "structured_outputs")
    any_whitespace = _any_whitespace(options)
    found = [
        (field, constraint)
        for field in STRUCTURED_FIELDS
        if (constraint := _read(field, _field(body, field), any_whitespace)) is not None
    ]
    if len(found) > 1:
        names = ", ".join(field for field, _ in found)
        raise APIError(
            400,
            f"You can only use one kind of structured outputs constraint but multiple are "
            f"specified: {names}",
            param=found[1][0],
        )
    if not found:
        if options is not None:  # options alone: say what is missing
            raise APIError(
                400,
                f"structured_outputs needs one kind of constraint ({', '.join(KINDS)})",
                param="structured_outputs",
            )
        return None
    field, constraint = found[0]
    try:
        check_structured(constraint)
    except ParamError as exc:
        raise APIError(400, _renamed(str(exc), field), param=field) from exc
    return constraint


def _field(body: Mapping[str, Any] | object, name: str) -> Any:
    return body.get(name) if isinstance(body, Mapping) else getattr(body, name, None)


def _read(field: str, value: Any, any_whitespace: bool) -> StructuredOutput | None:
    if value is None:
        return None
    try:
        if field == "response_format":
            return _response_format(value, any_whitespace)
        if field == "structured_outputs":
            return _structured_outputs(value, any_whitespace)
        return StructuredOutput(**{GUIDED_FIELDS[field]: value}, any_whitespace=any_whitespace)
    except ParamError as exc:
        raise APIError(400, _renamed(str(exc), field), param=field) from exc


def _response_format(value: Any, any_whitespace: bool) -> StructuredOutput | None:
    """OpenAI's response_format; "text" is no constraint."""
    if not isinstance(value, Mapping):
        raise APIError(400, "response_format must be an object", param="response_format")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return StructuredOutput(json_object=True, any_whitespace=any_whitespace)
    if kind == "json_schema":
        schema = _json_schema(value.get("json_schema"))
        return StructuredOutput(json=schema, any_whitespace=any_whitespace)
    raise APIError(
        400,
        f"response_format type must be 'text', 'json_object' or 'json_schema', got {kind!r}",
        param="response_format",
    )


def _json_schema(spec: Any) -> dict:
    """`json_schema`: {"name": ..., "schema": {...}, "strict": ..., "description": ...}.
    `name` is required (OpenAI, vLLM); without `schema` any JSON object is allowed."""
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise APIError(
            400,
            "response_format.json_schema must be an object with a string 'name'",
            param="response_format",
        )
    schema = spec.get("schema", {"type": "object"})
    if schema is None:
        schema = {"type": "object"}
    if not isinstance(schema, Mapping):
        raise APIError(
            400, "response_format.json_schema.schema must be an object", param="response_format"
        )
    return dict(schema)


def _any_whitespace(options: Any) -> bool:
    """vLLM's `structured_outputs.disable_any_whitespace`, inverted."""
    if not isinstance(options, Mapping):
        return True
    disable = options.get("disable_any_whitespace", False)
    if not isinstance(disable, bool):
        raise APIError(
            400,
            "structured_outputs.disable_any_whitespace must be a boolean",
            param="structured_outputs",
        )
    return not disable


def _structured_outputs(value: Any, any_whitespace: bool) -> StructuredOutput | None:
    """vLLM's `structured_outputs` object (None: options only); its other options
    (backend fallback, whitespace pattern) are accepted and ignored, as the one backend
    here has no such switches."""
    if not isinstance(value, Mapping):
        raise APIError(400, "structured_outputs must be an object", param="structured_outputs")
    if value.get("structural_tag") is not None:
        raise APIError(
            400, "structured_outputs.structural_tag is not supported", param="structured_outputs"
        )
    kinds = {k: value[k] for k in KINDS if value.get(k) not in (None, False)}
    if not kinds:
        return None
    return StructuredOutput(**kinds, any_whitespace=any_whitespace)


def _renamed(message: str, field: str) -> str:
    """The engine names its own field (`structured`); the client knows only theirs."""
    head = "structured: "
    return f"{field}: {message[len(head) :]}" if message.startswith(head) else message


# SGLang's `sampling_params` grammar fields -> StructuredOutput kinds. `ebnf` is SGLang's
# (xgrammar's) GBNF-style `root ::= ...` grammar; llguidance reads it (and Lark) as `grammar`.
SGLANG_FIELDS = {"json_schema": "json", "regex": "regex", "ebnf": "grammar"}
SGLANG_KEYS = {"json_schema": "json", "regex": "regex", "ebnf": "ebnf"}  # in its messages
SGLANG_ANY_JSON = "$$ANY$$"  # SGLang's json_schema for any JSON (xgrammar's builtin grammar)
_ANY_JSON_SCHEMA = {"type": ["object", "array"]}  # what xgrammar's builtin JSON grammar allows


def sglang_structured(values: Mapping[str, str | None]) -> StructuredOutput | None:
    """The constraint of SGLang's `sampling_params` fields `json_schema` (JSON text),
    `regex` and `ebnf` (`values` maps each to its value or None); None for free text.
    A 400 naming `sampling_params.<field>` when more than one is set (SGLang's message)
    or when the grammar does not compile."""
    given = [name for name in SGLANG_FIELDS if values.get(name) is not None]
    if not given:
        return None
    param = f"sampling_params.{given[-1]}"
    if len(given) > 1:
        raise APIError(400, "Only one of regex, json_schema, or ebnf can be set.", param=param)
    name = given[0]
    value = values[name]
    if name == "json_schema" and value == SGLANG_ANY_JSON:
        value = _ANY_JSON_SCHEMA
    try:
        constraint = StructuredOutput(**{SGLANG_FIELDS[name]: value})
        check_structured(constraint)
    except ParamError as exc:
        detail = str(exc).removeprefix("structured: ")
        message = f"{param}: Failed to compile {SGLANG_KEYS[name]} grammar: {detail}"
        raise APIError(400, message, param=param) from exc
    return constraint
