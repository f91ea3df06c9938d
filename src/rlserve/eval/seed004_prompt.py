"""Seed 004's prompt shape: `get_prompt(config_name, template_name)` whose
`.config.template` holds the chat format and code tags (settable, as NeMo-Skills'
`prompt_template.config.template.code_begin = "<tool_call>\\n"`), `.fill(values)` the
whole prompt text and `.get_code_execution_args()` the tags for `generate`. The wording
is `rlserve.prompts`' template of that name; the chat formats are NeMo-Skills'
ChatML-style `*_begin` / `*_end` strings."""

from __future__ import annotations

from dataclasses import dataclass, field

from rlserve._checks import ParamError
from rlserve.prompts import PromptTemplate
from rlserve.prompts import get_prompt as get_template


@dataclass
class ChatFormat:
    """How the messages become text, and the code tags (NeMo-Skills' template fields)."""

    system_begin: str = ""
    system_end: str = "\n\n"
    user_begin: str = ""
    user_end: str = "\n\n"
    assistant_begin: str = ""
    assistant_end: str = ""
    code_begin: str = "<tool_call>"
    code_end: str = "</tool_call>"
    code_output_begin: str = "```output\n"
    code_output_end: str = "```\n"
    code_output_format: str = "qwen"
    stop_phrases: list[str] = field(default_factory=list)


def _chatml() -> ChatFormat:
    return ChatFormat(
        "<|im_start|>system\n",
        "<|im_end|>\n",
        "<|im_start|>user\n",
        "<|im_end|>\n",
        "<|im_start|>assistant\n",
        "<|im_end|>\n",
        stop_phrases=["<|im_end|>"],
    )


FORMATS = {"qwen-instruct": _chatml, "chatml": _chatml, "plain": ChatFormat}


@dataclass
class PromptConfig:
    template: ChatFormat


class SeedPrompt:
    """A `rlserve.prompts` template in a NeMo-Skills chat format."""

    def __init__(self, prompt: PromptTemplate, chat: ChatFormat) -> None:
        self.prompt = prompt
        self.config = PromptConfig(chat)

    def fill(
        self,
        values: dict[str, str],
        continue_prefix_generation: bool = False,
        prefix_generation_to_response: bool = False,
    ) -> str:
        """The prompt text, ending with the assistant's turn opened (with
        `prefix_generation_to_response`, `values["generation"]` written into it, and the
        turn closed unless `continue_prefix_generation`)."""
        chat = self.config.template
        tagged = self.prompt.with_code_tags(chat.code_begin, chat.code_end)
        text = ""
        for message in tagged.messages(values):
            role = "system" if message["role"] == "system" else "user"
            begin, end = getattr(chat, f"{role}_begin"), getattr(chat, f"{role}_end")
            text += begin + message["content"] + end
        text += chat.assistant_begin
        if prefix_generation_to_response:
            if "generation" not in values:
                raise ParamError("generation", "prefix_generation_to_response needs 'generation'")
            text += values["generation"]
            if not continue_prefix_generation:
                text += chat.assistant_end
        return text

    def get_code_execution_args(self) -> dict[str, str]:
        """The code tags and output format, as `CodeExecutionModel.generate` takes them."""
        chat = self.config.template
        return {
            "code_begin": chat.code_begin,
            "code_end": chat.code_end,
            "code_output_begin": chat.code_output_begin,
            "code_output_end": chat.code_output_end,
            "code_output_format": chat.code_output_format,
        }

    def __str__(self) -> str:
        return f"SeedPrompt({self.prompt.name!r}, {self.config.template})"


def get_prompt(config_name: str, template_name: str | None = None) -> SeedPrompt:
    """`rlserve.prompts.get_prompt(config_name)` in chat format `template_name`
    ("qwen-instruct" / "chatml": ChatML; None or "plain": system and user text only)."""
    prompt = get_template(config_name)
    name = template_name or "plain"
    if name not in FORMATS:
        raise ParamError(
            "template_name",
            f"template_name: unknown chat format {name!r}; known: {', '.join(sorted(FORMATS))}",
        )
    return SeedPrompt(prompt, FORMATS[name]())
