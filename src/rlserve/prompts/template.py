"""`PromptTemplate`: a named system + user prompt with `{placeholders}`, filled from a dict.

The shape follows NeMo-Skills' prompt configs (`system`, `user` as `str.format` strings,
literal braces doubled as in `\\boxed{{}}`, and the TIR code tags `code_begin` / `code_end`
beside them), so a template written there reads the same here. Torch-free.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, replace
from typing import Any

from rlserve._checks import ParamError, check_positive_int

# Filled in by the template itself; a caller's values cannot override them.
CODE_KEYS = ("code_begin", "code_end", "max_code_runs")


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt: `system` (may be empty) and `user` text with `{name}` placeholders.

    `code_begin` / `code_end` delimit the code a TIR model writes (the defaults are
    `rlserve.rl.TIRConfig`'s); `code_output_begin` / `code_output_end` wrap what the code
    printed, as rlserve's TIR mode appends it; `max_code_runs` is the number of code runs
    the prompt promises. The templates may mention these as `{code_begin}`, `{code_end}`
    (shown without surrounding whitespace) and `{max_code_runs}`.
    """

    name: str
    user: str
    system: str = ""
    code_begin: str = "<tool_call>"
    code_end: str = "</tool_call>"
    code_output_begin: str = "```output\n"
    code_output_end: str = "```\n"
    max_code_runs: int = 8

    def __post_init__(self) -> None:
        for field in ("name", "user", "code_begin", "code_end"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value.strip():
                raise ParamError(field, f"{field} must be a non-empty string, got {value!r}")
        for field in ("system", "code_output_begin", "code_output_end"):
            if not isinstance(getattr(self, field), str):
                raise ParamError(field, f"{field} must be a string")
        check_positive_int("max_code_runs", self.max_code_runs)
        for field in ("system", "user"):
            _placeholders(self.name, field, getattr(self, field))  # fails early on bad syntax

    @property
    def keys(self) -> list[str]:
        """The placeholder names a caller must supply, in order of first use."""
        names: list[str] = []
        for field in ("system", "user"):
            for name in _placeholders(self.name, field, getattr(self, field)):
                if name not in CODE_KEYS and name not in names:
                    names.append(name)
        return names

    def with_code_tags(self, code_begin: str, code_end: str) -> PromptTemplate:
        """This template with other code tags, e.g. `"<tool_call>\\n"` / `"</tool_call>\\n"`."""
        return replace(self, code_begin=code_begin, code_end=code_end)

    def messages(self, values: dict[str, str]) -> list[dict[str, str]]:
        """The system (when the template has one) and user messages, for a chat template."""
        system, user = self._filled(values)
        head = [{"role": "system", "content": system}] if system else []
        return [*head, {"role": "user", "content": user}]

    def fill(self, values: dict[str, str]) -> str:
        """The prompt as one text, for a model without a chat template: the system text,
        a blank line, then the user text."""
        system, user = self._filled(values)
        return f"{system}\n\n{user}" if system else user

    def render(self, values: dict[str, str], tokenizer: Any = None) -> str:
        """The prompt text to generate from: the messages through `tokenizer`'s chat
        template (with the generation prompt) when it has one, else `fill(values)`."""
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(
                self.messages(values), tokenize=False, add_generation_prompt=True
            )
        return self.fill(values)

    def code_execution_args(self) -> dict[str, str]:
        """The code tags, under NeMo-Skills' `get_code_execution_args()` names."""
        return {
            "code_begin": self.code_begin,
            "code_end": self.code_end,
            "code_output_begin": self.code_output_begin,
            "code_output_end": self.code_output_end,
        }

    def _filled(self, values: dict[str, str]) -> tuple[str, str]:
        if not isinstance(values, dict):
            raise ParamError("values", f"values must be a dict, got {type(values).__name__}")
        for key in self.keys:
            if key not in values:
                raise ParamError(
                    key, f"prompt {self.name!r} needs a value for {key!r} (it uses {self.keys})"
                )
            if not isinstance(values[key], str):
                raise ParamError(key, f"the value for {key!r} must be a string")
        known = {
            **values,
            "code_begin": self.code_begin.strip(),
            "code_end": self.code_end.strip(),
            "max_code_runs": str(self.max_code_runs),
        }
        return self.system.format_map(known), self.user.format_map(known)


def _placeholders(name: str, field: str, text: str) -> list[str]:
    """The `{names}` in `text`; ParamError for broken braces or positional fields."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as e:
        hint = "write literal braces as {{ }}"
        raise ParamError(field, f"prompt {name!r} {field}: {e} ({hint})") from e
    found = []
    for _, key, _, _ in parsed:
        if key is None:
            continue
        if not key.isidentifier():
            raise ParamError(field, f"prompt {name!r} {field}: placeholder {{{key}}} is not a name")
        found.append(key)
    return found
