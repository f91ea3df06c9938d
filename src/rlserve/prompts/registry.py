"""The named templates. Wording after NeMo-Skills' `generic/math` and `generic/math-tir`;
the instruction is the system message and the problem alone the user message, because the
bundled model (trained on bare questions under varied system prompts) answers that form
and loses its arithmetic when the instruction sits in the user turn; capable models follow
either."""

from __future__ import annotations

from rlserve._checks import ParamError
from rlserve.prompts.template import PromptTemplate

_BOXED = "Make sure to put the answer (and only answer) inside \\boxed{{}}."

_TEMPLATES = {
    t.name: t
    for t in (
        PromptTemplate(
            name="generic/math",
            system=f"Solve the following math problem. {_BOXED}",
            user="{problem}",
        ),
        PromptTemplate(
            name="tir/math",
            system=(
                "Solve the following math problem, integrating natural language reasoning "
                "with Python code executions. Write Python code between {code_begin} and "
                "{code_end}; what it prints is shown to you in an ```output block. You may "
                f"perform up to {{max_code_runs}} Python code calls. {_BOXED}"
            ),
            user="{problem}",
        ),
        PromptTemplate(name="generic/plain", user="{problem}"),
    )
}


def prompt_names() -> list[str]:
    """The names `get_prompt` knows."""
    return sorted(_TEMPLATES)


def get_prompt(name: str) -> PromptTemplate:
    """The template called `name` (e.g. "generic/math", "tir/math"); ValueError naming the
    known names otherwise. Templates are immutable: change code tags with
    `get_prompt("tir/math").with_code_tags("<tool_call>\\n", "</tool_call>\\n")`."""
    if not isinstance(name, str) or name not in _TEMPLATES:
        raise ParamError(
            "prompt", f"unknown prompt {name!r}; the prompts are {', '.join(prompt_names())}"
        )
    return _TEMPLATES[name]
